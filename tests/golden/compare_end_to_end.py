"""End-to-end comparison with the original code on a small task (run by hand; about an hour on 2 cores).

    python tests/golden/compare_end_to_end.py --diffuseq /path/to/DiffuSeq --bridge-gap /path/to/Bridge_Gap_Diffusion \\
        --original-python /path/to/venv/bin/python --work /tmp/e2e

1. DiffuSeq's ``train.py`` trains a small model on the first 20,000 pairs of ``datasets/wordnet``
   (a word-list vocabulary, 3 layers of 128, T = 1000, 1,000 steps).
2. That checkpoint is post-trained for 200 steps with the paper's flags (``l2_noise_random``, lambda -2,
   step 10, noise 0.05, ``--lr 5e-4``), once by Bridge-Gap's ``train.py`` and once by this project's
   ``run_train.py``, with each of the post-training seeds.
3. This project trains a base model of the same size (``--vocab train``).
4. Every checkpoint is decoded with ``adp_20`` (first 200 test pairs, each decoding seed) by
   Bridge-Gap's ``sample_seq2seq.py`` and by this project's, and scored with DiffuSeq's BLEU.

The original scripts run through ``run_original.py`` (CPU shims, their files untouched) with
``--original-python``, a Python that has their dependencies. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from diffuseq import metrics  # noqa: E402

TRAIN_PAIRS, TEST_PAIRS = 20000, 200
MODEL = {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 512}


def run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "OPENAI_LOGDIR": str(log.parent / (log.stem + "_logs"))}
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env).returncode
    if code:
        sys.exit(f"failed ({code}): {' '.join(map(str, cmd))}; see {log}")


def prepare(work: Path, source: Path = ROOT / "datasets" / "wordnet", train_pairs: int = TRAIN_PAIRS) -> None:
    """``work/data`` (the first ``train_pairs`` training pairs of ``source``, the first 200 of valid and
    test), ``work/words.txt`` (DiffuSeq's word-list vocabulary: every word seen 3 times in training) and
    ``work/bert_small`` (the encoder's BERT config)."""
    data = work / "data"
    if data.is_dir():
        return
    data.mkdir(parents=True)
    counts: collections.Counter = collections.Counter()
    for split, n in (("train", train_pairs), ("valid", TEST_PAIRS), ("test", TEST_PAIRS)):
        lines = (source / f"{split}.jsonl").read_text().splitlines()[:n]
        (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        if split == "train":
            for line in lines:
                pair = json.loads(line)
                counts.update(pair["src"].split() + pair["trg"].split())
    words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= 3]
    (work / "words.txt").write_text("\n".join(words) + "\n")
    (work / "bert_small").mkdir()
    (work / "bert_small" / "config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "model_type": "bert", **MODEL, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
        "layer_norm_eps": 1e-12, "type_vocab_size": 2, "vocab_size": 30522, "initializer_range": 0.02}))


def original(args, repo: Path, script: str, flags: list[str], log: Path) -> None:
    run([args.original_python, str(HERE / "run_original.py"), str(repo), script, *flags], log)


def ours(script: str, flags: list[str], log: Path) -> None:
    run([sys.executable, str(ROOT / script), *flags], log)


def bleu_of(folder: Path) -> list[float]:
    """DiffuSeq's BLEU (mean sentence BLEU) of every seed file in a decode folder."""
    scores = []
    for path in sorted(folder.glob("seed*.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        recs = [metrics.clean_recover(r["recover"]) for r in rows]
        refs = [metrics.clean_reference(r["reference"]) for r in rows]
        scores.append(metrics.evaluate([recs], [refs], workers=1, progress=False).file_summary(0).bleu)
    return scores


def decode_both(args, checkpoint: Path, work: Path, label: str, decoders: tuple[str, ...]) -> dict[str, list[float]]:
    out = {}
    for decoder in decoders:
        out_dir = work / "decode" / label / decoder
        samples = out_dir / checkpoint.parent.name / f"{checkpoint.name}.samples"
        if not list(samples.glob("seed*.json")) or len(list(samples.glob("seed*.json"))) < len(args.decode_seeds):
            out_dir.mkdir(parents=True, exist_ok=True)
            for seed in args.decode_seeds:
                flags = ["--model_path", str(checkpoint), "--step", "1000", "--decode_respacing", "adp_20",
                         "--split", "test", "--batch_size", "100", "--seed2", str(seed), "--out_dir", str(out_dir)]
                if decoder == "bridge_gap":
                    original(args, args.bridge_gap, "sample_seq2seq.py", flags, out_dir / f"seed{seed}.log")
                else:
                    ours("sample_seq2seq.py", flags, out_dir / f"seed{seed}.log")
        out[decoder] = bleu_of(samples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffuseq", type=Path, required=True)
    parser.add_argument("--bridge-gap", type=Path, required=True)
    parser.add_argument("--original-python", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--post_seeds", default="109,110,111")
    parser.add_argument("--decode_seeds", default="10,11,12")
    args = parser.parse_args()
    args.post_seeds = [int(s) for s in args.post_seeds.split(",")]
    args.decode_seeds = [int(s) for s in args.decode_seeds.split(",")]
    work = args.work.resolve()
    prepare(work)
    common = ["--dataset", "wn", "--data_dir", str(work / "data"), "--seq_len", "32", "--hidden_dim", "64",
              "--hidden_t_dim", "64", "--diffusion_steps", "1000", "--noise_schedule", "sqrt",
              "--schedule_sampler", "lossaware", "--batch_size", "64", "--microbatch", "64", "--ema_rate", "0.99",
              "--config_name", str(work / "bert_small")]

    base = work / "ds_base"
    if not (base / "ema_0.99_001000.pt").is_file():
        base.mkdir(exist_ok=True)
        original(args, args.diffuseq, "train.py", common + [
            "--checkpoint_path", str(base), "--vocab", str(work / "words.txt"), "--lr", "0.001",
            "--learning_steps", "1000", "--save_interval", "1000", "--seed", "102", "--resume_checkpoint", "none",
            "--notes", "e2e", "--log_interval", "100", "--eval_interval", "100000"], work / "ds_base.log")
    post_flags = ["--simi_penalty", "l2_noise_random", "--simi_lambda", "-2", "--simi_step", "10",
                  "--simi_noise", "0.05", "--lr", "0.0005", "--learning_steps", "1200", "--save_interval", "1200",
                  "--resume_checkpoint", str(base / "ema_0.99_001000.pt"), "--vocab", str(work / "words.txt")]
    results: dict[str, dict[str, list[float]]] = {}
    results["DiffuSeq base (1000 steps)"] = decode_both(args, base / "ema_0.99_001000.pt", work, "ds_base",
                                                        ("bridge_gap", "ours"))
    for seed in args.post_seeds:
        bg = work / f"bg_post_{seed}"
        if not (bg / "ema_0.99_001200.pt").is_file():
            bg.mkdir(exist_ok=True)
            original(args, args.bridge_gap, "train.py", common + post_flags + [
                "--checkpoint_path", str(bg), "--seed", str(seed), "--notes", "post", "--log_interval", "100",
                "--eval_interval", "100000"], work / f"bg_post_{seed}.log")
        mine = work / f"ours_post_{seed}"
        if not (mine / "ema_0.99_001200.pt").is_file():
            ours("run_train.py", common + post_flags + [
                "--checkpoint_path", str(mine), "--seed", str(seed), "--log_interval", "100", "--eval_interval", "0"],
                 work / f"ours_post_{seed}.log")
        results[f"post-trained by Bridge-Gap, seed {seed}"] = decode_both(
            args, bg / "ema_0.99_001200.pt", work, f"bg_post_{seed}", ("bridge_gap", "ours"))
        results[f"post-trained here, seed {seed}"] = decode_both(
            args, mine / "ema_0.99_001200.pt", work, f"ours_post_{seed}", ("bridge_gap", "ours"))

    own = work / "ours_base"
    if not (own / "ema_0.99_001000.pt").is_file():
        ours("run_train.py", common + ["--checkpoint_path", str(own), "--vocab", "train", "--vocab_size", "8000",
                                       "--lr", "0.001", "--learning_steps", "1000", "--save_interval", "1000",
                                       "--seed", "102", "--log_interval", "100", "--eval_interval", "0"],
             work / "ours_base.log")
    results["trained here (--vocab train), 1000 steps"] = decode_both(args, own / "ema_0.99_001000.pt", work,
                                                                       "ours_base", ("bridge_gap", "ours"))

    def cell(scores: list[float]) -> str:
        if not scores:
            return "-"
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        return f"{statistics.mean(scores):.4f} ± {spread:.4f} ({', '.join(f'{s:.4f}' for s in scores)})"

    print(f"adp_20, first {TEST_PAIRS} test pairs, decoding seeds {args.decode_seeds}: mean ± sd (per seed)\n")
    print("| checkpoint | Bridge-Gap's sample_seq2seq.py | this project's sample_seq2seq.py |")
    print("|---|---|---|")
    for label, row in results.items():
        print(f"| {label} | {cell(row.get('bridge_gap', []))} | {cell(row.get('ours', []))} |")
    (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
