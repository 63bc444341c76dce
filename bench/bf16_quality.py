"""What bf16 autocast costs in quality: BLEU of training and of decoding in bf16 against fp32.

    python bench/bf16_quality.py --work /tmp/bf16 [--seeds 102,103,104] [--steps 2000]

Trains the demo's model (``scripts/demo.sh`` defaults: 3 layers of 128, hidden_dim 64, T 1000,
seq_len 32, batch 64, lr 1e-3, EMA 0.995, a 4,000-entry vocabulary learned from
``datasets/wordnet_reverse``) once per seed in fp32 and once with ``--precision bf16``, decodes
each checkpoint with ``adp_20`` in fp32 and with ``--dtype bf16`` (first 200 test pairs, decoding
seed 10) and prints BLEU per seed, the mean and the seed-to-seed standard deviation, and the time
per training step.
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
    parser.add_argument("--seeds", default="102,103,104")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--data_dir", default=str(ROOT / "datasets" / "wordnet_reverse"))
    args = parser.parse_args()
    results: dict[tuple[str, str], list[float]] = {}
    step_seconds: dict[str, list[float]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for precision in ("fp32", "bf16"):
            folder = args.work / f"{precision}_{seed}"
            checkpoint = folder / f"ema_0.995_{args.steps:06d}.pt"
            if not checkpoint.is_file():
                seconds = run([sys.executable, str(ROOT / "run_train.py"), "--data_dir", args.data_dir, *MODEL,
                               "--precision", precision, "--seed", str(seed), "--learning_steps", str(args.steps),
                               "--save_interval", str(args.steps), "--checkpoint_path", str(folder)])
                step_seconds.setdefault(precision, []).append(seconds / args.steps)
            for dtype in ("fp32", "bf16"):
                out = args.work / "decode" / f"{precision}_{seed}_{dtype}"
                if not list(out.glob("**/seed*.json")):
                    run([sys.executable, str(ROOT / "sample_seq2seq.py"), "--model_path", str(checkpoint), "--step",
                         "1000", "--decode_respacing", "adp_20", "--split", "test", "--max_examples", "200",
                         "--batch_size", "200", "--seed2", "10", "--dtype", dtype, "--out_dir", str(out)])
                results.setdefault((precision, dtype), []).append(bleu(out))
    print(f"adp_20 BLEU, first 200 test pairs of {args.data_dir}, training seeds {args.seeds}\n")
    print("| training | decoding | BLEU per seed | mean | sd |")
    print("|---|---|---|---|---|")
    for (precision, dtype), scores in results.items():
        print(f"| {precision} | {dtype} | {', '.join(f'{s:.4f}' for s in scores)} | {statistics.mean(scores):.4f} | "
              f"{statistics.stdev(scores) if len(scores) > 1 else 0:.4f} |")
    for precision, seconds in step_seconds.items():
        print(f"\n{precision} training: {statistics.mean(seconds):.3f} s per step (wall time of the whole run / steps)")


if __name__ == "__main__":
    main()
