"""The embedded WordNet dataset (``datasets/wordnet``) and its generator ``datasets/make_wordnet.py``."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT / "datasets"
SCRIPT = DATASETS / "make_wordnet.py"
WORDNET = DATASETS / "wordnet"
SPLIT_SIZES = {"train": 40000, "valid": 500, "test": 500}  # as documented in datasets/README.md
TOKEN = re.compile(r"^(?:[a-z0-9]+|[^\sa-z0-9])$")

FAKE_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
FAKE_NOUNS = [
    "00005930 03 n 01 dwarf 0 001 @ 00004475 n 0000 | a plant or animal that is atypically small  ",
    '00003993 03 n 01 congener 0 001 @ 00003553 n 0000 | a whole of the same kind as another; '
    '"lard was also used, though its congener, butter, was more frequently employed"  ',
    "00007846 03 n 03 person 0 individual 0 some_one 0 001 @ 00004475 n 0000 | "
    "a Human Being's well-known self; \"a person's self\"  ",
    # dropped: odd characters (parentheses, colon), too short, a definition seen before
    "00015388 03 n 01 animal 0 000 | a living organism (not a plant): one that moves  ",
    "00002452 03 n 01 thing 0 000 | an entity  ",
    "00005931 03 n 01 runt 0 000 | a plant or animal that is atypically small  ",
]
FAKE_TARGETS = {
    "a plant or animal that is atypically small",
    "a whole of the same kind as another",
    "a human being ' s well - known self",
}


def load_module() -> ModuleType:
    """``datasets/make_wordnet.py`` as a module (``datasets/`` is not a package)."""
    if "make_wordnet" not in sys.modules:
        spec = importlib.util.spec_from_file_location("make_wordnet", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["make_wordnet"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["make_wordnet"]


def read_split(folder: Path, split: str) -> list[dict]:
    with (folder / f"{split}.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[dict]]:
    return {split: read_split(WORDNET, split) for split in SPLIT_SIZES}


def test_shipped_files_parse_with_sizes(shipped: dict[str, list[dict]]) -> None:
    for split, rows in shipped.items():
        assert len(rows) == SPLIT_SIZES[split], split
        for row in rows:
            assert set(row) == {"src", "trg"}
            assert isinstance(row["src"], str) and isinstance(row["trg"], str)
    assert (WORDNET / "LICENSE").read_text().count("WordNet 3.0 Copyright 2006 by Princeton University") == 1


def test_shipped_splits_do_not_overlap(shipped: dict[str, list[dict]]) -> None:
    targets = {split: {row["trg"] for row in rows} for split, rows in shipped.items()}
    for split, rows in shipped.items():
        assert len(targets[split]) == len(rows), f"duplicate targets in {split}"
    assert not targets["train"] & targets["valid"]
    assert not targets["train"] & targets["test"]
    assert not targets["valid"] & targets["test"]


def test_shipped_sources_are_shuffled_targets(shipped: dict[str, list[dict]]) -> None:
    for rows in shipped.values():
        for row in rows:
            src, trg = row["src"].split(), row["trg"].split()
            assert sorted(src) == sorted(trg), row
            assert src != trg, row
            assert 4 <= len(trg) <= 10, row
            assert " ".join(trg) == row["trg"] and all(TOKEN.match(tok) for tok in trg), row


def test_copy_baseline_matches_readme(shipped: dict[str, list[dict]]) -> None:
    bleu = load_module().copy_baseline_bleu(shipped["test"])
    assert bleu is not None
    assert f"{bleu:.4f}" in (DATASETS / "README.md").read_text()


def test_parse_synset_lines() -> None:
    module = load_module()
    verb = module.parse_synset_line(
        "00023244 29 v 02 de-energize 0 de-energise 0 003 @ 00224901 v 0000 ! 00022686 v 0205 "
        "! 00022686 v 0104 01 + 10 00 | deprive of energy  \n")
    assert (verb.key, verb.lemmas, verb.definition, verb.examples) == \
        ("v00023244", ("de-energize", "de-energise"), "deprive of energy", ())
    adj = module.parse_synset_line(
        '00019731 00 s 02 handy 0 ready_to_hand(p) 0 002 & 00019131 a 0000 + 04718999 n 0101 | '
        'easy to reach; "found a handy spot"; "the aspirin is handy"  \n')
    assert (adj.key, adj.lemmas, adj.definition, adj.examples) == \
        ("a00019731", ("handy", "ready to hand"), "easy to reach", ("found a handy spot", "the aspirin is handy"))
    with pytest.raises(module.WordNetFormatError):
        module.parse_synset_line("00019731 00 s 0z handy | broken\n")


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_script_on_fake_wordnet(tmp_path: Path) -> None:
    wordnet_dir, out_dir = tmp_path / "wn", tmp_path / "out"
    wordnet_dir.mkdir()
    (wordnet_dir / "data.noun").write_text(FAKE_HEADER + "\n".join(FAKE_NOUNS) + "\n", encoding="utf-8")
    result = run_script("--wordnet_dir", str(wordnet_dir), "--out_dir", str(out_dir), "--n_valid", "1",
                        "--n_test", "1")
    assert result.returncode == 0, result.stderr
    assert "train: 1 pairs, valid: 1 pairs, test: 1 pairs" in result.stdout
    rows = {split: read_split(out_dir, split) for split in ("train", "valid", "test")}
    assert [len(r) for r in rows.values()] == [1, 1, 1]
    pairs = [row for split_rows in rows.values() for row in split_rows]
    assert {row["trg"] for row in pairs} == FAKE_TARGETS
    for row in pairs:
        assert sorted(row["src"].split()) == sorted(row["trg"].split()) and row["src"] != row["trg"]
    # deterministic: a second run writes the same files
    again = tmp_path / "again"
    assert run_script("--wordnet_dir", str(wordnet_dir), "--out_dir", str(again), "--n_valid", "1",
                      "--n_test", "1").returncode == 0
    for split in rows:
        assert (again / f"{split}.jsonl").read_text() == (out_dir / f"{split}.jsonl").read_text()


def test_script_without_wordnet_fails_with_one_line(tmp_path: Path) -> None:
    result = run_script("--wordnet_dir", str(tmp_path / "missing"), "--out_dir", str(tmp_path / "out"))
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "install Debian's wordnet-base or pass --wordnet_dir" in lines[0]
    assert not (tmp_path / "out").exists()


def test_shipped_reverse_task_mirrors_the_shuffled_one(shipped: dict[str, list[dict]]) -> None:
    for split, rows in shipped.items():
        reverse = read_split(DATASETS / "wordnet_reverse", split)
        assert [r["trg"] for r in reverse] == [r["trg"] for r in rows]
        assert all(r["src"].split() == r["trg"].split()[::-1] for r in reverse)
    assert (DATASETS / "wordnet_reverse" / "LICENSE").read_text() == (WORDNET / "LICENSE").read_text()
    bleu = load_module().copy_baseline_bleu(read_split(DATASETS / "wordnet_reverse", "test"))
    assert f"{bleu:.4f}" in (DATASETS / "README.md").read_text()
