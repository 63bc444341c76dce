"""scripts/eval_seq2seq.py: tables, the JSON schema, MBR output and clear errors on bad input."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import metric_oracles as O
import numpy as np
import pytest

from diffuseq import metrics as M
from diffuseq.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "eval_seq2seq.py"

eval_script = importlib.import_module("diffuseq.commands.evaluate")  # what scripts/eval_seq2seq.py runs

REFS = ["a b c d", "the cat sat", "x y"]
SEEDS = {  # recover texts per seed file, DiffuSeq-style with special tokens
    "seed1.json": ["a b c d", "the cat sat", "x"],
    "seed2.json": ["a b c e", "the cat", "x y"],
    "seed3.json": ["a b c d", "a cat sat on", "y x"],
}


def write_folder(folder: Path, seeds: dict[str, list[str]] = SEEDS, refs: list[str] = REFS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, recs in seeds.items():
        lines = [json.dumps({"recover": f"[CLS] {r} [SEP] [PAD]", "reference": f"[CLS] {ref} [SEP]",
                             "source": f"[CLS] src {i} [SEP] [SEP]"}) for i, (r, ref) in enumerate(zip(recs, refs))]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_json_schema_and_values_diversity(tmp_path):
    folder = write_folder(tmp_path / "out")
    (folder / "mbr.jsonl").write_text("not read by the default pattern\n")
    out = tmp_path / "res.json"
    proc = run(["--folder", str(folder), "--json", str(out), "--no_progress"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "BERTScore skipped" in proc.stdout
    assert "self-BLEU" in proc.stdout and "seed1" in proc.stdout
    res = json.loads(out.read_text())
    assert set(res) == {"files", "diversity", "mbr", "corpus_bleu"}
    assert sorted(res["files"]) == sorted(SEEDS)
    for name, recs in SEEDS.items():
        entry = res["files"][name]
        assert set(entry) == {"bleu", "rougeL", "dist1", "avg_len", "n"}
        assert entry["n"] == 3
        assert entry["bleu"] == pytest.approx(np.mean([M.sentence_bleu(h, r) for h, r in zip(recs, REFS)]))
        assert entry["rougeL"] == pytest.approx(np.mean([M.rouge_l(h, r) for h, r in zip(recs, REFS)]))
        assert entry["avg_len"] == pytest.approx(np.mean([len(h.split()) for h in recs]))
    # by hand: "a b c d" exact = 1; "the cat sat" exact but 3 tokens, so p4 = 0/1 is smoothed to ln(3)/10;
    # "x" against "x y": p1 = 1, the other orders left out, brevity penalty exp(1 - 2)
    assert res["files"]["seed1.json"]["bleu"] == pytest.approx((1 + (np.log(3) / 10) ** 0.25 + np.exp(-1)) / 3,
                                                               rel=1e-12)
    assert set(res["diversity"]) == {"self_bleu", "div4"}
    names = sorted(SEEDS)
    groups = [[SEEDS[n][i] for n in names] for i in range(3)]
    assert res["diversity"]["self_bleu"] == pytest.approx(np.mean([O.self_bleu(g) for g in groups]))
    assert res["diversity"]["div4"] == pytest.approx(np.mean([O.div_n(g, 4) for g in groups]))
    assert res["mbr"] is None
    assert set(res["corpus_bleu"]) == {"files", "mbr"} and res["corpus_bleu"]["mbr"] is None
    assert sorted(res["corpus_bleu"]["files"]) == sorted(SEEDS)


def test_json_schema_and_choice_mbr(tmp_path):
    folder = write_folder(tmp_path / "out")
    out, sel = tmp_path / "res.json", tmp_path / "sel.jsonl"
    assert eval_script.main(["--folder", str(folder), "--mbr", "--json", str(out), "--mbr_out", str(sel),
                             "--no_progress"]) == 0
    res = json.loads(out.read_text())
    assert res["diversity"] is None
    assert set(res["mbr"]) == {"bleu", "rougeL", "dist1", "avg_len", "n"}
    # input 0: "a b c d" twice and "a b c e" -> seed1; input 1: "the cat sat" (BLEU vs the others highest)
    chosen = [json.loads(line)["recover"].strip() for line in sel.read_text().splitlines()]
    names = sorted(SEEDS)
    expected = [SEEDS[names[O.mbr_select([SEEDS[n][i] for n in names])]][i] for i in range(3)]
    assert chosen == expected
    assert chosen[0] == "a b c d"
    assert res["mbr"]["bleu"] == pytest.approx(np.mean([M.sentence_bleu(h, r) for h, r in zip(chosen, REFS)]))
    assert res["mbr"]["n"] == 3
    assert isinstance(res["corpus_bleu"]["mbr"], float)


def test_pattern_single_file_and_len_mode(tmp_path, capsys):
    folder = write_folder(tmp_path / "out")
    out = tmp_path / "res.json"
    assert eval_script.main(["--folder", str(folder), "--pattern", "seed2.json", "--json", str(out),
                             "--len_mode", "diffuseq", "--no_corpus_bleu", "--mbr", "--no_progress"]) == 0
    res = json.loads(out.read_text())
    assert list(res["files"]) == ["seed2.json"]
    assert res["diversity"] is None and res["mbr"] is None and res["corpus_bleu"] is None
    # DiffuSeq counts " a b c e  " (after removing [CLS], [SEP], [PAD]) as split(' ') pieces
    assert res["files"]["seed2.json"]["avg_len"] == pytest.approx(
        np.mean([len(f" {r}  ".split(" ")) for r in SEEDS["seed2.json"]]))
    assert "MBR skipped" in capsys.readouterr().out


def test_special_tokens_configurable(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"recover": "<s> a b </s>", "reference": "<s> a b </s>",
                                               "source": "<s> q </s>"}) + "\n")
    out = tmp_path / "res.json"
    eval_script.main(["--folder", str(folder), "--sos", "<s>", "--eos", "</s>", "--json", str(out),
                      "--no_corpus_bleu", "--no_progress"])
    res = json.loads(out.read_text())["files"]["a.json"]
    assert res["bleu"] == pytest.approx(M.sentence_bleu("a b", "a b")) and res["avg_len"] == 2


# ------------------------------------------------------------------------------------------ bad inputs

def _break(folder: Path, name: str, lineno: int, text: str) -> None:
    lines = (folder / name).read_text().splitlines()
    lines[lineno - 1] = text
    (folder / name).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("case, expected", [
    ("short", "seed2.json has 2 lines but"),
    ("missing", "seed3.json:2: missing field 'reference'"),
    ("malformed", "seed1.json:3: not valid JSON"),
    ("not_string", "seed1.json:1: field 'recover' is not a string"),
    ("empty_file", "seed2.json: no lines to evaluate"),
])
def test_bad_files_give_one_line_errors(tmp_path, case, expected):
    folder = write_folder(tmp_path / "out")
    if case == "short":
        (folder / "seed2.json").write_text("\n".join((folder / "seed2.json").read_text().splitlines()[:2]) + "\n")
    elif case == "missing":
        _break(folder, "seed3.json", 2, json.dumps({"recover": "a", "source": "b"}))
    elif case == "malformed":
        _break(folder, "seed1.json", 3, '{"recover": "a", "reference": ')
    elif case == "not_string":
        _break(folder, "seed1.json", 1, json.dumps({"recover": 3, "reference": "a", "source": "b"}))
    elif case == "empty_file":
        (folder / "seed2.json").write_text("")
    with pytest.raises(UserError, match=expected.replace("(", r"\(")):
        eval_script.main(["--folder", str(folder), "--no_progress"])


def test_bad_inputs_exit_cleanly_from_the_command_line(tmp_path):
    folder = write_folder(tmp_path / "out")
    _break(folder, "seed2.json", 2, "{oops")
    proc = run(["--folder", str(folder)])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "seed2.json:2: not valid JSON" in proc.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run(["--folder", str(empty)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no files matching '*.json'" in proc.stderr

    proc = run(["--folder", str(tmp_path / "missing")])
    assert proc.returncode == 2 and "no such folder" in proc.stderr


def test_no_matching_files(tmp_path):
    folder = write_folder(tmp_path / "out")
    with pytest.raises(UserError, match=r"no files matching '\*\.txt'"):
        eval_script.main(["--folder", str(folder), "--pattern", "*.txt"])


def test_bertscore_without_package_fails_fast(tmp_path):
    folder = write_folder(tmp_path / "out")
    if importlib.util.find_spec("bert_score") is None:
        match = "pip install bert-score"
    else:  # pragma: no cover - only where bert_score is installed
        match = "no such local model folder"
    with pytest.raises(UserError, match=match):
        eval_script.main(["--folder", str(folder), "--bertscore_model", str(tmp_path / "no-model")])


def test_output_root_of_diffuseq_files(tmp_path, capsys):
    """DiffuSeq's decodes (no meta file) under an output root are found by their ``*.samples`` folder."""
    samples = write_folder(tmp_path / "generation_outputs" / "diffuseq_qqp" / "ema_0.9999_050000.pt.samples")
    write_folder(tmp_path / "generation_outputs" / "logs")  # not a decode folder: no .samples, no meta
    assert eval_script.main(["--folder", str(tmp_path / "generation_outputs"), "--no_corpus_bleu",
                             "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("folder: ")] == [
        f"folder: {samples}  (3 file(s) matching '*.json')"]
    assert "BLEU (0-1)" in out and "were cut" not in out
