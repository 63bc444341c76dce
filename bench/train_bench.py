"""Training speed: seconds per optimizer step, samples/s and peak memory for one configuration.

Default configuration (the issue's reference point): seq_len 64, hidden_dim 128, hidden_t_dim 128,
BERT encoder 4 layers / 256 / 4 heads / 1024, T 2000 sqrt, batch 32, an 8,000-word vocabulary,
dropout 0.1, one torch thread. ``--penalty`` adds the distance penalty (l2_noise_random, lambda -2);
``--self_cond`` trains a self-conditioned denoiser.

    python bench/train_bench.py                       # plain loss
    python bench/train_bench.py --penalty             # with the distance penalty
    python bench/train_bench.py --both                # both, one after the other
    python bench/train_bench.py --both --self_cond    # both, self-conditioned
    python bench/train_bench.py --layers 12 --hidden 768 --heads 12 --ffn 3072 --seq_len 128   # bert-base
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import peak_memory_mb, synthetic_dataset

from diffuseq.config import parse_train_args
from diffuseq.data.vocab import load_vocab_from
from diffuseq.runtime import PRECISIONS, keep_freed_memory
from diffuseq.training.loop import Trainer


def bench(args: argparse.Namespace, penalty: bool, work: Path) -> dict[str, float]:
    """Time ``args.steps`` optimizer steps after ``args.warmup`` warm-up steps."""
    data = synthetic_dataset(work / "data", args.vocab_size, args.seq_len)
    flags = (f"--data_dir {data} --vocab {data / 'vocab.txt'} --seq_len {args.seq_len} --hidden_dim 128 "
             f"--hidden_t_dim 128 --num_layers {args.layers} --hidden_size {args.hidden} --num_heads {args.heads} "
             f"--intermediate_size {args.ffn} --diff_steps 2000 --noise_schedule sqrt --bsz {args.batch} "
             f"--microbatch {args.batch} --learning_steps 100000 --dropout 0.1 --schedule_sampler {args.sampler} "
             f"--precision {args.precision} --checkpoint_path {work / 'ck'}")
    if penalty:
        flags += " --simi_penalty l2_noise_random --simi_lambda -2 --simi_noise 0.05"
    if args.self_cond:
        flags += " --self_cond"
    cfg = parse_train_args(flags.split())
    vocab = load_vocab_from(data / "vocab.txt")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(cfg, work / "ck", vocab, device)
    trainer.model.train()
    times = []
    for i in range(args.warmup + args.steps):
        started = time.perf_counter()
        trainer.train_step(trainer.model, with_nll=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"s_per_step": median, "samples_per_s": args.batch / median, "peak_mb": peak_memory_mb(device)}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--sampler", default="uniform", choices=("uniform", "lossaware"))
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--penalty", action="store_true", help="with the distance penalty")
    parser.add_argument("--both", action="store_true", help="without, then with the distance penalty")
    parser.add_argument("--self_cond", action="store_true", help="a self-conditioned denoiser")
    return parser


def main() -> None:
    args = parser().parse_args()
    keep_freed_memory()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"config: {args.layers} layers / {args.hidden} / {args.heads} heads / {args.ffn}, seq_len {args.seq_len}, "
          f"batch {args.batch}, vocab {args.vocab_size}, T 2000 sqrt, {args.sampler} sampler, {args.precision}, "
          f"{args.threads} thread(s), {device}; median of {args.steps} steps after {args.warmup} warm-up")
    for penalty in ((False, True) if args.both else (args.penalty,)):
        with tempfile.TemporaryDirectory() as tmp:
            result = bench(args, penalty, Path(tmp))
        label = ("l2_noise_random penalty" if penalty else "plain loss") + (", self_cond" if args.self_cond else "")
        print(f"{label:>34}: {result['s_per_step']:.3f} s/step, {result['samples_per_s']:.1f} samples/s, "
              f"peak memory {result['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
