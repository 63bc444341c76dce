"""A new user's first evaluation (issue 25): the README's ``eval.sh generation_outputs`` on an output root,
units in every table, ``--evaluate`` printing its scores, and test pairs cut to ``--seq_len`` said so."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
from helpers import ROOT, make_toy_dataset, run_script, tiny_args, write_pairs

from diffuseq.commands import evaluate as eval_command
from diffuseq.config import parse_train_args
from diffuseq.errors import UserError
from diffuseq.report import Row, format_table
from diffuseq.training.setup import train

# two test pairs needing more than the tiny model's --seq_len 16 (10 + 10 tokens with their [CLS]/[SEP], and a [SEP])
LONG_PAIRS = [("sat the cat on a mat dog ran", "the cat sat on a mat dog ran"),
              ("red big house small blue car green tree", "big red house small blue car green tree")]


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> SimpleNamespace:
    """A tiny model decoded with ``--evaluate`` (two seeds) into ``generation_outputs``, DiffuSeq's layout."""
    root = tmp_path_factory.mktemp("first_hour")
    data = make_toy_dataset(root / "toy", n_test=6)
    test_pairs = [(p["src"], p["trg"]) for p in map(json.loads, (data / "test.jsonl").read_text().splitlines())]
    write_pairs(data / "test.jsonl", test_pairs + LONG_PAIRS)
    train(parse_train_args(tiny_args(data, root / "ck", learning_steps=10, save_interval=10)))
    model = root / "ck" / "ema_0.9999_000010.pt"
    out = root / "generation_outputs"
    result = run_script("sample_seq2seq.py", ["--model_path", str(model), "--out_dir", str(out), "--split", "test",
                                              "--decode_respacing", "adp_4", "--seeds", "1,2", "--evaluate"])
    assert result.returncode == 0, result.stderr[-2000:]
    samples = out / "ck" / f"{model.name}.samples"
    return SimpleNamespace(out=out, samples=samples, result=result,
                           meta=json.loads(next(samples.glob("*.meta.json")).read_text()),
                           scores=json.loads(next(samples.glob("*.eval.json")).read_text()))


def table_header(out: str) -> str:
    """The header line of the (first) per-seed table in printed output."""
    return next(line for line in out.splitlines() if line.split()[:2] == ["file", "n"])


def test_evaluate_prints_the_bleu_table(decoded):
    out = decoded.result.stdout
    header = table_header(out)
    assert "BLEU (0-1)" in header and "ROUGE-L (0-1)" in header
    for name, scores in decoded.scores["files"].items():
        row = next(line for line in out.splitlines() if line.startswith(name.split("_")[0] + "*"))
        assert f"{scores['bleu']:.4f}" in row and f"{scores['rougeL']:.4f}" in row
    assert f"self-BLEU {decoded.scores['diversity']['self_bleu']:.4f}" in out


def test_decode_records_truncation_and_eval_notes_it(decoded, tmp_path, capsys):
    cut = decoded.meta["data"]["truncation"]
    assert cut["pairs"] == 8 and cut["truncated"] == 2 and cut["seq_len"] == 16 and cut["longest"] > 16
    note = "note: 2 of 8 test pairs were cut to --seq_len 16 when decoded"
    assert sum(line.startswith(note) for line in decoded.result.stdout.splitlines()) == 1  # --evaluate
    assert f"--seq_len {cut['seq_len_99']} holds 99% of the pairs" in decoded.result.stdout
    assert eval_command.main(["--folder", str(decoded.samples), "--no_progress", "--no_corpus_bleu"]) == 0
    assert sum(line.startswith(note) for line in capsys.readouterr().out.splitlines()) == 1  # diffuseq-eval
    # DiffuSeq's outputs have no meta file: nothing to say about truncation
    for seed_file in decoded.samples.glob("seed*.json"):
        shutil.copy(seed_file, tmp_path / seed_file.name)
    assert eval_command.main(["--folder", str(tmp_path), "--no_progress", "--no_corpus_bleu"]) == 0
    assert "were cut" not in capsys.readouterr().out


def test_readme_eval_command_on_an_output_root_finds_the_decode(decoded):
    """README step 4: ``bash scripts/eval.sh generation_outputs --mbr``, the decodes being two folders down."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "eval.sh"), str(decoded.out), "--mbr", "--no_progress"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=decoded.out.parent)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if str(decoded.samples) in line]
    assert len(said) == 1 and "evaluating the decode folder below it" in said[0]
    assert f"folder: {decoded.samples}  (2 file(s)" in result.stdout
    assert "MBR over 2 files" in result.stdout


def test_an_output_root_with_two_decodes(decoded, tmp_path, capsys):
    root = tmp_path / "generation_outputs"
    shutil.copytree(decoded.out, root)
    first = root / decoded.samples.relative_to(decoded.out)
    second = root / "other_run" / "model000010.pt.samples"
    shutil.copytree(decoded.samples, second)
    assert eval_command.main(["--folder", str(root), "--no_progress", "--no_corpus_bleu"]) == 0
    out = capsys.readouterr().out
    assert [line.split("  ")[0] for line in out.splitlines() if line.startswith("folder: ")] == [
        f"folder: {first}", f"folder: {second}"]
    assert out.count("BLEU (0-1)") == 2
    # one output file cannot hold two decodes' figures
    with pytest.raises(UserError, match="holds 2 decode folders") as err:
        eval_command.main(["--folder", str(root), "--json", str(tmp_path / "res.json"), "--no_progress"])
    assert str(first) in str(err.value) and str(second) in str(err.value) and "pass one of them" in str(err.value)
    # the checks stay per folder: a changed seed file in the second is refused, naming that folder
    seed_file = next(second.glob("seed*.json"))
    seed_file.write_text(seed_file.read_text().replace("[CLS]", "[CLS] x", 1))
    with pytest.raises(UserError, match=f"^{re.escape(str(second))}: .*is not the file its decode wrote"):
        eval_command.main(["--folder", str(root), "--no_progress", "--no_corpus_bleu"])


def test_an_output_root_without_decodes_names_the_layout(tmp_path):
    (tmp_path / "run" / "notes").mkdir(parents=True)
    (tmp_path / "run" / "notes" / "readme.txt").write_text("no decodes here\n")
    with pytest.raises(UserError) as err:
        eval_command.main(["--folder", str(tmp_path / "run"), "--no_progress"])
    message = str(err.value)
    assert message.startswith(f"no files matching '*.json' in {tmp_path / 'run'}")
    assert "*.samples" in message and "<out_dir>/<checkpoint folder>/<checkpoint file>.samples/" in message


def test_table_headers_carry_units(decoded, tmp_path, capsys):
    assert eval_command.main(["--folder", str(decoded.samples), "--no_progress"]) == 0
    header = table_header(capsys.readouterr().out)
    assert "BLEU (0-1)" in header and "sacreBLEU (0-100)" in header
    row = Row("base", "all", 100, 0.2, 0.5, 0.9, 7.0, 10.0, 0.3)
    for markdown in (False, True):
        assert "BLEU (0-1)" in format_table([row], markdown=markdown).splitlines()[0]
    # the demo's table, from its folder layout: decode/<model>__<decoding>/<checkpoint folder>/<checkpoint>.samples
    shutil.copytree(decoded.out, tmp_path / "decode" / "base__adp_4")
    result = run_script("scripts/demo_table.py", [str(tmp_path)])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "BLEU (0-1)" in lines[0] and "self-BLEU (0-1)" in lines[0]
    assert "copy-the-source baseline BLEU (0-1)" in result.stdout
