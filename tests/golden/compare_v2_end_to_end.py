"""DiffuSeq-v2's decoders against this project's on v2 checkpoints, end to end (run by hand; about 30 min
on 2 cores, 20 more with ``--ddpm``).

    python tests/golden/compare_v2_end_to_end.py --diffuseq-v2 /path/to/DiffuSeq-v2 \\
        --original-python /path/to/venv/bin/python --work /tmp/e2e_v2 [--ddpm]

1. Two v2 models of the demo's size on ``datasets/wordnet`` (the first 20,000 training pairs, DiffuSeq's
   word-list vocabulary, 3 layers of 128, T = 1000, batch 64, lr 1e-3, ``--steps`` 1,000, seed 102; with word
   tokens ``wordnet_reverse`` is a plain reversal, which both learn perfectly) with the flags of their
   ``train.sh`` (``--learned_mean_embed True --denoise True --denoise_rate 0.5 --use_fp16``; on a CPU
   their fp16 is fp32): one trained by their ``train.py``, one by this project's ``run_train.py`` (fp32).
2. Each EMA checkpoint decoded on the first 200 test pairs, with each decoding seed, by
   * their ``sample_seq2seq_dpmSolver.py --step S`` and this project's ``--sampler dpm-solver-v2
     --solver_steps S`` (fp32), for each S of ``--solver_steps``;
   * with ``--ddpm``, their ``sample_seq2seq.py --step 1000`` (DDPM through all T steps, absorbing) and this
     project's default decode (the same).
3. DiffuSeq's BLEU of every file; one markdown table (mean ± sd over the decoding seeds, and each seed).

Their decoders crash as shipped (``dist_util.load_state_dict`` is called with two extra positional
arguments); ``run_original.py --drop-load-args`` drops them. Their noise comes from the global generator
seeded with ``--seed2`` once per run, ours from one generator per example: the same seed gives other draws,
so the decoders are compared through the seed spread. Their decoders write into the checkpoint's folder (the
tokenizer) and append to their outputs, so each decode reads a copy of the folder and writes a new one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from compare_end_to_end import ROOT, bleu_of, original, ours, prepare

DATA = ROOT / "datasets" / "wordnet"
V2_FLAGS = ["--learned_mean_embed", "True", "--denoise", "True", "--denoise_rate", "0.5"]


def common(work: Path, steps: int) -> list[str]:
    return ["--dataset", "wn", "--data_dir", str(work / "data"), "--seq_len", "32", "--hidden_dim", "64",
            "--hidden_t_dim", "64", "--diffusion_steps", "1000", "--noise_schedule", "sqrt",
            "--schedule_sampler", "lossaware", "--batch_size", "64", "--microbatch", "64", "--ema_rate", "0.995",
            "--config_name", str(work / "bert_small"), "--vocab", str(work / "words.txt"), "--lr", "0.001",
            "--learning_steps", str(steps), "--save_interval", str(steps), "--seed", "102",
            "--log_interval", "100", *V2_FLAGS]


def train_both(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    theirs, mine = work / "trained_by_diffuseq_v2", work / "trained_here"
    ema = f"ema_0.995_{args.steps:06d}.pt"
    if not (theirs / ema).is_file():
        theirs.mkdir(exist_ok=True)
        original(args, args.diffuseq_v2, "train.py", common(work, args.steps) + [
            "--checkpoint_path", str(theirs), "--use_fp16", "True", "--resume_checkpoint", "none", "--notes", "e2e",
            "--eval_interval", "100000"], work / "train_diffuseq_v2.log")
    if not (mine / ema).is_file():
        ours("run_train.py", common(work, args.steps) + ["--checkpoint_path", str(mine), "--eval_interval", "0"],
             work / "train_here.log")
    return {"trained by DiffuSeq-v2's train.py": theirs / ema, "trained here": mine / ema}


def folder_copy(checkpoint: Path, target: Path) -> Path:
    """A copy of the checkpoint's folder (the checkpoint and its settings) for their decoders to write into."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path in checkpoint.parent.iterdir():
        if path.is_file() and (path == checkpoint or not path.name.endswith(".pt")):
            shutil.copy2(path, target / path.name)
    settings = json.loads((target / "training_args.json").read_text())
    settings["checkpoint_path"] = str(target)
    (target / "training_args.json").write_text(json.dumps(settings, indent=2))
    return target / checkpoint.name


def decode(args: argparse.Namespace, checkpoint: Path, out: Path, decoder: str, method: str) -> list[float]:
    """BLEU per decoding seed of one decoder ('theirs' or 'ours') and method ('solver_S' or 'ddpm')."""
    if len(list(out.rglob("seed*.json"))) < len(args.decode_seeds):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for seed in args.decode_seeds:
            if decoder == "theirs":
                copy = folder_copy(checkpoint, out / "checkpoint" / checkpoint.parent.name)
                (out / f"seed{seed}").mkdir()
                script = "sample_seq2seq.py" if method == "ddpm" else "sample_seq2seq_dpmSolver.py"
                step = "1000" if method == "ddpm" else method.split("_")[1]
                original(args, args.diffuseq_v2, script,
                         ["--drop-load-args", "--model_path", str(copy), "--step", step, "--split", "test",
                          "--batch_size", "200", "--seed2", str(seed), "--out_dir", str(out / f"seed{seed}")],
                         out / f"seed{seed}.log")
            else:
                flags = [] if method == "ddpm" else ["--sampler", "dpm-solver-v2", "--solver_steps",
                                                     method.split("_")[1]]
                ours("sample_seq2seq.py", ["--model_path", str(checkpoint), "--split", "test", "--batch_size",
                                           "200", "--seeds", str(seed), "--dtype", "fp32", "--out_dir",
                                           str(out / f"seed{seed}"), *flags], out / f"seed{seed}.log")
    return [score for seed in args.decode_seeds
            for score in bleu_of(next((out / f"seed{seed}").rglob("*.samples")))]


def cell(scores: list[float]) -> str:
    spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
    return f"{statistics.mean(scores):.4f} ± {spread:.4f} ({', '.join(f'{s:.4f}' for s in scores)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffuseq-v2", type=Path, required=True, help="a checkout of DiffuSeq's diffuseq-v2 branch")
    parser.add_argument("--original-python", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1000, help="training steps of both models")
    parser.add_argument("--decode_seeds", default="10,11,12")
    parser.add_argument("--solver_steps", default="10,2")
    parser.add_argument("--ddpm", action="store_true", help="also DDPM through all 1000 steps (about 20 min more)")
    args = parser.parse_args()
    args.decode_seeds = [int(s) for s in args.decode_seeds.split(",")]
    work = args.work.resolve()
    prepare(work, DATA)
    checkpoints = train_both(args, work)
    methods = [f"solver_{s}" for s in args.solver_steps.split(",")] + (["ddpm"] if args.ddpm else [])
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for label, checkpoint in checkpoints.items():
        for method in methods:
            row = results.setdefault(label, {}).setdefault(method, {})
            for decoder in ("theirs", "ours"):
                row[decoder] = decode(args, checkpoint, work / "decode" / checkpoint.parent.name / method / decoder,
                                      decoder, method)
    print(f"First 200 test pairs of datasets/wordnet, decoding seeds {args.decode_seeds}: BLEU mean ± sd "
          f"(per seed)\n")
    print("| checkpoint | decode | DiffuSeq-v2's decoder | this project's |")
    print("|---|---|---|---|")
    for label, rows in results.items():
        for method, row in rows.items():
            name = "DDPM, 1000 steps" if method == "ddpm" else f"DPM-Solver, {method.split('_')[1]} steps"
            print(f"| {label} | {name} | {cell(row['theirs'])} | {cell(row['ours'])} |")
    (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
