"""Vocabularies: BERT-style WordPiece (``--vocab bert``, ``--vocab train``, a ``vocab.txt``) and
DiffuSeq's whitespace word vocabulary (a custom vocab file, saved as ``vocab.json``).

The vocabulary used in training is saved into the checkpoint folder, so decoding
reads it from there and never needs the original.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from .errors import UserError

logger = logging.getLogger(__name__)

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORD_SPECIALS = ("[START]", "[END]", "[UNK]", "[PAD]")
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class Vocabulary:
    """Token ids <-> text. ``encode`` wraps a text in its start/end tokens."""

    pad_id: int
    sep_id: int
    size: int

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def tokens(self, ids: Iterable[int]) -> list[str]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, special tokens kept (the evaluation removes them), as DiffuSeq writes it."""
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        raise NotImplementedError


class WordPieceVocab(Vocabulary):
    """A lowercase BERT WordPiece vocabulary (``vocab.txt``); sequences are ``[CLS] ... [SEP]``."""

    def __init__(self, vocab_file: Path) -> None:
        from tokenizers import BertWordPieceTokenizer

        self.vocab_file = Path(vocab_file)
        self.itos = [line.rstrip("\n") for line in self.vocab_file.read_text(encoding="utf-8").splitlines()]
        missing = [tok for tok in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if tok not in self.itos]
        if missing:
            raise UserError(f"{vocab_file} is not a WordPiece vocabulary: it lacks {', '.join(missing)}")
        self.tokenizer = BertWordPieceTokenizer(str(self.vocab_file), lowercase=True)
        self.pad_id = self.itos.index("[PAD]")
        self.sep_id = self.itos.index("[SEP]")
        self.size = len(self.itos)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        text = " ".join(self.tokens(ids)).replace(" ##", "")
        for old, new in _CLEANUPS:
            text = text.replace(old, new)
        return text

    def save(self, folder: Path) -> None:
        (folder / "vocab.txt").write_text("\n".join(self.itos) + "\n", encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "unk_token": "[UNK]", "sep_token": "[SEP]",
             "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}, indent=2) + "\n")


class WordVocab(Vocabulary):
    """DiffuSeq's custom vocabulary: whitespace words, ``[START] ... [END]``; ``[END]`` acts as ``[SEP]``."""

    def __init__(self, stoi: dict[str, int]) -> None:
        missing = [tok for tok in WORD_SPECIALS if tok not in stoi]
        if missing:
            raise UserError(f"word vocabulary lacks {', '.join(missing)}")
        self.stoi = stoi
        self.itos = {i: tok for tok, i in stoi.items()}
        self.pad_id = stoi["[PAD]"]
        self.sep_id = stoi["[END]"]
        self.unk_id = stoi["[UNK]"]
        self.size = max(stoi.values()) + 1

    @classmethod
    def from_word_list(cls, path: Path) -> "WordVocab":
        """DiffuSeq's reading of a vocab file: specials first, then the first field of each line."""
        stoi = {tok: i for i, tok in enumerate(WORD_SPECIALS)}
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if fields and fields[0] not in stoi:
                stoi[fields[0]] = len(stoi)
        return cls(stoi)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        start, end = self.stoi["[START]"], self.stoi["[END]"]
        return [[start] + [self.stoi.get(w, self.unk_id) for w in text.split()] + [end] for text in texts]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.itos.get(i, "[UNK]") for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.tokens(ids))

    def save(self, folder: Path) -> None:
        (folder / "vocab.json").write_text(json.dumps(self.stoi, ensure_ascii=False) + "\n", encoding="utf-8")


def _hf_cached_bert_vocab() -> Path | None:
    """``vocab.txt`` of bert-base-uncased in the local Hugging Face cache, if any."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub")
    for candidate in sorted(Path(hub).glob("models--bert-base-uncased/snapshots/*/vocab.txt")):
        return candidate
    return None


def load_vocab_from(path: Path) -> Vocabulary:
    """Read a vocabulary from a folder (``vocab.txt`` or ``vocab.json``) or a file."""
    path = Path(path)
    if path.is_dir():
        if (path / "vocab.txt").is_file():
            return WordPieceVocab(path / "vocab.txt")
        if (path / "vocab.json").is_file():
            return load_vocab_from(path / "vocab.json")
        raise UserError(f"no vocab.txt or vocab.json in {path}")
    if not path.is_file():
        raise UserError(f"vocabulary {path} does not exist")
    try:
        if path.suffix == ".json":
            return WordVocab({str(k): int(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()})
        first_fields = {line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.split()}
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"cannot read vocabulary {path}: {err}") from None
    if {"[CLS]", "[SEP]", "[PAD]", "[UNK]"} <= first_fields:
        return WordPieceVocab(path)
    return WordVocab.from_word_list(path)


def train_wordpiece(texts: Iterable[str], vocab_size: int, out_file: Path) -> WordPieceVocab:
    """Train a lowercase WordPiece vocabulary of at most ``vocab_size`` entries and write ``out_file``."""
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  special_tokens=list(WORDPIECE_SPECIALS))
    # The trainer's ids among equally frequent entries vary from process to process (hash-map order);
    # sorting makes the same training text give the same vocabulary file, so runs are reproducible.
    learned = sorted(tok for tok in tokenizer.get_vocab() if tok not in WORDPIECE_SPECIALS)
    itos = list(WORDPIECE_SPECIALS) + learned
    out_file.write_text("\n".join(itos) + "\n", encoding="utf-8")
    logger.info("trained a WordPiece vocabulary of %d entries", len(itos))
    return WordPieceVocab(out_file)


def build_vocab(spec: str, train_texts: Iterable[str], vocab_size: int, work_dir: Path) -> Vocabulary:
    """The vocabulary named by ``--vocab``: ``bert``, ``train`` or a path."""
    if spec == "train":
        return train_wordpiece(train_texts, vocab_size, Path(work_dir) / "vocab.txt")
    if spec in ("bert", "bert-base-uncased"):
        found = _hf_cached_bert_vocab()
        if found is None:
            raise UserError("the bert-base-uncased vocabulary is not in the local Hugging Face cache and cannot be "
                            "downloaded here; pass --vocab PATH (a vocab.txt or tokenizer folder) or --vocab train")
        return WordPieceVocab(found)
    return load_vocab_from(Path(spec))
