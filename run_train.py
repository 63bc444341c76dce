"""Train or post-train a DiffuSeq diffusion model (``python run_train.py --help``; also ``diffuseq-train``)."""

from diffuseq.commands.train import run

if __name__ == "__main__":
    run()
