"""Print the demo's result table from its output folder (decodes under decode/, evaluations under eval/).

    python scripts/demo_table.py OUT_DIR [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffuseq import metrics  # noqa: E402
from diffuseq.errors import run_cli  # noqa: E402
from diffuseq.report import add_speedups, format_table, load_row  # noqa: E402


def copy_baseline_bleu(decode_dir: Path) -> float:
    """BLEU of copying the source as the output, on the same lines as a decode."""
    first = sorted(p for p in decode_dir.glob("seed*.json"))[0]
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    scores = [metrics.sentence_bleu(metrics.clean_source(rec["source"]), metrics.clean_reference(rec["reference"]))
              for rec in lines]
    return sum(scores) / len(scores)


def samples_of(decode_dir: Path) -> Path:
    """The ``<checkpoint folder>/<checkpoint>.samples`` folder a decode wrote under ``decode_dir``."""
    return next(decode_dir.glob("*/*.samples"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    for eval_json in sorted((args.out_dir / "eval").glob("*.json")):
        model, decoding = eval_json.stem.split("__")
        rows.append(load_row(model, decoding, samples_of(args.out_dir / "decode" / eval_json.stem), eval_json))
    order = {"base": 0, "post-trained": 1}
    rows.sort(key=lambda r: (order.get(r.model, 2), -r.steps if r.decoding == "all" else r.steps, r.decoding))
    add_speedups(rows)
    print(format_table(rows, markdown=args.markdown))
    any_decode = samples_of(args.out_dir / "decode" / sorted((args.out_dir / "eval").glob("*.json"))[0].stem)
    print(f"\ncopy-the-source baseline BLEU on the same test lines: {copy_baseline_bleu(any_decode):.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
