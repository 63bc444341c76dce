"""Train or post-train a DiffuSeq diffusion model.

    python run_train.py --data_dir datasets/wordnet --vocab train ...            # one process
    torchrun --nproc_per_node=4 run_train.py ...                                 # DDP (gloo on CPU, nccl on GPU)
    python -m torch.distributed.launch --nproc_per_node=4 --use_env run_train.py ...

Stopped with Ctrl-C or SIGTERM, it saves a checkpoint and exits with 130 / 143; the same
command started again continues from it.
"""

from __future__ import annotations

import logging
import sys

from ..config import parse_train_args
from . import run_cli
from ..runtime import start_command


def main() -> int:
    rank = start_command()
    cfg = parse_train_args(sys.argv[1:])
    from ..training.setup import train

    trainer = train(cfg, restore_signal_handlers=False)  # torchrun repeats a Ctrl-C: it must not cut the exit
    log = logging.getLogger("run_train")
    if trainer.stopped_by:
        if rank == 0:
            log.warning("stopped at step %d by signal %d (checkpoint saved in %s); the same command continues it",
                        trainer.step, trainer.stopped_by, trainer.dir)
        return 128 + trainer.stopped_by
    if rank == 0:
        log.info("done: checkpoints in %s", trainer.dir)
    return 0


def run() -> None:
    """The ``diffuseq-train`` console script."""
    run_cli(main)
