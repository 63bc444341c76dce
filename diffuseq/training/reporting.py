"""What a training run reports: the progress bar, the loss averaged over each logging window,
validation losses and, when ``--wandb`` asks for it, a Weights & Biases run.

Every rank feeds and logs the window (its means are averaged across ranks); only rank 0 prints
and writes to Weights & Biases.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import torch

from .. import dist_util
from ..config import TrainConfig
from ..errors import UserError

logger = logging.getLogger(__name__)


class TrainingReport:
    """The reporting of one training run, from ``start_step`` to ``cfg.learning_steps``."""

    def __init__(self, cfg: TrainConfig, start_step: int, is_main: bool, device: torch.device) -> None:
        self.cfg, self.is_main, self.device = cfg, is_main, device
        self.start_step, self.started = start_step, time.perf_counter()
        self.wandb_run = _maybe_wandb(cfg) if is_main else None
        self.bar = _progress(start_step, cfg.learning_steps) if is_main else None
        self._reset()

    def _reset(self) -> None:
        self.window: dict[str, torch.Tensor] = {}
        self.window_steps, self.window_start = 0, time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add one completed step's mean loss terms to the window (on the device: no host sync)."""
        self.window_steps += 1
        for key, value in terms.items():
            if key != "nll":
                self.window[key] = self.window.get(key, 0.0) + value
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, lr: float, nll: torch.Tensor | None) -> None:
        """Log the window's means (across ranks) and start a new window; every rank must call it."""
        keys = sorted(self.window)
        values = dist_util.all_reduce_mean(torch.stack([torch.as_tensor(self.window[k], dtype=torch.float32,
                                                                         device=self.device) for k in keys]))
        means = {k: float(v) / self.window_steps for k, v in zip(keys, values.cpu())}
        if nll is not None:
            means["nll"] = float(dist_util.all_reduce_mean(nll.float().reshape(1)).cpu())
        seconds = time.perf_counter() - self.window_start
        if self.is_main:
            samples_per_s = self.window_steps * self.cfg.batch_size / max(seconds, 1e-9)
            logger.info("%s | %s | lr %.3g | %.1f samples/s | %s", progress(step, self.cfg.learning_steps),
                        " ".join(f"{k} {v:.4f}" for k, v in means.items()), lr, samples_per_s,
                        timing(step - self.start_step, self.cfg.learning_steps - step,
                               time.perf_counter() - self.started))
            if self.wandb_run is not None:
                self.wandb_run.log({**{f"train/{k}": v for k, v in means.items()}, "lr": lr,
                                    "samples_per_s": samples_per_s}, step=step)
        self._reset()

    def validation(self, step: int, losses: dict[str, float]) -> None:
        """Report the validation losses (rank 0)."""
        if not self.is_main:
            return
        logger.info("step %d validation: %s", step, " ".join(f"{k} {v:.4f}" for k, v in sorted(losses.items())))
        if self.wandb_run is not None:
            self.wandb_run.log({f"valid/{k}": v for k, v in losses.items()}, step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def progress(step: int, total: int) -> str:
    """``step 100/2000 (5.0%)``."""
    return f"step {step}/{total} ({100 * step / max(total, 1):.1f}%)"


def clock(seconds: float) -> str:
    """``1:02:03`` (hours:minutes:seconds) or ``02:03``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def timing(done: int, left: int, elapsed: float) -> str:
    """``elapsed 02:03, ETA 40:00``: the time since the run (re)started and the rest at its average pace."""
    eta = clock(elapsed / done * left) if done > 0 else "?"
    return f"elapsed {clock(elapsed)}, ETA {eta}"


def _progress(start: int, total: int):
    """A tqdm bar on an interactive terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _maybe_wandb(cfg: TrainConfig) -> Any:
    """A Weights & Biases run when ``--wandb`` asks for one, else None."""
    if not cfg.wandb:
        return None
    try:
        import wandb
    except ImportError:
        raise UserError("`wandb` needs the wandb package: pip install 'diffuseq-bridge[wandb]'") from None
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "diffuseq-bridge"), config=vars(cfg),
                      name=cfg.notes or None)
