"""Decode with a trained checkpoint (``python sample_seq2seq.py --help``; also ``diffuseq-decode``)."""

from diffuseq.commands.decode import run

if __name__ == "__main__":
    run()
