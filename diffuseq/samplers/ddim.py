"""DDIM (Song et al.) as DiffuSeq's ``ddim_sample``, on any respaced grid."""

from __future__ import annotations

import torch

from .base import ReverseSampler, SamplerConfig


class DDIMSampler(ReverseSampler):
    """Deterministic for ``eta = 0``; ``eta`` in (0, 1] adds noise (1: DDPM's posterior variance)."""

    name = "ddim"

    def __init__(self, config: SamplerConfig) -> None:
        if config.eta == -1:  # --sampler ddim with DDPM's default: DDIM with eta 0
            config.eta = 0.0
        super().__init__(config)

    def uses_noise(self, index: int) -> bool:
        return index > 0 and self.config.eta > 0

    def step(self, pred_x0: torch.Tensor, index: int, x_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.process.ddim_step(x_t, self._t(index, x_t), pred_x0, noise, eta=self.config.eta)
