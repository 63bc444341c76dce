"""Train or post-train a DiffuSeq diffusion model.

    python run_train.py --data_dir datasets/wordnet --vocab train ...            # one process
    torchrun --nproc_per_node=4 run_train.py ...                                 # DDP (gloo on CPU, nccl on GPU)
    python -m torch.distributed.launch --nproc_per_node=4 --use_env run_train.py ...
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from diffuseq.config import parse_train_args  # noqa: E402
from diffuseq.errors import run_cli  # noqa: E402
from diffuseq.runtime import start_command  # noqa: E402


def main() -> int:
    rank = start_command()
    cfg = parse_train_args(sys.argv[1:])
    from diffuseq.train_loop import train

    folder = train(cfg)
    if rank == 0:
        logging.getLogger("run_train").info("done: checkpoints in %s", folder)
    return 0


if __name__ == "__main__":
    run_cli(main)
