"""Text cleaning and lengths exactly as DiffuSeq's ``scripts/eval_seq2seq.py`` does them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens DiffuSeq strips from decoded text (``--sos --eos --sep --pad``)."""

    sos: str = "[CLS]"
    eos: str = "[SEP]"
    sep: str = "[SEP]"
    pad: str = "[PAD]"


def _remove(text: str, tokens: Iterable[str]) -> str:
    for tok in tokens:
        if tok:
            text = text.replace(tok, "")
    return text


def clean_recover(text: str, special: SpecialTokens = SpecialTokens()) -> str:
    """Clean a generated text exactly as DiffuSeq: strip, then remove eos, sos, sep and pad."""
    return _remove(text.strip(), (special.eos, special.sos, special.sep, special.pad))


def clean_reference(text: str, special: SpecialTokens = SpecialTokens()) -> str:
    """Clean a reference exactly as DiffuSeq: strip, then remove eos, sos and sep (DiffuSeq keeps pad)."""
    return _remove(text.strip(), (special.eos, special.sos, special.sep))


def clean_source(text: str, special: SpecialTokens = SpecialTokens()) -> str:
    """Clean a source exactly as DiffuSeq: strip, then remove eos and sos."""
    return _remove(text.strip(), (special.eos, special.sos))


def diffuseq_length(text: str) -> int:
    """DiffuSeq's own length count, ``len(text.split(' '))`` of the cleaned (not re-stripped) text.

    It counts the empty strings left where ``[CLS]``/``[SEP]`` were removed, so it is usually the
    whitespace-token count + 2; offered for comparison with tables that used it.
    """
    return len(text.split(" "))
