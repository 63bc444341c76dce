"""The tokenized cache of a split: each ``<split>.jsonl`` tokenized once, into files every later run reads.

A split's entry in the cache folder (``--data_cache``; by default ``<data_dir>/.diffuseq_cache/``) is

* ``<split>-<key16>.ids.npy``: the merged ``src [SEP] trg`` rows, uint16 when the vocabulary has fewer
  than 65,536 entries (else int32), shape [N, seq_len];
* ``<split>-<key16>.srclen.npy``: uint16 [N], the positions of the source and its ``[SEP]``, so the
  mask of a row is ``arange(seq_len) >= srclen``;
* ``<split>-<key16>.json``: the manifest, written last: the key and what it was made of, N, the
  truncation figures, and each array's byte size and SHA-256 (of the bytes after the 128-byte header).

The key hashes what decides the content: the split file's size, mtime_ns and SHA-256, the vocabulary's
SHA-256 (its tokens as saved) and kind, ``seq_len``, ``max_examples`` and :data:`FORMAT_VERSION`. A
manifest whose arrays are missing, of another size, with another header or checksum is a damaged entry:
rebuilt with one log line, never read. Every file is written to a temporary name, fsynced and renamed.

A run reads the rows of each batch from the ids file (``pread``: nothing of it resident in the process; one
copy per node in the page cache) and maps the small srclen file. One process builds an entry: under
``torchrun`` rank 0 (the others wait for its answer and read the same files); independent processes take
``<split>-<key16>.lock`` (``fcntl.flock``), so that two runs started at once build it once. A data folder
that cannot be written falls back to ``$XDG_CACHE_HOME/diffuseq/<hash of the data folder's path>/``
(``~/.cache``), and to tokenizing in memory (one warning) when that cannot be written either. Entries of
older data are not removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from itertools import chain, repeat
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np

from .. import dist_util
from ..errors import UserError
from ..fileio import atomic_write_text, current_umask, sha256_file
from .pairs import RowFile, Seq2SeqData, Truncation, check_seq_len, iter_pair_batches
from .vocab import Vocabulary, WordPieceVocab, WordVocab

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BATCH_PAIRS = 50_000  # pairs tokenized and written at a time: the build's memory does not grow with N
DEFAULT_FOLDER = ".diffuseq_cache"
_SENTINEL = "\x00"  # joins the texts of a batch for one split(): not whitespace, so it stays a word
_said: set[tuple[str, str]] = set()  # (message kind, folder): fallback lines are logged once per process
_digests: dict[tuple[int, int, int, int], str] = {}  # (device, inode, size, mtime_ns) -> SHA-256, this process


# ------------------------------------------------------------------------------------------- keys


def file_identity(path: Path) -> dict[str, Any]:
    """A data file's size, mtime_ns and SHA-256 (hashed once per process while its stat is unchanged)."""
    stat = Path(path).stat()
    memo = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if memo not in _digests:
        _digests[memo] = sha256_file(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _digests[memo]}


def vocab_digest(vocab: Vocabulary) -> str:
    """SHA-256 of the vocabulary's kind and tokens as :meth:`Vocabulary.save` writes them."""
    if isinstance(vocab, WordPieceVocab):
        import tokenizers

        text = f"wordpiece tokenizers {tokenizers.__version__}\n" + "\n".join(vocab.itos) + "\n"
    elif isinstance(vocab, WordVocab):
        text = "word\n" + json.dumps(vocab.stoi, ensure_ascii=False) + "\n"
    else:
        text = f"{type(vocab).__module__}.{type(vocab).__qualname__}\n" + "\n".join(vocab.tokens(range(vocab.size)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_key(path: Path, vocab: Vocabulary, seq_len: int, max_examples: int | None) -> tuple[str, dict[str, Any]]:
    """The key of a split's entry (hex SHA-256) and what it was made of."""
    made_of = {"format": FORMAT_VERSION, "source": file_identity(path), "vocab_sha256": vocab_digest(vocab),
               "seq_len": seq_len, "max_examples": max_examples}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest(), made_of


# ------------------------------------------------------------------------------------------- folders


def fallback_folder(data_dir: Path) -> Path:
    """``$XDG_CACHE_HOME/diffuseq/<16 hex digits of the data folder's path>`` (``~/.cache`` by default)."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "diffuseq" / hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]


def cache_folders(data_dir: Path, spec: str) -> list[Path]:
    """The folders to look in, first choice first: ``--data_cache`` given, or the default and its fallback."""
    if spec:
        return [Path(spec).expanduser()]
    return [Path(data_dir) / DEFAULT_FOLDER, fallback_folder(data_dir)]


def _writable(folder: Path) -> bool:
    """Whether a file can be made in ``folder`` (created if missing, then marked as a cache: ignored by git and
    by backup tools; a folder that existed is left as it is)."""
    try:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        if created or folder.name == DEFAULT_FOLDER:
            for name, text in ((".gitignore", "# the tokenized data cache of diffuseq\n*\n"),
                               ("CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n"
                                                "# the tokenized data cache of diffuseq\n")):
                if not (folder / name).exists():
                    atomic_write_text(text, folder / name)
    except (OSError, UserError):
        return False
    return True


def _say_once(kind: str, folder: Path, log: Any, message: str, *args: Any) -> None:
    if (kind, str(folder)) not in _said:
        _said.add((kind, str(folder)))
        log(message, *args)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) while building or checking an entry."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------- reading


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The .npy (1.0) header numpy writes for a C-order array: 128 bytes for every shape used here."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def _names(split: str, key: str) -> dict[str, str]:
    stem = f"{split}-{key[:16]}"
    return {"manifest": f"{stem}.json", "ids": f"{stem}.ids.npy", "srclen": f"{stem}.srclen.npy",
            "lock": f"{stem}.lock"}


def _read_manifest(folder: Path, split: str, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the manifest, None) of a sound entry; (None, None) when there is none; (None, why) when it is damaged.

    Sound: the manifest parses and names this key, and each array file has the recorded size, the header
    of the recorded dtype and shape, and the recorded SHA-256.
    """
    names = _names(split, key)
    path = folder / names["manifest"]
    if not path.is_file():
        return None, None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("key") != key or manifest.get("format") != FORMAT_VERSION:
            return None, "its manifest is not this entry's"
        for part in ("ids", "srclen"):
            info = manifest["files"][part]
            file = folder / names[part]
            if not file.is_file():
                return None, f"{file.name} is missing"
            header = _npy_header(np.dtype(info["dtype"]), tuple(info["shape"]))
            if file.stat().st_size != info["bytes"] or info["bytes"] != len(header) + int(
                    np.prod(info["shape"])) * np.dtype(info["dtype"]).itemsize:
                return None, f"{file.name} has {file.stat().st_size} bytes, not {info['bytes']}"
            with open(file, "rb") as handle:
                if handle.read(len(header)) != header:
                    return None, f"{file.name} has another header"
            if sha256_file(file, len(header)) != info["sha256"]:
                return None, f"{file.name} does not match its checksum"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"its manifest cannot be read ({err})"
    return manifest, None


def _map(folder: Path, split: str, manifest: dict[str, Any]) -> Seq2SeqData:
    names = _names(split, manifest["key"])
    srclen = np.load(folder / names["srclen"], mmap_mode="r")
    return Seq2SeqData.mapped(RowFile(folder / names["ids"]), srclen, Truncation(**manifest["truncation"]))


def checked_before(path: Path, spec: str) -> bool:
    """Whether a cache folder holds the manifest of an entry built from all of ``path`` as it is now (the
    build read every line, so the file is known to be well formed)."""
    identity = None
    for folder in cache_folders(path.parent, spec):
        for manifest_file in folder.glob(f"{path.stem}-*.json") if folder.is_dir() else ():
            try:
                made_of = json.loads(manifest_file.read_text(encoding="utf-8"))["made_of"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not isinstance(made_of, dict) or made_of.get("max_examples") is not None:
                continue
            identity = identity or file_identity(path)
            if made_of.get("source") == identity:
                return True
    return False


# ------------------------------------------------------------------------------------------- building


def _ranges(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows of ``lengths``: each element's row and its position in the row."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    return rows, np.arange(int(lengths.sum())) - np.repeat(starts, lengths)


class BatchEncoder:
    """Texts to token ids in bulk: ``encode(texts)`` gives the ids of every text, start and end tokens
    included, concatenated, and each text's length; the same ids as ``vocab.encode_batch``.

    A word vocabulary splits a whole batch with one ``str.split`` (DiffuSeq's whitespace rule, so exactly
    its words) and looks the words up through a dict; WordPiece goes through the ``tokenizers`` library's
    batch encoder (Rust, on every core).
    """

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._lookup: dict[str, int] | None = None
        if isinstance(vocab, WordVocab):
            self._lookup = {**vocab.stoi, _SENTINEL: -1}
            self._unk = vocab.unk_id
            self._start, self._end = vocab.stoi["[START]"], vocab.stoi["[END]"]

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self._lookup is not None:
            found = self._words(texts)
            if found is not None:
                return found
            sequences = self.vocab.encode_batch(texts)
        elif isinstance(self.vocab, WordPieceVocab):
            backend = getattr(self.vocab.tokenizer, "_tokenizer", None)
            if hasattr(backend, "encode_batch_fast"):  # the same ids, without the offsets
                sequences = [enc.ids for enc in backend.encode_batch_fast(list(texts))]
            else:
                sequences = self.vocab.encode_batch(texts)
        else:
            sequences = self.vocab.encode_batch(texts)
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        flat = np.fromiter(chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
        return flat, lengths

    def _words(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """The word vocabulary's ids for a batch, or None when a text holds the sentinel word itself."""
        words = f" {_SENTINEL} ".join(texts).split()
        ids = np.fromiter(map(self._lookup.get, words, repeat(self._unk)), dtype=np.int64, count=len(words))
        bounds = np.flatnonzero(ids == -1)
        if len(bounds) != len(texts) - 1:
            return None
        inner = np.diff(np.concatenate(([-1], bounds, [len(ids)]))) - 1
        lengths = inner + 2
        flat = np.empty(int(lengths.sum()), dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        flat[starts] = self._start
        flat[starts + lengths - 1] = self._end
        rows, positions = _ranges(inner)
        flat[starts[rows] + 1 + positions] = ids[ids != -1]
        return flat, lengths


def merge_rows(src: np.ndarray, src_len: np.ndarray, trg: np.ndarray, trg_len: np.ndarray, sep_id: int,
               pad_id: int, seq_len: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_and_mask` on a batch at once: rows [B, seq_len] of ``dtype`` and each row's source length.

    ``src`` / ``trg`` are the concatenated sequences (start and end tokens included) with their lengths.
    As DiffuSeq's loop: without their end tokens, the longer side loses tokens until both fit in
    ``seq_len - 3`` (the longer alone while the sides differ, then both), then ``src end [SEP] trg end``.
    """
    keep_src, keep_trg = src_len - 1, trg_len - 1
    excess = keep_src + keep_trg - (seq_len - 3)
    gap = np.abs(keep_src - keep_trg)
    one_side = (excess > 0) & (excess <= gap)  # the longer side alone loses the excess
    both = (excess > 0) & (excess > gap)  # cut to the same length, then both lose a token per turn
    half = (seq_len - 3) // 2
    keep_src, keep_trg = (np.where(both, half, np.where(one_side & (keep_src > keep_trg), keep_src - excess, keep_src)),
                          np.where(both, half, np.where(one_side & (keep_trg > keep_src), keep_trg - excess, keep_trg)))
    src_start = np.cumsum(src_len) - src_len
    trg_start = np.cumsum(trg_len) - trg_len
    end = src[src_start + src_len - 1]
    count = len(src_len)
    out = np.full((count, seq_len), pad_id, dtype=dtype)
    flat = out.reshape(-1)
    base = np.arange(count) * seq_len
    rows, positions = _ranges(keep_src)
    flat[base[rows] + positions] = src[src_start[rows] + positions]
    flat[base + keep_src] = end
    flat[base + keep_src + 1] = sep_id
    rows, positions = _ranges(keep_trg)
    flat[base[rows] + keep_src[rows] + 2 + positions] = trg[trg_start[rows] + positions]
    flat[base + keep_src + 2 + keep_trg] = end
    return out, keep_src + 2


class _ArrayWriter:
    """A .npy file written row block by row block to a temporary name beside ``path``: its 128-byte header
    last, its data hashed on the way; ``commit`` renames it into place."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), row_shape
        self.header_bytes = len(_npy_header(self.dtype, (0, *row_shape)))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.tmp = Path(tmp)
        self.handle: BinaryIO = os.fdopen(fd, "wb")
        self.handle.write(b"\0" * self.header_bytes)
        self.rows = 0
        self.digest = hashlib.sha256()

    def write(self, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=self.dtype).tobytes()
        self.handle.write(data)
        self.digest.update(data)
        self.rows += len(block)

    def commit(self) -> dict[str, Any]:
        shape = (self.rows, *self.row_shape)
        header = _npy_header(self.dtype, shape)
        if len(header) != self.header_bytes:
            raise RuntimeError(f"unexpected .npy header length for shape {shape}")
        self.handle.seek(0)
        self.handle.write(header)
        self.handle.flush()
        os.fchmod(self.handle.fileno(), 0o666 & ~current_umask())
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)
        return {"dtype": self.dtype.str, "shape": list(shape), "bytes": self.path.stat().st_size,
                "sha256": self.digest.hexdigest()}

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _progress(split: str) -> Any:
    """A tqdm bar of pairs (rank 0, a terminal only); its total is guessed from the bytes read."""
    if dist_util.rank() != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(desc=f"tokenizing {split}", unit=" pairs", unit_scale=True, dynamic_ncols=True, leave=False)


def build(path: Path, folder: Path, split: str, vocab: Vocabulary, seq_len: int, max_examples: int | None,
          key: str, made_of: dict[str, Any]) -> dict[str, Any]:
    """Tokenize ``path`` into the entry ``key`` of ``folder`` (the caller holds its lock); return its manifest.

    Batches of pairs are tokenized, merged and appended to the arrays' files as they come, so the
    build's memory does not grow with the number of pairs.
    """
    started = time.perf_counter()
    names = _names(split, key)
    with contextlib.suppress(FileNotFoundError):
        (folder / names["manifest"]).unlink()  # a damaged entry is never read, even while this runs
    for stale in folder.glob(f".{split}-{key[:16]}.*.tmp"):  # left by a build that was killed
        stale.unlink(missing_ok=True)
    dtype = np.dtype(np.uint16 if vocab.size < 2**16 else np.int32)
    counts = np.zeros(seq_len + 2, dtype=np.int64)  # pairs per needed length
    writers = [_ArrayWriter(folder / names["ids"], dtype, (seq_len,)),
               _ArrayWriter(folder / names["srclen"], np.dtype(np.uint16), ())]
    bar = _progress(split)
    text_bytes, file_bytes = 0, max(made_of["source"]["size"], 1)
    encoder = BatchEncoder(vocab)
    try:
        for sources, targets in iter_pair_batches(path, max_examples, BATCH_PAIRS):
            src, src_len = encoder.encode(sources)
            trg, trg_len = encoder.encode(targets)
            ids, srclen = merge_rows(src, src_len, trg, trg_len, vocab.sep_id, vocab.pad_id, seq_len, dtype)
            writers[0].write(ids)
            writers[1].write(srclen)
            needed = src_len + trg_len + 1  # as Truncation counts: each side whole, and the [SEP]
            if needed.max() >= len(counts):
                counts = np.concatenate([counts, np.zeros(int(needed.max()) + 1 - len(counts), np.int64)])
            counts += np.bincount(needed, minlength=len(counts))
            if bar is not None:  # about 24 characters of JSON around each pair's texts
                text_bytes += sum(map(len, sources)) + sum(map(len, targets)) + 24 * len(sources)
                guess = int(writers[0].rows * file_bytes / max(text_bytes, 1))
                bar.total = max(bar.n + len(ids), min(guess, max_examples or guess))
                bar.update(len(ids))
        files = {"ids": writers[0].commit(), "srclen": writers[1].commit()}
    except BaseException:
        for writer in writers:
            writer.discard()
        raise
    finally:
        if bar is not None:
            bar.close()
    _fsync_dir(folder)
    truncation = Truncation.from_histogram(counts, seq_len)
    seconds = time.perf_counter() - started
    manifest = {"format": FORMAT_VERSION, "key": key, "split": split, "path": str(Path(path).resolve()),
                "made_of": made_of, "pairs": truncation.pairs, "seq_len": seq_len, "files": files,
                "truncation": truncation.to_dict(), "seconds": round(seconds, 3)}
    atomic_write_text(json.dumps(manifest, indent=1) + "\n", folder / names["manifest"])
    logger.info("tokenized %s into %s in %.1f s: %d pairs, %d of them (%.1f%%) longer than --seq_len %d are cut "
                "(longest pair %d tokens; --seq_len %d would hold 99%%)", path, folder, seconds, truncation.pairs,
                truncation.truncated, 100 * truncation.truncated / max(truncation.pairs, 1), seq_len,
                truncation.longest, truncation.seq_len_99)
    return manifest


# ------------------------------------------------------------------------------------------- opening


def find_or_build(path: Path, split: str, vocab: Vocabulary, seq_len: int, max_examples: int | None,
                  spec: str) -> tuple[Path, dict[str, Any]] | None:
    """The folder and manifest of a sound entry for this split, built if needed; None when no cache folder
    can be written (then the caller tokenizes in memory)."""
    key, made_of = entry_key(path, vocab, seq_len, max_examples)
    folders = cache_folders(path.parent, spec)
    for number, folder in enumerate(folders):
        manifest, damage = _read_manifest(folder, split, key) if folder.is_dir() else (None, None)
        if manifest is not None:
            return folder, manifest
        if not _writable(folder):
            continue
        if number:
            _say_once("fallback", folder, logger.info, "the data folder %s cannot be written: its tokenized cache "
                      "goes to %s", path.parent, folder)
        with _locked(folder / _names(split, key)["lock"]):
            manifest, damage = _read_manifest(folder, split, key)  # another process may have built it meanwhile
            if manifest is not None:
                return folder, manifest
            if damage:
                logger.warning("the tokenized cache of %s in %s is damaged (%s): rebuilding it", path, folder,
                               damage)
            return folder, build(path, folder, split, vocab, seq_len, max_examples, key, made_of)
    _say_once("none", folders[0], logger.warning, "no writable folder for the tokenized cache of %s (%s): it is "
              "tokenized in memory at every start; give --data_cache FOLDER", path.parent,
              ", ".join(map(str, folders)))
    return None


def open_split(path: Path, split: str, vocab: Vocabulary, seq_len: int, max_examples: int | None = None,
               spec: str = "") -> Seq2SeqData | None:
    """The split's examples read from its cache entry (built first if needed), or None for no cache.

    Under a distributed launch rank 0 finds or builds the entry while the other ranks wait, then they read
    the same files (a rank that does not see them, on another node, finds or builds its own).
    """
    check_seq_len(seq_len)
    if dist_util.world_size() == 1:
        found = find_or_build(path, split, vocab, seq_len, max_examples, spec)
        return _map(found[0], split, found[1]) if found is not None else None
    found, error = None, None
    if dist_util.rank() == 0:
        try:
            found = find_or_build(path, split, vocab, seq_len, max_examples, spec)
        except UserError as err:
            error = str(err)
    found, error = dist_util.broadcast_object((found, error))
    if error:
        raise UserError(error)
    if found is None:
        return None
    folder, manifest = found
    names = _names(split, manifest["key"])
    try:
        same = json.loads((folder / names["manifest"]).read_text(encoding="utf-8")) == manifest and all(
            (folder / names[part]).stat().st_size == manifest["files"][part]["bytes"] for part in ("ids", "srclen"))
    except (OSError, ValueError):
        same = False
    if not same:  # not rank 0's file system
        found = find_or_build(path, split, vocab, seq_len, max_examples, spec)
        if found is None:
            return None
        folder, manifest = found
    return _map(folder, split, manifest)
