"""What a training or decoding variant does to quality, over training seeds: bf16 autocast, self-conditioning.

    python bench/variant_quality.py --work /tmp/vq --variants fp32,bf16 --dtypes fp32,bf16
    python bench/variant_quality.py --work /tmp/vq --variants fp32,self_cond --respacings adp_20,20
    python bench/variant_quality.py --work /tmp/vq --variants bf16,bf16+self_cond --dtypes bf16

Trains the demo's model (``scripts/demo.sh`` defaults: 3 layers of 128, hidden_dim 64, T 1000,
seq_len 32, batch 64, lr 1e-3, EMA 0.995, a 4,000-entry vocabulary learned from
``datasets/wordnet_reverse``, no validation passes) once per training seed and variant
(``fp32``: as it is; ``bf16``: ``--precision bf16``; ``self_cond``: ``--self_cond``; ``a+b``: both), decodes each
checkpoint with every respacing in every network dtype (first 200 test pairs, decoding seed 10)
and prints BLEU per training seed, the mean and the seed-to-seed standard deviation, and the
wall time per training step. Finished trainings and decodes under ``--work`` are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from diffuseq import metrics  # noqa: E402

MODEL = ["--vocab", "train", "--vocab_size", "4000", "--seq_len", "32", "--hidden_dim", "64", "--hidden_t_dim", "64",
         "--num_layers", "3", "--hidden_size", "128", "--num_heads", "4", "--intermediate_size", "512",
         "--diff_steps", "1000", "--noise_schedule", "sqrt", "--bsz", "64", "--microbatch", "64", "--lr", "0.001",
         "--schedule_sampler", "lossaware", "--ema_rate", "0.995", "--log_interval", "100", "--eval_interval", "0"]
VARIANTS = {"fp32": [], "bf16": ["--precision", "bf16"], "self_cond": ["--self_cond"]}


def run(cmd: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def bleu(folder: Path) -> float:
    [path] = folder.glob("**/seed*.json")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    recs = [metrics.clean_recover(r["recover"]) for r in rows]
    refs = [metrics.clean_reference(r["reference"]) for r in rows]
    return metrics.evaluate([recs], [refs], workers=1, progress=False).file_summary(0).bleu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--variants", default="fp32,bf16",
                        help=f"comma-separated, of {', '.join(VARIANTS)}, or several joined by +")
    parser.add_argument("--dtypes", default="fp32", help="network dtypes when decoding: fp32, bf16")
    parser.add_argument("--respacings", default="adp_20")
    parser.add_argument("--seeds", default="102,103,104")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--data_dir", default=str(ROOT / "datasets" / "wordnet_reverse"))
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [part for v in variants for part in v.split("+") if part not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    results: dict[tuple[str, str, str], list[float]] = {}
    step_seconds: dict[str, list[float]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in variants:
            folder = args.work / f"{variant}_{seed}"
            checkpoint = folder / f"ema_0.995_{args.steps:06d}.pt"
            if not checkpoint.is_file():
                flags = [flag for part in variant.split("+") for flag in VARIANTS[part]]
                seconds = run([sys.executable, str(ROOT / "run_train.py"), "--data_dir", args.data_dir, *MODEL,
                               *flags, "--seed", str(seed), "--learning_steps", str(args.steps),
                               "--save_interval", str(args.steps), "--checkpoint_path", str(folder)])
                step_seconds.setdefault(variant, []).append(seconds / args.steps)
            for respacing in args.respacings.split(","):
                for dtype in args.dtypes.split(","):
                    out = args.work / "decode" / f"{variant}_{seed}_{respacing}_{dtype}"
                    if not list(out.glob("**/seed*.json")):
                        run([sys.executable, str(ROOT / "sample_seq2seq.py"), "--model_path", str(checkpoint),
                             "--step", "1000", "--decode_respacing", respacing, "--split", "test", "--max_examples",
                             "200", "--batch_size", "200", "--seed2", "10", "--dtype", dtype, "--out_dir", str(out)])
                    results.setdefault((variant, respacing, dtype), []).append(bleu(out))
    print(f"BLEU, first 200 test pairs of {args.data_dir}, decoding seed 10, training seeds {args.seeds}\n")
    print("| training | decoding | BLEU per training seed | mean | sd |")
    print("|---|---|---|---|---|")
    for (variant, respacing, dtype), scores in results.items():
        print(f"| {variant} | {respacing or 'all'}, {dtype} | {', '.join(f'{s:.4f}' for s in scores)} | "
              f"{statistics.mean(scores):.4f} | {statistics.stdev(scores) if len(scores) > 1 else 0:.4f} |")
    for variant, seconds in step_seconds.items():
        print(f"\n{variant} training: {statistics.mean(seconds):.3f} s per step (wall time of the whole run / steps)")


if __name__ == "__main__":
    main()
