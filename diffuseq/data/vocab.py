"""Vocabularies: BERT-style WordPiece (``--vocab bert``, ``--vocab train``, a ``vocab.txt``) and
DiffuSeq's whitespace word vocabulary (a custom vocab file, saved as ``vocab.json``).

The vocabulary used in training is saved into the checkpoint folder, so decoding
reads it from there and never needs the original.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UserError
from ..hf_cache import cached_snapshots

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
    markers: tuple[str, str, str, str]  # (start, end, separator, pad): what clean text leaves out

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def tokens(self, ids: Iterable[int]) -> list[str]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, special tokens kept (the evaluation removes them), as DiffuSeq writes it."""
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        raise NotImplementedError


def decode_text(vocab: Vocabulary, ids: list[int]) -> str:
    """DiffuSeq's ``decode_token``: trailing ``[PAD]`` ids removed, the rest decoded (inner pads kept)."""
    end = len(ids)
    while end and ids[end - 1] == vocab.pad_id:
        end -= 1
    return vocab.decode(ids[:end])


class WordPieceVocab(Vocabulary):
    """A lowercase BERT WordPiece vocabulary (``vocab.txt``); sequences are ``[CLS] ... [SEP]``."""

    markers = ("[CLS]", "[SEP]", "[SEP]", "[PAD]")

    def __init__(self, vocab_file: Path) -> None:
        self._init_tokens(Path(vocab_file).read_text(encoding="utf-8").splitlines(), str(vocab_file))

    @classmethod
    def from_tokens(cls, itos: list[str], name: str = "the learned vocabulary") -> "WordPieceVocab":
        """A vocabulary held in memory (saved with :meth:`save`)."""
        vocab = cls.__new__(cls)
        vocab._init_tokens(list(itos), name)
        return vocab

    def _init_tokens(self, itos: list[str], name: str) -> None:
        from tokenizers import BertWordPieceTokenizer

        self.itos = [tok.rstrip("\n") for tok in itos]
        missing = [tok for tok in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if tok not in self.itos]
        if missing:
            raise UserError(f"{name} is not a WordPiece vocabulary: it lacks {', '.join(missing)}")
        self.tokenizer = BertWordPieceTokenizer({tok: i for i, tok in enumerate(self.itos)}, lowercase=True)
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

    markers = ("[START]", "[END]", "[END]", "[PAD]")

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
        if len(stoi) == len(WORD_SPECIALS):
            raise UserError(f"vocabulary {path} holds no words (one word per line, as DiffuSeq's vocab files)")
        return cls(stoi)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        start, end = self.stoi["[START]"], self.stoi["[END]"]
        return [[start] + [self.stoi.get(w, self.unk_id) for w in text.split()] + [end] for text in texts]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.itos.get(i, "[UNK]") for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Space-joined words, with DiffuSeq's joining of ``__`` and ``@@`` subword marks."""
        return " ".join(self.tokens(ids)).replace("__ ", "").replace("@@ ", "")

    def save(self, folder: Path) -> None:
        (folder / "vocab.json").write_text(json.dumps(self.stoi, ensure_ascii=False) + "\n", encoding="utf-8")


def _hf_cached_bert_vocab() -> Path | None:
    """``vocab.txt`` of bert-base-uncased in the local Hugging Face cache, if any."""
    found = [snapshot / "vocab.txt" for snapshot in cached_snapshots("bert-base-uncased")
             if (snapshot / "vocab.txt").is_file()]
    return found[0] if found else None


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


def _word_counts(texts: Iterable[str]) -> Counter:
    """Words of the texts as BERT splits them (lowercase, accents stripped, punctuation apart), counted."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def learn_wordpiece(texts: Iterable[str], vocab_size: int, limit_alphabet: int = 1000) -> list[str]:
    """A WordPiece vocabulary learned as the Hugging Face trainer does, but deterministically.

    The alphabet (the ``limit_alphabet`` most frequent characters), their ``##`` continuation
    forms, then merges of the most frequent adjacent pair of symbols, counted over words
    weighted by frequency, until ``vocab_size`` entries. Ties go to the lexicographically
    first pair, so the same texts always give the same vocabulary (the Hugging Face trainer
    breaks them in hash-map order, which changes from process to process).
    """
    counts = _word_counts(texts)
    char_counts: Counter = Counter()
    for word, freq in counts.items():
        for char in word:
            char_counts[char] += freq
    alphabet = sorted(sorted(char_counts, key=lambda c: (-char_counts[c], c))[:limit_alphabet])
    allowed = set(alphabet)
    vocab = list(WORDPIECE_SPECIALS) + [c for c in alphabet if c not in WORDPIECE_SPECIALS]
    known = set(vocab)
    words: list[list[str]] = []
    freqs: list[int] = []
    for word in sorted(counts):
        if not set(word) <= allowed:
            continue
        symbols = [word[0]] + ["##" + c for c in word[1:]]
        for symbol in symbols[1:]:
            if symbol not in known:
                known.add(symbol)
                vocab.append(symbol)
        words.append(symbols)
        freqs.append(counts[word])
    pair_counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for index, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freqs[index]
            where.setdefault(pair, set()).add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count or neg_count == 0:
            continue  # a stale entry: the pair's current count was pushed when it changed
        first, second = pair
        merged = first + (second[2:] if second.startswith("##") else second)
        changed: set[tuple[str, str]] = set()
        for index in sorted(where.pop(pair, ())):
            symbols, freq = words[index], freqs[index]
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= freq
                changed.add(old)
                where.get(old, set()).discard(index)
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[index] = out
            for new in zip(out, out[1:]):
                pair_counts[new] += freq
                changed.add(new)
                where.setdefault(new, set()).add(index)
        for other in changed:
            if pair_counts[other] > 0 and other != pair:
                heapq.heappush(heap, (-pair_counts[other], other))
        pair_counts.pop(pair, None)
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
    return vocab


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> list[str]:
    """The tokens of a lowercase WordPiece vocabulary of at most ``vocab_size`` entries.

    The special tokens, then the learned entries sorted, so the same training text gives the
    same ``vocab.txt`` in every process.
    """
    learned = learn_wordpiece(texts, vocab_size)
    itos = list(WORDPIECE_SPECIALS) + sorted(tok for tok in learned if tok not in WORDPIECE_SPECIALS)
    logger.info("learned a WordPiece vocabulary of %d entries", len(itos))
    return itos


def build_vocab(spec: str, train_texts: Iterable[str], vocab_size: int) -> Vocabulary:
    """The vocabulary named by ``--vocab``: ``bert``, ``train`` or a path (nothing is written)."""
    if spec == "train":
        return WordPieceVocab.from_tokens(train_wordpiece(train_texts, vocab_size))
    if spec in ("bert", "bert-base-uncased"):
        found = _hf_cached_bert_vocab()
        if found is None:
            raise UserError("the bert-base-uncased vocabulary is not in the local Hugging Face cache and cannot be "
                            "downloaded here; pass `vocab` PATH (a vocab.txt or tokenizer folder) or `vocab` train")
        return WordPieceVocab(found)
    return load_vocab_from(Path(spec))
