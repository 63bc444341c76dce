"""Evaluate decoded outputs with DiffuSeq's metrics (``python scripts/eval_seq2seq.py --help``; also
``diffuseq-eval``): per seed file, then diversity or MBR across seeds; ``--folder`` is a decode folder, or an
output root whose decode folders are evaluated in turn."""

from diffuseq.commands.evaluate import run

if __name__ == "__main__":
    run()
