"""DDIM (Song et al.) as DiffuSeq's ``ddim_sample``, on any respaced grid."""

from __future__ import annotations

import torch

from .base import ReverseSampler
from .noise import ExampleNoise


class DDIMSampler(ReverseSampler):
    """Deterministic for ``eta = 0``; ``eta`` in (0, 1] adds noise (1: DDPM's posterior variance)."""

    name = "ddim"

    def _update(self, pred_x0: torch.Tensor, index: int, x_t: torch.Tensor,
                noise: ExampleNoise | None) -> torch.Tensor:
        eta = self.config.eta
        z = noise.draw() if index > 0 and eta > 0 else torch.zeros_like(x_t)
        return self.process.ddim_step(x_t, self._t(index, x_t), pred_x0, z, eta=eta)
