"""scripts/learning_curve.py at a tiny size: a row per checkpoint in results.md, the plot, a training continued
from its last checkpoint, and a second start that redoes nothing."""

from __future__ import annotations

import json
import re

from helpers import make_toy_dataset, run_script

TINY = ("--vocab_size 200 --seq_len 16 --num_layers 1 --hidden_size 32 --num_heads 2 --intermediate_size 64 "
        "--hidden_dim 16 --hidden_t_dim 16 --diff_steps 100 --bsz 8 --microbatch 8 --log_interval 2 --eval_interval 0")


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if re.match(r"\| \d+ \|", line)]


def test_learning_curve_tiny_run_continue_and_resume(tmp_path):
    data = make_toy_dataset(tmp_path / "toy", n_train=40, n_valid=8, n_test=8)
    work, out = tmp_path / "work", tmp_path / "out"
    common = ["--data_dir", str(data), "--train_pairs", "32", "--every", "2", "--test_examples", "5",
              "--seeds", "10,11", "--precision", "fp32", "--model_flags", TINY, "--work_dir", str(work),
              "--out_dir", str(out), "--quiet"]

    first = run_script("scripts/learning_curve.py", [*common, "--steps", "2"], timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert [row[0] for row in table_rows((out / "results.md").read_text())] == ["2"]
    assert len((work / "toy_first32" / "train.jsonl").read_text().splitlines()) == 32

    # more steps: the training continues from step 2, step 2's decode is kept, step 4 is decoded
    more = run_script("scripts/learning_curve.py", [*common, "--steps", "4"], timeout=120)
    assert more.returncode == 0, more.stdout + more.stderr
    assert "continuing from step 2" in more.stderr
    assert "step 2: decode already done" in more.stderr and "step 4: decoding" in more.stderr
    text = (out / "results.md").read_text()
    rows = table_rows(text)
    assert [row[0] for row in rows] == ["2", "4"]
    for row in rows:
        assert re.fullmatch(r"\d+\.\d", row[1]), row  # epochs
        assert re.fullmatch(r"\d+:\d\d", row[2]), row  # a training wall time per checkpoint
        assert re.fullmatch(r"\d+", row[3]), row  # training samples/s from the log
        assert re.fullmatch(r"\d\.\d{4} ± \d\.\d{4}", row[4]), row
    timings = json.loads((work / "timings.json").read_text())
    assert timings["4"] >= timings["2"] > 0  # the continued run's times count on from step 2's
    assert "copying the source" in text and "cores" in text and "32 pairs (the first 32)" in text
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"

    # started again: nothing is trained or decoded again, the same table comes out
    again = run_script("scripts/learning_curve.py", [*common, "--steps", "4"], timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "step 4 already in" in again.stderr and again.stderr.count("decode already done") == 2
    assert ": decoding" not in again.stderr
    assert table_rows((out / "results.md").read_text()) == rows
