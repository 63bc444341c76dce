"""DDPM ancestral sampling as DiffuSeq's ``p_sample``: the posterior mean plus fixed-large noise."""

from __future__ import annotations

import torch

from .base import ReverseSampler
from .noise import ExampleNoise


class DDPMSampler(ReverseSampler):
    """DiffuSeq's reverse step: noise with the fixed-large variance (``sigma_small``: the posterior
    variance), truncated to ``|z| <= top_p`` when ``top_p > 0``; none at t = 0."""

    name = "ddpm"

    def _update(self, pred_x0: torch.Tensor, index: int, x_t: torch.Tensor,
                noise: ExampleNoise | None) -> torch.Tensor:
        z = noise.draw(self.config.top_p) if index > 0 else torch.zeros_like(x_t)
        return self.process.ddpm_step(x_t, self._t(index, x_t), pred_x0, z, sigma_small=self.config.sigma_small)
