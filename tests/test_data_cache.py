"""The tokenized data cache (``--data_cache``): the same rows and batches as the in-memory loader, rebuilt when
what made it changes or when it is damaged, built once by processes started together, a fallback folder
for a read-only data folder, bitwise the same training, and no dataset-sized tensor in a rank."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, make_toy_dataset, tiny_args

from diffuseq.config import parse_train_args
from diffuseq.data import BatchStream, load_split, merge_and_mask, read_jsonl_pairs
from diffuseq.data import cache as data_cache
from diffuseq.data.pairs import RowFile, Truncation, iter_pair_batches
from diffuseq.data.vocab import WordPieceVocab, WordVocab
from diffuseq.errors import UserError
from diffuseq.fileio import read_jsonl
from diffuseq.training.setup import train

BUILT = "tokenized "  # the start of the log line of every build
TRICKY = ["the cat  sat", "\tthe\tdog ran\n", "  ", "", "café naïve ÜBER", "a\u3000b\xa0c\x1cd\x1fe\u2028f",
          "[PAD] [UNK] [START] x[END]", "\x00 alone \x00", "a\x00b", "unknown words only qwzx", "the " * 40,
          "emoji 🙂 sat", "the,cat . sat!"]


def _word_vocab(tmp_path: Path) -> WordVocab:
    (tmp_path / "words.txt").write_text("the\ncat\nsat\non\nmat\ndog\nran\ncafé\nb\nd\n🙂\n")
    return WordVocab.from_word_list(tmp_path / "words.txt")


def _wordpiece_vocab() -> WordPieceVocab:
    return WordPieceVocab.from_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "dog",
                                       "ran", "on", "##s", ".", ",", "!", "a", "b", "c", "ca", "##f", "##e"])


def _tricky_data(folder: Path, n: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        pairs = [(rng.choice(TRICKY) + " " + " ".join(rng.choices(TRICKY, k=rng.randint(0, 3))),
                  rng.choice(TRICKY)) for _ in range(n)]
        lines = [json.dumps({"src": s, "trg": t}, ensure_ascii=rng.random() < 0.5) for s, t in pairs]
        lines[3] = '{"trg": "the cat", "src": "sat on"}'  # another key order
        lines[5] = '  {"src": "a \\"quoted\\" dog", "trg": "x", "id": 5}  '  # escapes, an extra key, spaces
        (folder / f"{split}.jsonl").write_text("\n".join(lines[:10]) + "\n\n   \n" + "\r\n".join(lines[10:]) + "\n")
    return folder


def _builds(caplog) -> int:
    return sum(record.getMessage().startswith(BUILT) for record in caplog.records)


def _same(a, b) -> None:
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.input_mask, b.input_mask)
    assert a.truncation == b.truncation


# ---------------------------------------------------------------------------------- the same data


@pytest.mark.parametrize("kind", ["word", "wordpiece"])
def test_cached_rows_and_batches_equal_the_in_memory_loader(kind, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data = _tricky_data(tmp_path / "data")
    vocab = _word_vocab(tmp_path) if kind == "word" else _wordpiece_vocab()
    for seq_len, max_examples in ((9, None), (16, None), (40, 17)):
        plain = load_split(data, "train", vocab, seq_len, max_examples, cache="none")
        cached = load_split(data, "train", vocab, seq_len, max_examples)
        assert isinstance(cached._ids, RowFile) and cached._input_ids is None
        assert cached._ids.dtype == np.uint16 and len(cached) == len(plain)
        _same(cached, plain)  # ids, masks and the truncation figures (from the manifest)
        assert plain.truncation.truncated > 0 or seq_len == 40
        streams = [iter(BatchStream(d, 12, rank, 2, seed=5)) for d in (cached, plain) for rank in (0, 1)]
        for _ in range(25):  # several epochs
            batches = [next(s) for s in streams]
            for (ids_a, mask_a), (ids_b, mask_b) in ((batches[0], batches[2]), (batches[1], batches[3])):
                assert ids_a.dtype == torch.int64 and torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)
    assert _builds(caplog) == 3
    assert (data / ".diffuseq_cache" / ".gitignore").read_text().splitlines()[-1] == "*"
    again = load_split(data, "train", vocab, 9)
    assert _builds(caplog) == 3  # mapped, not rebuilt
    plain = load_split(data, "train", vocab, 9, cache="none")
    for index in (slice(2, 5), torch.tensor([4, 0, 4])):
        ids, mask = again.rows(index)
        assert mask.dtype == torch.int64
        assert torch.equal(ids, plain.input_ids[index]) and torch.equal(mask, plain.input_mask[index])


def test_word_batches_match_the_python_tokenizer_on_tricky_text(tmp_path):
    vocab = _word_vocab(tmp_path)
    texts = TRICKY + [" ".join(TRICKY), "\x00"]
    flat, lengths = data_cache.BatchEncoder(vocab).encode(texts)
    expected = vocab.encode_batch(texts)
    assert lengths.tolist() == [len(ids) for ids in expected]
    assert flat.tolist() == [i for ids in expected for i in ids]
    clean = [t for t in texts if "\x00" not in t]  # the one-split path (no sentinel in the texts)
    flat, lengths = data_cache.BatchEncoder(vocab).encode(clean)
    assert flat.tolist() == [i for ids in vocab.encode_batch(clean) for i in ids]
    wordpiece = _wordpiece_vocab()
    flat, lengths = data_cache.BatchEncoder(wordpiece).encode(texts)
    assert flat.tolist() == [i for ids in wordpiece.encode_batch(texts) for i in ids]


def test_vectorised_merge_and_truncation_figures_match_the_python_rule():
    rng = random.Random(1)
    for seq_len in (7, 8, 9, 12, 33):
        pairs = [([2] + [rng.randint(5, 90) for _ in range(rng.randint(0, 30))] + [3],
                  [2] + [rng.randint(5, 90) for _ in range(rng.randint(0, 30))] + [3]) for _ in range(400)]
        src_len, trg_len = (np.array([len(p[i]) for p in pairs]) for i in (0, 1))
        ids, srclen = data_cache.merge_rows(np.concatenate([p[0] for p in pairs]), src_len,
                                            np.concatenate([p[1] for p in pairs]), trg_len, 4, 0, seq_len, np.uint16)
        for row, length, (src, trg) in zip(ids.tolist(), srclen.tolist(), pairs):
            expected_ids, expected_mask = merge_and_mask(list(src), list(trg), 4, 0, seq_len)
            assert row == expected_ids
            assert [int(i >= length) for i in range(seq_len)] == expected_mask
        needed = (src_len + trg_len + 1).tolist()
        assert Truncation.from_histogram(np.bincount(needed), seq_len) == Truncation.of(needed, seq_len)


def _reference_pairs(path: Path) -> list[tuple[str, str]]:
    """The reader before the cache: read_jsonl, then the field check."""
    pairs = []
    for lineno, record in read_jsonl(path):
        if not isinstance(record, dict) or not isinstance(record.get("src"), str) \
                or not isinstance(record.get("trg"), str):
            raise UserError(f"{path}:{lineno}: a line needs string fields \"src\" and \"trg\"")
        pairs.append((record["src"], record["trg"]))
    return pairs


@pytest.mark.parametrize("bad", [b'{"src": "a", "trg": "b"} {"src": "c", "trg": "d"}', b'["a", "b"]',
                                 b'{"src": "a", "trg": "b"}{"src": "c", "trg": "d"}', b'{"src": "a", "trg": null}',
                                 b'{"src": "a", "trg": 3}', b'{"src": "caf\xe9", "trg": "x"}', b'{"src": "a\tb"}',
                                 b'\xef\xbb\xbf{"src": "a", "trg": "b"}', b'{"src": "a", "trg": "b"',
                                 b'{"src": "a", "trg": "b"}]', b'{"src": "a", "src": 1, "trg": "b"}'])
def test_fast_reader_reads_and_refuses_as_before(bad, tmp_path):
    good = _tricky_data(tmp_path / "good") / "train.jsonl"
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good.read_bytes() + bad + b"\n" + good.read_bytes())
    with pytest.raises(UserError) as expected:
        _reference_pairs(path)
    assert ":123:" in str(expected.value)
    for batch_size in (7, 50_000):  # batches of plain lines (one regex), escaped ones (the scanner), blank ones
        assert [pair for sources, targets in iter_pair_batches(good, batch_size=batch_size)
                for pair in zip(sources, targets)] == _reference_pairs(good)
        with pytest.raises(UserError) as ours:
            for _ in iter_pair_batches(path, batch_size=batch_size):
                pass
        assert str(ours.value) == str(expected.value)
    assert read_jsonl_pairs(good, 50) == _reference_pairs(good)[:50]


# ---------------------------------------------------------------------------------- what rebuilds it


def test_a_changed_file_vocabulary_or_seq_len_rebuilds(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data = make_toy_dataset(tmp_path / "data")
    vocab = _word_vocab(tmp_path)
    first = load_split(data, "train", vocab, 16)
    assert _builds(caplog) == 1
    train_file = data / "train.jsonl"
    stat = train_file.stat()
    text = train_file.read_text()
    train_file.write_text(text.replace("cat", "dog", 1) if "cat" in text else text.replace("dog", "cat", 1))
    assert train_file.stat().st_size == stat.st_size  # the same size, one word changed
    second = load_split(data, "train", vocab, 16)
    assert _builds(caplog) == 2 and not torch.equal(first.input_ids, second.input_ids)
    _same(second, load_split(data, "train", vocab, 16, cache="none"))
    os.utime(train_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime alone
    load_split(data, "train", vocab, 16)
    assert _builds(caplog) == 3
    with train_file.open("a") as handle:  # content added
        handle.write(json.dumps({"src": "dog", "trg": "cat"}) + "\n")
    assert len(load_split(data, "train", vocab, 16)) == len(first) + 1
    assert _builds(caplog) == 4
    bigger = WordVocab({**vocab.stoi, "mat2": vocab.size})
    load_split(data, "train", bigger, 16)
    load_split(data, "train", vocab, 20)
    assert _builds(caplog) == 6
    load_split(data, "train", vocab, 20)
    assert _builds(caplog) == 6


def _entry(folder: Path, split: str = "train") -> dict[str, Path]:
    manifest = next(folder.glob(f"{split}-*.json"))
    stem = manifest.name[:-len(".json")]
    return {"manifest": manifest, "ids": folder / f"{stem}.ids.npy", "srclen": folder / f"{stem}.srclen.npy"}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a token id changes by one: only the checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [
    ("ids", _truncate), ("ids", _flip_byte), ("srclen", _flip_byte), ("srclen", Path.unlink),
    ("manifest", lambda p: p.write_text("{not json")), ("manifest", lambda p: p.write_text("[]")),
    ("ids", lambda p: p.write_bytes(p.read_bytes()[:10] + b"X" + p.read_bytes()[11:]))])  # the header
def test_a_damaged_entry_is_rebuilt_never_read(damage, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data = make_toy_dataset(tmp_path / "data")
    vocab = _word_vocab(tmp_path)
    expected = load_split(data, "train", vocab, 16, cache="none")
    load_split(data, "train", vocab, 16)
    part, spoil = damage
    entry = _entry(data / ".diffuseq_cache")
    stale = entry["ids"].parent / f".{entry['ids'].name}.x1y2.tmp"  # as a build killed midway leaves it
    stale.write_bytes(b"partial")
    spoil(entry[part])
    mapped = []
    real_load = np.load
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "load", lambda path, **kw: mapped.append((_builds(caplog), Path(path).name)) or
                      real_load(path, **kw))
        again = load_split(data, "train", vocab, 16)
    assert _builds(caplog) == 2
    assert all(builds == 2 for builds, _ in mapped)  # nothing mapped before the rebuild
    _same(again, expected)
    assert sum("is damaged (" in r.getMessage() for r in caplog.records) == 1
    assert not stale.exists()
    load_split(data, "train", vocab, 16)
    assert _builds(caplog) == 2


# ---------------------------------------------------------------------------------- processes and folders


RACE = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from diffuseq.data import cache, load_split
    from diffuseq.data.vocab import load_vocab_from
    build = cache.build
    def slow_build(*args, **kwargs):
        time.sleep(0.5)  # both processes are inside find_or_build by now
        return build(*args, **kwargs)
    cache.build = slow_build
    data, go = Path(sys.argv[1]), Path(sys.argv[2])
    vocab = load_vocab_from(data.parent / "words.txt")
    while not go.exists():
        time.sleep(0.01)
    rows = load_split(data, "train", vocab, 16)
    print(int(rows.input_ids.sum()), len(rows))
""")


def test_two_processes_started_at_once_build_it_once(tmp_path):
    data = make_toy_dataset(tmp_path / "data", n_train=500)
    _word_vocab(tmp_path)
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(data), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    go.touch()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert sum(err.count(BUILT) for _, err in outputs) == 1, outputs
    assert outputs[0][0] == outputs[1][0]
    assert len(list((data / ".diffuseq_cache").glob("train-*.ids.npy"))) == 1


def test_a_read_only_data_folder_falls_back_then_tokenizes_in_memory(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    data = make_toy_dataset(tmp_path / "data")
    vocab = _word_vocab(tmp_path)
    expected = load_split(data, "train", vocab, 16, cache="none")
    assert not (data / ".diffuseq_cache").exists()  # 'none' writes nothing
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home_cache"))
    real_writable = data_cache._writable
    unwritable = [data]
    monkeypatch.setattr(data_cache, "_writable", lambda folder: not any(
        Path(folder).is_relative_to(u) for u in unwritable) and real_writable(folder))  # as root chmod is no bar
    data.chmod(0o555)
    try:
        first = load_split(data, "valid", vocab, 16)
        _same(first, load_split(data, "valid", vocab, 16, cache="none"))
        _same(load_split(data, "train", vocab, 16), expected)
        folder = data_cache.fallback_folder(data)
        assert folder.parent == tmp_path / "home_cache" / "diffuseq" and len(list(folder.glob("*.ids.npy"))) == 2
        assert not (data / ".diffuseq_cache").exists()
        assert sum("cannot be written" in r.getMessage() for r in caplog.records) == 1  # one line per process
        unwritable.append(tmp_path / "home_cache")
        shutil.rmtree(tmp_path / "home_cache")
        in_memory = load_split(data, "train", vocab, 16)
        assert in_memory._ids is None and torch.equal(in_memory.input_ids, expected.input_ids)
        assert sum("no writable folder" in r.getMessage() for r in caplog.records if r.levelname == "WARNING") == 1
    finally:
        data.chmod(0o755)


def test_a_mapped_split_keeps_no_dataset_sized_tensor(tmp_path):
    words = ["the", "cat", "sat", "on", "mat", "dog"]
    folder = tmp_path / "big"
    folder.mkdir()
    line = [json.dumps({"src": f"{a} {b}", "trg": b}) for a in words for b in words]
    (folder / "train.jsonl").write_text("\n".join(line * (200_000 // len(line) + 1)) + "\n")
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    vocab = WordVocab.from_word_list(tmp_path / "words.txt")
    data = load_split(folder, "train", vocab, 10)
    count = len(data)
    assert count >= 200_000
    batches = BatchStream(data, 64, 0, 1, seed=0)
    stream = iter(batches)
    for _ in range(5):
        ids, mask = next(stream)
        assert ids.shape == (64, 10)
    data.rows(slice(0, 100))

    def sized(value) -> bool:  # an array in memory with a row per example (a file's rows or map are not)
        return isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim > 0 and value.shape[0] >= count

    held = {name: value for name, value in vars(data).items() if sized(value) and not isinstance(value, np.memmap)}
    # the stream holds the epoch's order (N int64 indices, as before the cache) and nothing else of that size
    held.update({f"stream.{name}": value for name, value in vars(batches).items()
                 if sized(value) and name not in ("data", "_perm")})
    assert not held, list(held)
    assert data._ids.row_bytes == 10 * 2  # uint16 rows read from the file, not int64 in memory


# ---------------------------------------------------------------------------------- training


def _tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


SHORT = dict(learning_steps=4, save_interval=2, eval_interval=2, diff_steps=20, bsz=8, microbatch=4)


def test_training_is_bitwise_the_same_with_and_without_the_cache_and_resumes(tmp_path):
    data = make_toy_dataset(tmp_path / "data", n_train=80)
    runs = {}
    for name, cache in (("cached", ""), ("plain", "none")):
        runs[name] = tmp_path / name
        train(parse_train_args(tiny_args(data, runs[name], data_cache=cache, **SHORT)))
    assert (data / ".diffuseq_cache").is_dir()
    names = sorted(p.name for p in runs["cached"].glob("*.pt"))
    assert "model000004.pt" in names and names == sorted(p.name for p in runs["plain"].glob("*.pt"))
    for name in names:
        assert _tensors_equal(torch.load(runs["cached"] / name, weights_only=False),
                              torch.load(runs["plain"] / name, weights_only=False)), name
    resumed = tmp_path / "resumed"  # stopped at step 2, continued on a cache in another folder (a flag that may
    shutil.copytree(runs["cached"], resumed)  # change when a run continues)
    for path in resumed.glob("*000004.pt"):
        path.unlink()
    train(parse_train_args(tiny_args(data, resumed, data_cache=tmp_path / "elsewhere", **SHORT)))
    assert len(list((tmp_path / "elsewhere").glob("train-*.ids.npy"))) == 1
    for name in names:
        assert _tensors_equal(torch.load(runs["cached"] / name, weights_only=False),
                              torch.load(resumed / name, weights_only=False)), name


def test_under_a_distributed_launch_rank_0_builds_and_the_others_map_its_files(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    data = make_toy_dataset(tmp_path / "data")
    vocab = _word_vocab(tmp_path)
    told = []
    monkeypatch.setattr(data_cache.dist_util, "world_size", lambda: 2)
    monkeypatch.setattr(data_cache.dist_util, "rank", lambda: 0)
    monkeypatch.setattr(data_cache.dist_util, "broadcast_object", lambda obj, src=0: told.append(obj) or obj)
    first = data_cache.open_split(data / "train.jsonl", "train", vocab, 16)
    assert _builds(caplog) == 1 and told[0][0][0] == data / ".diffuseq_cache"
    monkeypatch.setattr(data_cache.dist_util, "rank", lambda: 1)
    monkeypatch.setattr(data_cache.dist_util, "broadcast_object", lambda obj, src=0: told[0])
    monkeypatch.setattr(data_cache, "entry_key", lambda *args: pytest.fail("rank 1 hashed the data"))
    _same(data_cache.open_split(data / "train.jsonl", "train", vocab, 16), first)
    assert _builds(caplog) == 1
    monkeypatch.undo()  # another node: rank 0's folder is not there, so this rank finds or builds its own
    monkeypatch.setattr(data_cache.dist_util, "world_size", lambda: 2)
    monkeypatch.setattr(data_cache.dist_util, "rank", lambda: 1)
    elsewhere = (tmp_path / "node0", told[0][0][1])
    monkeypatch.setattr(data_cache.dist_util, "broadcast_object", lambda obj, src=0: (elsewhere, None))
    _same(data_cache.open_split(data / "train.jsonl", "train", vocab, 16, spec=str(tmp_path / "node1")), first)
    assert _builds(caplog) == 2
    monkeypatch.setattr(data_cache.dist_util, "broadcast_object", lambda obj, src=0: (None, "bad line 3"))
    with pytest.raises(UserError, match="bad line 3"):  # rank 0's error, on every rank
        data_cache.open_split(data / "train.jsonl", "train", vocab, 16)
