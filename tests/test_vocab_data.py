"""Vocabularies (bert from a local cache, a word list, a trained WordPiece) and sequence building."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_toy_dataset, run_script, tiny_args

from diffuseq.config import parse_train_args
from diffuseq.data import merge_and_mask
from diffuseq.data.vocab import WordPieceVocab, WordVocab, build_vocab, learn_wordpiece, load_vocab_from
from diffuseq.errors import UserError
from diffuseq.training.setup import train

BERT_LIKE = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "."]


def test_merge_and_mask_truncates_the_longer_side_like_diffuseq():
    # [CLS]=1 a b c d e [SEP]=2 ; [CLS] x y [SEP]; seq_len 9 -> len(src)+len(trg) <= 6 without the end tokens
    ids, mask = merge_and_mask([1, 10, 11, 12, 13, 14, 2], [1, 20, 21, 2], sep_id=2, pad_id=0, seq_len=10)
    assert ids == [1, 10, 11, 12, 2, 2, 1, 20, 21, 2]
    assert mask == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    ids, mask = merge_and_mask([1, 10, 2], [1, 20, 2], sep_id=2, pad_id=0, seq_len=10)
    assert ids == [1, 10, 2, 2, 1, 20, 2, 0, 0, 0]
    assert mask == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]  # padding belongs to the generated part


def test_bert_vocab_comes_from_the_local_cache_or_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        build_vocab("bert", [], 100)
    snapshot = tmp_path / "hub" / "models--bert-base-uncased" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "vocab.txt").write_text("\n".join(BERT_LIKE) + "\n")
    vocab = build_vocab("bert", [], 100)
    assert isinstance(vocab, WordPieceVocab) and vocab.size == len(BERT_LIKE)
    ids = vocab.encode_batch(["The cats sat."])[0]
    assert vocab.tokens(ids) == ["[CLS]", "the", "cat", "##s", "sat", ".", "[SEP]"]
    assert vocab.decode(ids) == "[CLS] the cats sat. [SEP]"  # wordpieces joined, HF-style spacing
    vocab.save(tmp_path)
    assert load_vocab_from(tmp_path).itos == vocab.itos


def test_diffuseq_word_vocabulary_file(tmp_path):
    (tmp_path / "words.txt").write_text("the 10\ncat 5\nsat\n")
    vocab = load_vocab_from(tmp_path / "words.txt")
    assert isinstance(vocab, WordVocab)
    assert vocab.stoi == {"[START]": 0, "[END]": 1, "[UNK]": 2, "[PAD]": 3, "the": 4, "cat": 5, "sat": 6}
    assert vocab.encode_batch(["the dog sat"]) == [[0, 4, 2, 6, 1]]
    assert vocab.sep_id == 1 and vocab.pad_id == 3
    vocab.save(tmp_path)
    assert json.loads((tmp_path / "vocab.json").read_text()) == vocab.stoi
    with pytest.raises(UserError, match="does not exist"):
        load_vocab_from(tmp_path / "missing.txt")


def test_training_with_a_word_vocabulary_file(tmp_path):
    data = make_toy_dataset(tmp_path / "toy")
    words = sorted({w for line in (data / "train.jsonl").read_text().splitlines()
                    for side in json.loads(line).values() for w in side.split()})
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    folder = tmp_path / "ck"
    train(parse_train_args(tiny_args(data, folder, vocab=tmp_path / "words.txt", learning_steps=4, save_interval=4)))
    saved = json.loads((folder / "vocab.json").read_text())
    state = torch.load(folder / "model000004.pt", weights_only=True)
    assert state["word_embedding.weight"].shape[0] == len(saved) == len(words) + 4


def test_same_command_twice_gives_identical_files(tmp_path):
    """--vocab train learns the same vocabulary in every process, so two runs give the same bytes."""
    data = make_toy_dataset(tmp_path / "toy", n_train=200)
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        result = run_script("run_train.py", tiny_args(data, folder, vocab="train", vocab_size=120, learning_steps=6,
                                                      save_interval=3),
                            env={"PYTHONHASHSEED": {"a": "1", "b": "2"}[name]})
        assert result.returncode == 0, result.stderr
        runs.append(folder)
    names = sorted(p.name for p in runs[0].iterdir())
    assert names == sorted(p.name for p in runs[1].iterdir())
    assert {"vocab.txt", "config.json", "model000006.pt", "ema_0.9999_000003.pt", "opt000006.pt"} <= set(names)
    for name in names:
        a, b = (run / name for run in runs)
        if name == "training_args.json":  # names its own folder
            args_a, args_b = json.loads(a.read_text()), json.loads(b.read_text())
            for key in ("checkpoint_path", "config_name"):
                assert args_a.pop(key) != args_b.pop(key)
            assert args_a == args_b
        else:
            assert a.read_bytes() == b.read_bytes(), name


def test_learned_wordpiece_vocabulary_is_deterministic_and_tokenises():
    texts = ["the cat sat on the mat", "the dog sat on a log", "cats and dogs", "unbelievable things happen"] * 5
    first = learn_wordpiece(texts, 60)
    assert first == learn_wordpiece(list(reversed(texts)), 60)
    assert len(first) == 60 and first[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "the" in first and "##at" in first  # frequent words and pieces are merged
    assert set("thecatsdog") <= set(first)  # every character of the alphabet
