#!/usr/bin/env python
"""Build the embedded WordNet word-order datasets (``datasets/wordnet``, ``datasets/wordnet_reverse``).

Reads Princeton WordNet 3.0's ``data.{noun,verb,adj,adv}`` files directly (no nltk reader),
takes each synset's definition (the gloss up to its first ``; "example"``), keeps the short,
plain ones and writes seq2seq pairs ``{"src": <the definition's tokens shuffled (--task shuffle)
or in reverse order (--task reverse)>, "trg": <the definition>}`` to ``train/valid/test.jsonl``. Text is lowercased and whitespace-tokenised with
punctuation split off as separate tokens. Everything is deterministic (fixed seed); the split
is by definition, and each kept synset gives one pair, so no synset and no target is in two splits.

Usage: ``python datasets/make_wordnet.py [--task shuffle|reverse] [--wordnet_dir /usr/share/wordnet] [--out_dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

POS_FILES = ("noun", "verb", "adj", "adv")
SPLITS = ("train", "valid", "test")
# Definitions with any other character (digits are fine; quotes, parentheses, colons, slashes,
# semicolons, non-ASCII letters ... are not) are dropped.
ALLOWED_DEFINITION = re.compile(r"^[A-Za-z0-9 ,'\-]+$")
TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
MISSING_HINT = "install Debian's wordnet-base or pass --wordnet_dir"


class WordNetFormatError(ValueError):
    """A line of a WordNet data file that does not follow the ``wndb(5)`` format."""


@dataclass(frozen=True)
class Synset:
    """One synset line of a ``data.<pos>`` file (only the fields this script needs)."""

    key: str  # ss_type + offset, e.g. "n00001740": unique across the four files
    lemmas: tuple[str, ...]  # underscores replaced by spaces, adjective markers removed
    definition: str  # the gloss up to its first example sentence
    examples: tuple[str, ...]


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens, every punctuation character a token of its own."""
    return TOKEN.findall(text.lower())


def split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """``definition; "example"; "example"`` -> (definition, examples)."""
    definition, *rest = gloss.split('; "')
    examples = tuple(part.strip().rstrip(";").strip().strip('"').strip() for part in rest)
    return definition.strip().rstrip(";").strip(), examples


def parse_synset_line(line: str) -> Synset:
    """Parse one synset line: ``offset lex_filenum ss_type w_cnt [word lex_id]... p_cnt [ptr]... [frames] | gloss``."""
    data, sep, gloss = line.rstrip("\n").partition(" | ")
    if not sep:
        data, gloss = line.rstrip("\n").rstrip(), ""
    fields = data.split()
    try:
        offset, _lex_filenum, ss_type = fields[0], fields[1], fields[2]
        w_cnt = int(fields[3], 16)
        words = fields[4:4 + 2 * w_cnt:2]
        p_cnt = int(fields[4 + 2 * w_cnt])
    except (IndexError, ValueError) as exc:
        raise WordNetFormatError(f"bad synset header ({exc})") from None
    if not offset.isdigit() or ss_type not in "nvasr" or len(words) != w_cnt \
            or len(fields) < 5 + 2 * w_cnt + 4 * p_cnt:
        raise WordNetFormatError("fields do not match the data file format")
    lemmas = tuple(ADJ_MARKER.sub("", word).replace("_", " ") for word in words)
    definition, examples = split_gloss(gloss.strip())
    return Synset(key=("a" if ss_type == "s" else ss_type) + offset, lemmas=lemmas,
                  definition=definition, examples=examples)


def read_synsets(path: Path) -> list[Synset]:
    """All synsets of one ``data.<pos>`` file, skipping the license header (lines starting with two spaces)."""
    synsets = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if line.startswith("  ") or not line.strip():
                continue
            try:
                synsets.append(parse_synset_line(line))
            except WordNetFormatError as exc:
                raise WordNetFormatError(f"{path}:{lineno}: {exc}") from None
    return synsets


def shuffled(tokens: list[str], rng: random.Random, tries: int = 20) -> list[str]:
    """A random permutation of ``tokens``, different from the original order whenever one exists."""
    out = list(tokens)
    for _ in range(tries):
        rng.shuffle(out)
        if out != tokens:
            break
    return out


def make_pairs(synsets: list[Synset], min_tokens: int, max_tokens: int, seed: int,
               task: str = "shuffle") -> list[dict[str, str]]:
    """One pair per kept synset (source: the definition shuffled, or reversed); a definition shared by
    several synsets is kept once."""
    pairs, seen = [], set()
    for synset in synsets:
        if not ALLOWED_DEFINITION.match(synset.definition):
            continue
        tokens = tokenize(synset.definition)
        target = " ".join(tokens)
        if not min_tokens <= len(tokens) <= max_tokens or target in seen:
            continue
        seen.add(target)
        if task == "reverse":
            source = tokens[::-1]
        else:
            source = shuffled(tokens, random.Random(f"{seed}:{synset.key}"))  # per synset: stable
        pairs.append({"src": " ".join(source), "trg": target})
    return pairs


def split_pairs(pairs: list[dict[str, str]], n_valid: int, n_test: int, max_train: int | None,
                seed: int) -> dict[str, list[dict[str, str]]]:
    """Shuffle the pairs with ``seed`` and cut test, valid, then train (at most ``max_train``)."""
    if len(pairs) < n_valid + n_test + 1:
        raise ValueError(f"only {len(pairs)} pairs: too few for {n_valid} valid + {n_test} test + some train")
    order = list(pairs)
    random.Random(seed).shuffle(order)
    test, valid, train = order[:n_test], order[n_test:n_test + n_valid], order[n_test + n_valid:]
    if max_train is not None:
        train = train[:max_train]
    return {"train": train, "valid": valid, "test": test}


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """One JSON object per line, as DiffuSeq's files are: ``{"src": ..., "trg": ...}``."""
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def copy_baseline_bleu(rows: list[dict[str, str]]) -> float | None:
    """Mean sentence BLEU (nltk, SmoothingFunction().method4) of outputting the source unchanged."""
    try:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    except ImportError:
        return None
    smooth = SmoothingFunction().method4
    scores = [sentence_bleu([row["trg"].split()], row["src"].split(), smoothing_function=smooth) for row in rows]
    return sum(scores) / len(scores)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet_dir", type=Path, default=Path("/usr/share/wordnet"),
                        help="folder with WordNet 3.0's data.noun, data.verb, data.adj, data.adv")
    parser.add_argument("--task", choices=("shuffle", "reverse"), default="shuffle",
                        help="source = the definition's words shuffled, or in reverse order")
    parser.add_argument("--out_dir", type=Path, default=None,
                        help="where train/valid/test.jsonl are written (default: datasets/wordnet, or "
                             "datasets/wordnet_reverse for --task reverse)")
    parser.add_argument("--min_tokens", type=int, default=4, help="shortest definition kept (tokens)")
    parser.add_argument("--max_tokens", type=int, default=10, help="longest definition kept (tokens)")
    parser.add_argument("--n_valid", type=int, default=500)
    parser.add_argument("--n_test", type=int, default=500)
    parser.add_argument("--max_train", type=int, default=40000, help="cap on the training pairs")
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out_dir is None:
        args.out_dir = Path(__file__).resolve().parent / ("wordnet" if args.task == "shuffle" else "wordnet_reverse")
    files = [args.wordnet_dir / f"data.{pos}" for pos in POS_FILES]
    present = [path for path in files if path.is_file()]
    if not present:
        print(f"error: no WordNet data files (data.noun, data.verb, ...) in {args.wordnet_dir}: {MISSING_HINT}",
              file=sys.stderr)
        return 1
    try:
        synsets = [synset for path in present for synset in read_synsets(path)]
        splits = split_pairs(make_pairs(synsets, args.min_tokens, args.max_tokens, args.seed, args.task),
                             args.n_valid, args.n_test, args.max_train, args.seed)
    except (WordNetFormatError, ValueError, UnicodeDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_jsonl(args.out_dir / f"{split}.jsonl", splits[split])
    print(f"read {len(synsets)} synsets from {', '.join(path.name for path in present)}")
    print("wrote " + ", ".join(f"{split}: {len(splits[split])} pairs" for split in SPLITS) + f" to {args.out_dir}")
    bleu = copy_baseline_bleu(splits["test"])
    if bleu is not None:
        print(f"copy-the-source baseline on test: BLEU {bleu:.4f} (nltk sentence_bleu, method4, mean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
