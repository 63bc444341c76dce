"""The reproduction script: cell planning, table assembly, plots and resume on a tiny model."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import pytest
from helpers import ROOT, assert_clean_error, make_toy_dataset, run_script, tiny_args

from diffuseq.config import parse_train_args
from diffuseq.errors import UserError
from diffuseq.report import Row, add_speedups, format_table
from diffuseq.training.setup import train


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_cells_and_steps():
    reproduce = _load_script()
    assert reproduce.parse_steps("all,100,20,4", 2000) == [0, 100, 20, 4]
    assert reproduce.parse_steps("2000,10", 2000) == [0, 10]
    with pytest.raises(UserError):
        reproduce.parse_steps("all,ten", 2000)
    cells = reproduce.plan_cells(["base", "post"], [0, 20, 2])
    assert [c.name for c in cells] == ["base__ddpm__all", "base__ddpm__uniform_20", "base__ddpm__adp_20",
                                       "base__ddpm__uniform_2", "post__ddpm__all", "post__ddpm__uniform_20",
                                       "post__ddpm__adp_20", "post__ddpm__uniform_2"]
    assert cells[2].respacing() == "adp_20" and cells[1].respacing() == "20" and cells[0].respacing() == ""
    cells = reproduce.plan_cells(["m"], [0, 4], ("adp",), ("ddim", "dpm++"))
    assert [c.name for c in cells] == ["m__ddim__all", "m__ddim__adp_4", "m__dpm++__adp_4"]
    # DiffuSeq-v2's solver: N evaluations keep N + 1 grid points; its own grid is --solver_steps N; the
    # full-step reference is DDPM's when the solver is the only sampler
    cells = reproduce.plan_cells(["m"], [0, 4, 2], reproduce.GRIDS, ("dpm-solver-v2",))
    assert [(c.name, c.respacing(), c.solver_steps()) for c in cells] == [
        ("m__ddpm__all", "", None), ("m__dpm-solver-v2__uniform_4", "5", None),
        ("m__dpm-solver-v2__adp_4", "adp_5", None), ("m__dpm-solver-v2__time-uniform_4", "", 4),
        ("m__dpm-solver-v2__uniform_2", "3", None), ("m__dpm-solver-v2__time-uniform_2", "", 2)]
    cells = reproduce.plan_cells(["m"], [4], reproduce.GRIDS, ("ddim", "dpm-solver-v2"))
    assert [c.name for c in cells if c.sampler == "ddim"] == ["m__ddim__uniform_4", "m__ddim__adp_4"]
    assert reproduce.parse_list("dpm++, ddpm", ("ddpm", "ddim", "dpm++"), "--samplers") == ["dpm++", "ddpm"]
    with pytest.raises(UserError, match="unipc"):
        reproduce.parse_list("ddpm,unipc", ("ddpm", "ddim", "dpm++"), "--samplers")
    with pytest.raises(UserError, match="no model"):
        reproduce.parse_models(argparse.Namespace(base="", post="", model=[]))


def test_table_assembly_and_speedups():
    rows = [Row("base", "all", 100, 0.2, 0.5, 0.9, 7.0, 10.0, 0.3),
            Row("base", "adp_10", 10, 0.25, 0.55, 0.8, 6.5, 1.0, 0.4, sampler="dpm++", bleu_std=0.0123),
            Row("base", "all", 100, 0.2, 0.5, 0.9, 7.0, 5.0, 0.3, sampler="ddim"),
            Row("post-trained", "all", 100, 0.3, 0.6, 0.9, 7.0, 20.0)]
    add_speedups(rows)
    assert [r.speedup for r in rows] == [1.0, 10.0, 2.0, 1.0]  # against the model's full-step DDPM decode
    table = format_table(rows, markdown=True).splitlines()
    assert table[0].startswith("| model | sampler | decoding | steps | BLEU (0-1) | ROUGE-L (0-1) | dist-1 (0-1)")
    assert table[3] == ("| base | dpm++ | adp_10 | 10 | 0.2500 ± 0.0123 | 0.5500 | 0.8000 | 6.50 | 0.4000 | 1.0 "
                        "| 10.0x |")
    assert "| - |" in table[5]  # no self-BLEU with a single seed


def test_reproduce_end_to_end_and_resume(tmp_path):
    data = make_toy_dataset(tmp_path / "toy", n_test=6)
    train(parse_train_args(tiny_args(data, tmp_path / "base", learning_steps=10, save_interval=10)))
    train(parse_train_args(tiny_args(data, tmp_path / "post", learning_steps=14, save_interval=14,
                                     simi_penalty="l2_noise_random", resume_checkpoint=tmp_path / "base" /
                                     "model000010.pt")))
    out = tmp_path / "out"
    args = ["--base", str(tmp_path / "base" / "model000010.pt"), "--post", str(tmp_path / "post" / "model000014.pt"),
            "--steps", "all,10,4", "--seeds", "1,2", "--out_dir", str(out)]
    result = run_script("scripts/reproduce.py", args)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (out / "results.md").read_text()
    for cell in ("| base | ddpm | all | 100 |", "| base | ddpm | adp_10 | 10 |",
                 "| post-trained | ddpm | uniform_4 | 4 |"):
        assert cell in table
    assert (out / "bleu_vs_steps.png").stat().st_size > 1000 and (out / "bleu_vs_time.png").is_file()
    scores = json.loads((out / "eval" / "base__ddpm__adp_4.json").read_text())
    assert scores["diversity"]["self_bleu"] is not None and len(scores["files"]) == 2

    # a second run decodes nothing again; removing one cell's evaluation redoes only that cell
    before = {p: p.stat().st_mtime_ns for p in (out / "decode").rglob("seed*.json")}
    (out / "eval" / "post-trained__ddpm__uniform_10.json").unlink()
    result = run_script("scripts/reproduce.py", args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("already done") == 9
    changed = {p for p, t in before.items() if p.stat().st_mtime_ns != t}
    assert changed and all("post-trained__ddpm__uniform_10" in str(p) for p in changed)

    # the sampler axis and a third model: new cells only, each decoded by the sampler it names
    result = run_script("scripts/reproduce.py", args + ["--samplers", "ddpm,dpm++", "--grids", "adp",
                                                        "--model", f"again={tmp_path / 'base' / 'model000010.pt'}"])
    assert result.returncode == 0, result.stderr[-2000:]
    table = (out / "results.md").read_text()
    assert "| base | dpm++ | adp_4 | 4 |" in table and "| again | ddpm | all | 100 |" in table
    assert "| dpm++ | all |" not in table  # the full-step reference: the first sampler's only
    assert "uniform_10" not in table  # --grids adp
    meta = next((out / "decode" / "again__dpm++__adp_4").rglob("*.meta.json"))
    assert json.loads(meta.read_text())["settings"]["sampler"]["sampler"] == "dpm++"
    # the same checkpoint decoded by the same sampler under two names gives the same text
    same = [next((out / "decode" / f"{m}__ddpm__adp_4").rglob("seed1_*.json")).read_text() for m in ("base", "again")]
    assert same[0] == same[1]
    # DiffuSeq-v2's solver as an axis: every cell takes the evaluations it is named by, 2 included
    result = run_script("scripts/reproduce.py", args + ["--samplers", "dpm-solver-v2", "--grids",
                                                        "uniform,adp,time-uniform", "--steps", "4,2"])
    assert result.returncode == 0, result.stderr[-2000:]
    table = (out / "results.md").read_text()
    for cell in ("uniform_2 | 2 |", "adp_4 | 4 |", "time-uniform_2 | 2 |", "time-uniform_4 | 4 |"):
        assert f"| base | dpm-solver-v2 | {cell}" in table
    settings = json.loads(next((out / "decode" / "base__dpm-solver-v2__time-uniform_2").rglob("*.meta.json"))
                          .read_text())["settings"]["sampler"]
    assert settings["sampler"] == "dpm-solver-v2" and settings["solver_steps"] == 2
    # bad flags are refused before anything is decoded
    for extra, fragment in ((["--samplers", "euler"], "euler"), (["--model", "noequals"], "NAME=CHECKPOINT"),
                            (["--grids", "time-uniform"], "dpm-solver-v2"),
                            (["--model", "base=x.pt"], "taken"), (["--model", f"m={tmp_path / 'none.pt'}"], "none.pt")):
        result = run_script("scripts/reproduce.py", args + extra)
        assert_clean_error(result, fragment)
