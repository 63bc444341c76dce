"""Time scripts/eval_seq2seq.py and check it against a literal re-run of DiffuSeq's evaluation loop.

    python bench/eval_bench.py                                   # time diversity and --mbr on both folders
    python bench/eval_bench.py --check 300                       # + compare the first 300 inputs to NLTK
    python bench/eval_bench.py --folders DIR1 DIR2 --check 0

The reference is DiffuSeq's own code path (NLTK ``sentence_bleu`` with method4, rouge-score's
``RougeScorer(['rougeL'])`` in place of torchmetrics, ``np.argmax``/``np.mean`` as DiffuSeq): slow,
hence the subsample. The data folders are read in place, never copied.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from diffuseq import metrics  # noqa: E402

DEFAULT_FOLDERS = ["/work/shared/data/generation_cases/qqp_20", "/work/shared/data/generation_cases/ts-20"]


def time_script(folder: str, extra: list[str]) -> tuple[float, dict]:
    """Run the evaluation script once; return its wall time and its JSON output."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        cmd = [sys.executable, os.path.join(ROOT, "scripts", "eval_seq2seq.py"), "--folder", folder,
               "--json", out, "--no_progress", *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
        with open(out) as fh:
            return wall, json.load(fh)


def reference_check(folder: str, n: int) -> None:
    """Compare per-sentence scores, self-BLEU, div-4 and MBR choices on the first ``n`` inputs."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_score import rouge_scorer

    smooth = SmoothingFunction().method4
    scorer = rouge_scorer.RougeScorer(["rougeL"])

    def get_bleu(recover: str, reference: str) -> float:  # DiffuSeq's get_bleu
        return sentence_bleu([reference.split()], recover.split(), smoothing_function=smooth)

    def distinct(texts: list[str], n: int) -> float:  # distinct n-grams / n-grams, the plain way
        grams = [g for text in texts for g in zip(*(text.split()[i:] for i in range(n)))]
        return len(set(grams)) / len(grams) if grams else 0

    files = sorted(glob.glob(os.path.join(folder, "*.json")))
    recs, refs = [], []
    for path in files:
        with open(path) as fh:
            rows = [json.loads(line) for _, line in zip(range(n), fh)]
        recs.append([metrics.clean_recover(r["recover"]) for r in rows])
        refs.append([metrics.clean_reference(r["reference"]) for r in rows])
    t0 = time.perf_counter()
    ev_mbr = metrics.evaluate(recs, refs, mbr=True, workers=1, progress=False)
    ev_div = metrics.evaluate(recs, refs, diversity=True, workers=1, progress=False)
    t_fast = time.perf_counter() - t0

    t0 = time.perf_counter()
    worst = {"bleu": 0.0, "rougeL": 0.0, "dist1": 0.0}
    for f in range(len(files)):
        for i in range(len(recs[f])):
            b = get_bleu(recs[f][i], refs[f][i])
            r = scorer.score(refs[f][i], recs[f][i])["rougeL"].fmeasure
            d = distinct([recs[f][i]], 1)
            worst["bleu"] = max(worst["bleu"], abs(b - ev_mbr.bleu[f, i]))
            worst["rougeL"] = max(worst["rougeL"], abs(r - ev_mbr.rougeL[f, i]))
            worst["dist1"] = max(worst["dist1"], abs(d - ev_mbr.dist1[f, i]))
    same_choice = sb_worst = d4_worst = 0.0
    for i in range(len(recs[0])):
        cands = [recs[f][i] for f in range(len(files))]
        mat = [[get_bleu(a, b) for b in cands] for a in cands]  # DiffuSeq's selectBest
        for j in range(len(cands)):
            mat[j][j] = 0
        same_choice += int(np.argmax(np.sum(mat, -1))) == int(ev_mbr.mbr_choice[i])
        pairs = [get_bleu(cands[a], cands[b]) for a in range(len(cands)) for b in range(a + 1, len(cands))]
        sb_worst = max(sb_worst, abs(float(np.mean(pairs or [0])) - ev_div.self_bleu[i]))
        d4_worst = max(d4_worst, abs(distinct(cands, 4) - ev_div.div4[i]))
    t_ref = time.perf_counter() - t0
    print(f"  check on {len(recs[0])} inputs x {len(files)} files: max |diff| BLEU {worst['bleu']:.1e}, "
          f"ROUGE-L {worst['rougeL']:.1e}, dist-1 {worst['dist1']:.1e}, self-BLEU {sb_worst:.1e}, "
          f"div-4 {d4_worst:.1e}; same MBR choice {int(same_choice)}/{len(recs[0])}; "
          f"time fast (1 process) {t_fast:.2f}s vs reference {t_ref:.2f}s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folders", nargs="+", default=DEFAULT_FOLDERS)
    p.add_argument("--check", type=int, default=0, help="inputs to compare against the NLTK reference (0: none)")
    args = p.parse_args()
    for folder in args.folders:
        print(folder)
        for label, extra in (("diversity", []), ("mbr", ["--mbr"])):
            wall, res = time_script(folder, extra)
            part = res["diversity"] if label == "diversity" else res["mbr"]
            print(f"  {label:9s} wall {wall:6.2f}s  {json.dumps(part)}")
        if args.check:
            reference_check(folder, args.check)


if __name__ == "__main__":
    main()
