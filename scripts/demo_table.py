"""Print the demo's result table from its output folder (each decode and its scores under decode/<model>__<decoding>/).

    python scripts/demo_table.py OUT_DIR [--markdown]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffuseq import metrics
from diffuseq.commands import run_cli
from diffuseq.report import add_speedups, format_table, load_row, samples_of


def copy_baseline_bleu(decode_dir: Path) -> float:
    """BLEU of copying the source as the output, on the same lines as a decode."""
    first = sorted(p for p in decode_dir.glob("seed*.json"))[0]
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    scores = [metrics.sentence_bleu(metrics.clean_source(rec["source"]), metrics.clean_reference(rec["reference"]))
              for rec in lines]
    return sum(scores) / len(scores)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    for decode_dir in sorted(p for p in (args.out_dir / "decode").iterdir() if p.is_dir()):
        model, decoding = decode_dir.name.split("__")
        samples = samples_of(decode_dir)
        rows.append(load_row(model, decoding, samples, next(samples.glob("*.eval.json"))))
    order = {"base": 0, "post-trained": 1}
    rows.sort(key=lambda r: (order.get(r.model, 2), -r.steps if r.decoding == "all" else r.steps, r.decoding))
    add_speedups(rows)
    print(format_table(rows, markdown=args.markdown))
    any_decode = samples_of(next(p for p in (args.out_dir / "decode").iterdir() if p.is_dir()))
    print(f"\ncopy-the-source baseline BLEU (0-1) on the same test lines: {copy_baseline_bleu(any_decode):.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
