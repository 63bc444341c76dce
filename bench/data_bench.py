"""Data at scale: the time before the first training step and the peak memory of each rank, with and without
the tokenized cache (``--data_cache``), for one rank and for two (torchrun, gloo).

    python bench/data_bench.py                            # 1,000,000 pairs, --seq_len 64
    python bench/data_bench.py --pairs 3400000 --seq_len 128
    python bench/data_bench.py --pairs 100000 --diffuseq /path/to/DiffuSeq   # + DiffuSeq's own loader
    git archive HEAD~1 | tar -x -C /tmp/before && python bench/data_bench.py --before /tmp/before  # + the old one

Writes N synthetic pairs of CommonsenseConversation's shape (sources of 8-32 words, targets of 5-24,
Zipf-like word frequencies over a 20,000-word vocabulary file plus 10% more words outside it, 2,000
validation pairs) once into ``--folder``, then starts ``run_train.py`` with a tiny model for 2 steps:
a first start (the cache removed: it is built), a warm start (a new run on the built cache), and a
start with ``--data_cache none`` (what every start costs without the cache; ``--before DIR``: the same
start with the code before the cache). Each rank reports the seconds from the launch to the end of its
first training step (the slowest rank's is shown) and its peak resident memory (VmHWM, which counts the
pages of the mapped cache it touched); "beyond baseline" subtracts the peak of the same start on a
1,000-pair dataset (Python, torch and the model) from the largest. The training loop's malloc setting
(DIFFUSEQ_KEEP_FREED_MEMORY) adds about 140 MB to the peak of one start in three or so, whatever the
data; it is off here unless the environment sets it. Prints a markdown table with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from compare_original import cpu_name  # noqa: E402

VOCAB_WORDS = 20_000
VALID_PAIRS = 2_000
TINY_MODEL = dict(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, hidden_dim=16, hidden_t_dim=16,
                  diff_steps=100, bsz=32, microbatch=32, learning_steps=2, save_interval=100, log_interval=1,
                  eval_interval=0)

DRIVER = r'''
import json, os, sys, time
started = float(os.environ["BENCH_T0"])
from diffuseq.runtime import start_command
rank = start_command()
from diffuseq.training import loop
first = {}
step = loop.Trainer.train_step
def timed(self, *args, **kwargs):
    out = step(self, *args, **kwargs)
    first.setdefault("first_step_s", time.time() - started)
    return out
loop.Trainer.train_step = timed
from diffuseq.config import parse_train_args
from diffuseq.training.setup import train
train(parse_train_args(sys.argv[1:]))
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
first["peak_rss_mb"] = int(status["VmHWM"].split()[0]) / 1024
with open(os.environ["BENCH_OUT"] + f".{rank}.json", "w") as handle:
    json.dump(first, handle)
'''

DIFFUSEQ_DRIVER = r'''
import json, os, sys, time
from types import SimpleNamespace
started = float(os.environ["BENCH_T0"])
repo, data_dir, work, seq_len = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, repo)
os.environ.setdefault("LOCAL_RANK", "0")
import torch
import torch.distributed as dist
dist.init_process_group("gloo", init_method=f"file://{work}/pg", rank=0, world_size=1)  # its DistributedSampler
from basic_utils import load_tokenizer
from diffuseq.text_datasets import load_data_text
args = SimpleNamespace(vocab=f"{data_dir}/vocab.txt", config_name="bert-base-uncased", checkpoint_path=work,
                       data_dir=data_dir, dataset="bench", hidden_dim=16)
tokenizer = load_tokenizer(args)
batches = load_data_text(batch_size=32, seq_len=seq_len, data_args=args, loaded_vocab=tokenizer, split="train",
                         model_emb=torch.nn.Embedding(tokenizer.vocab_size, 16))
next(batches)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"first_step_s": time.time() - started, "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024}))
'''


def write_dataset(folder: Path, pairs: int, seed: int = 0) -> Path:
    """``folder`` with train/valid/test.jsonl and vocab.txt (kept and reused when it holds the same pairs)."""
    marker = folder / "bench.json"
    wanted = {"pairs": pairs, "seed": seed, "vocab_words": VOCAB_WORDS, "format": 1}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < VOCAB_WORDS * 11 // 10:
        word = "".join(rng.choice(letters, int(rng.integers(2, 10))))
        if word not in seen:
            seen.add(word)
            words.append(word)
    (folder / "vocab.txt").write_text("\n".join(words[:VOCAB_WORDS]) + "\n")
    weights = 1.0 / (np.arange(len(words)) + 20.0)
    weights /= weights.sum()
    table = np.array(words, dtype=object)[rng.permutation(len(words))]
    for split, count in (("train", pairs), ("valid", VALID_PAIRS), ("test", VALID_PAIRS)):
        with open(folder / f"{split}.jsonl", "w") as handle:
            for start in range(0, count, 100_000):
                size = min(100_000, count - start)
                src_len, trg_len = rng.integers(8, 33, size), rng.integers(5, 25, size)
                tokens = table[rng.choice(len(words), int(src_len.sum() + trg_len.sum()), p=weights)].tolist()
                lines, at = [], 0
                for a, b in zip(src_len.tolist(), trg_len.tolist()):
                    lines.append('{"src": "%s", "trg": "%s"}\n' % (" ".join(tokens[at:at + a]),
                                                                  " ".join(tokens[at + a:at + a + b])))
                    at += a + b
                handle.write("".join(lines))
    marker.write_text(json.dumps(wanted))
    return folder


def start(data: Path, work: Path, ranks: int, seq_len: int, cache: str | None, timeout: int,
          code: Path = ROOT) -> dict[str, float]:
    """One training start of 2 steps with the project in ``code`` (``cache`` None: no --data_cache flag); the
    slowest rank's first step and the largest peak among the ranks."""
    run_dir = Path(tempfile.mkdtemp(prefix="run", dir=work))
    driver = work / "driver.py"
    driver.write_text(DRIVER)
    flags = {**TINY_MODEL, "data_dir": data, "vocab": data / "vocab.txt", "seq_len": seq_len,
             "checkpoint_path": run_dir / "ck", **({"data_cache": cache} if cache is not None else {})}
    args = [item for key, value in flags.items() for item in (f"--{key}", str(value))]
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={ranks}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "DIFFUSEQ_KEEP_FREED_MEMORY": os.environ.get("DIFFUSEQ_KEEP_FREED_MEMORY", "0"),
           "BENCH_OUT": str(run_dir / "result"), "BENCH_T0": str(time.time()), "PYTHONPATH": str(code)}
    proc = subprocess.run(launcher + [str(driver)] + args, capture_output=True, text=True, env=env, cwd=code,
                          timeout=timeout)
    if proc.returncode:
        raise SystemExit(f"the run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = [json.loads((run_dir / f"result.{rank}.json").read_text()) for rank in range(ranks)]
    shutil.rmtree(run_dir)
    return {"first_step_s": max(r["first_step_s"] for r in results),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "peaks_mb": [round(r["peak_rss_mb"]) for r in results]}


def diffuseq_start(repo: Path, data: Path, work: Path, seq_len: int, python: str, timeout: int) -> dict[str, float]:
    """DiffuSeq's ``load_data_text`` on the same data until its first batch (one process, its own Python, which
    needs DiffuSeq's requirements: ``datasets``, ``psutil``, ``transformers``)."""
    driver = work / "diffuseq_driver.py"
    driver.write_text(DIFFUSEQ_DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_T0": str(time.time()), "PYTHONPATH": str(repo)}
    (work / "pg").unlink(missing_ok=True)
    proc = subprocess.run([python, str(driver), str(repo), str(data), str(work), str(seq_len)], capture_output=True,
                          text=True, env=env, cwd=work, timeout=timeout)
    if proc.returncode:
        raise SystemExit(f"DiffuSeq's loader failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000, help="training pairs (default 1,000,000)")
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--ranks", default="1,2", help="process counts to run (default 1,2)")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "diffuseq_data_bench",
                        help="where the synthetic data is written (kept and reused)")
    parser.add_argument("--no-none", action="store_true", help="skip the starts with --data_cache none")
    parser.add_argument("--before", type=Path, help="a copy of this project without the cache (e.g. git archive "
                        "of the commit before it): also time its loader")
    parser.add_argument("--diffuseq", type=Path, help="a DiffuSeq checkout: also time its loader (one process)")
    parser.add_argument("--original-python", default=sys.executable, help="the Python that runs DiffuSeq's code")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed to one start")
    args = parser.parse_args()

    made = time.perf_counter()
    data = write_dataset(args.folder / f"pairs{args.pairs}", args.pairs)
    baseline_data = write_dataset(args.folder / "pairs1000", 1000)
    print(f"data: {data} ({(data / 'train.jsonl').stat().st_size / 2**20:.0f} MB, "
          f"{time.perf_counter() - made:.0f} s to write or find)", file=sys.stderr, flush=True)
    work = args.folder / "work"
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    rows = []
    for ranks in [int(r) for r in args.ranks.split(",")]:
        shutil.rmtree(cache, ignore_errors=True)
        baseline = start(baseline_data, work, ranks, args.seq_len, str(cache), args.timeout)
        rows.append((ranks, "1,000 pairs (baseline: Python, torch, the model)", baseline, None))
        shutil.rmtree(cache, ignore_errors=True)
        runs = [("cache, first start (builds it)", str(cache)), ("cache, warm start", str(cache))]
        if not args.no_none:
            runs.append(("--data_cache none (every start)", "none"))
        if args.before:
            runs.append(("before the cache (every start)", None))
        for label, spec in runs:
            result = start(data, work, ranks, args.seq_len, spec, args.timeout, args.before if spec is None else ROOT)
            rows.append((ranks, label, result, baseline["peak_rss_mb"]))
            print(f"{ranks} rank(s), {label}: {result}", file=sys.stderr, flush=True)
    if args.diffuseq:
        result = diffuseq_start(args.diffuseq, data, work, args.seq_len, args.original_python, args.timeout)
        rows.append((1, "DiffuSeq's loader (to its first batch)", result, None))
    shutil.rmtree(cache, ignore_errors=True)

    print(f"\n{args.pairs:,} pairs (train.jsonl {(data / 'train.jsonl').stat().st_size / 2**20:.0f} MB), --seq_len "
          f"{args.seq_len}, tiny model, 2 steps; {cpu_name()}, {os.cpu_count()} cores\n")
    print("| ranks | start | time to first step (s) | peak RSS of each rank (MB) | largest beyond baseline (MB) |")
    print("|---|---|---|---|---|")
    for ranks, label, result, baseline in rows:
        beyond = f"{result['peak_rss_mb'] - baseline:+.0f}" if baseline is not None else "-"
        peaks = " / ".join(str(peak) for peak in result.get("peaks_mb", [round(result["peak_rss_mb"])]))
        print(f"| {ranks} | {label} | {result['first_step_s']:.1f} | {peaks} | {beyond} |")


if __name__ == "__main__":
    main()
