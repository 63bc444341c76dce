"""scripts/demo.sh, the first command of the README, end to end at a tiny size: every stage runs and one table
names every decode, the DiffuSeq-v2 model's included."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, make_toy_dataset

TINY = {"TRAIN_STEPS": "4", "POST_STEPS": "2", "DIFF_STEPS": "40", "SEQ_LEN": "16", "BSZ": "8", "LAYERS": "1",
        "HIDDEN": "16", "HEADS": "2", "FFN": "32", "HIDDEN_DIM": "8", "VOCAB_SIZE": "100", "TEST_EXAMPLES": "4",
        "SEEDS": "10,11", "SOLVER_STEPS": "3", "PRECISION": "fp32", "DECODE_BATCH": "4"}


def test_the_demo_runs_every_stage_and_prints_one_table(tmp_path: Path) -> None:
    data = make_toy_dataset(tmp_path / "toy", n_test=4)
    out = tmp_path / "demo"
    env = {**os.environ, **TINY, "OUT": str(out), "DATA_DIR": str(data), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.findall(r"^== (\d/\d) ", result.stdout, re.M) == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    table = (out / "results.txt").read_text()
    rows = {tuple(line.split()[:4]) for line in table.splitlines()}
    assert rows >= {("base", "ddpm", "adp_20", "20"), ("base", "ddpm", "uniform_20", "20"),
                    ("post-trained", "ddpm", "all", "40"), ("post-trained", "ddpm", "adp_20", "20"),
                    ("post-trained", "ddpm", "uniform_20", "20"), ("v2", "ddpm", "adp_20", "20"),
                    ("v2", "dpm-solver-v2", "time-uniform_3", "3")}, table
    assert "copy-the-source baseline" in table
    # the v2 model: v2's flags, half the base model's steps, then decoded with v2's absorbing and its solver
    settings = json.loads((out / "v2" / "training_args.json").read_text())
    assert (settings["learned_mean_embed"], settings["denoise"], settings["denoise_rate"]) == (True, True, 0.5)
    assert settings["learning_steps"] == 2 and (out / "v2" / "ema_0.995_000002.pt").is_file()
    solver_meta = next((out / "decode" / "v2__time-uniform_3").rglob("*.meta.json"))
    assert json.loads(solver_meta.read_text())["settings"]["sampler"]["solver_steps"] == 3
