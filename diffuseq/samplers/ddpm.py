"""DDPM ancestral sampling as DiffuSeq's ``p_sample``: the posterior mean plus fixed-large noise; for a
DiffuSeq-v2 model trained with ``--denoise``, then its discrete noise (tokens turned into the absorbing state)."""

from __future__ import annotations

import torch

from .base import ReverseSampler
from .noise import ExampleNoise


class DDPMSampler(ReverseSampler):
    """DiffuSeq's reverse step: noise with the fixed-large variance (``sigma_small``: the posterior
    variance), truncated to ``|z| <= top_p`` when ``top_p > 0``; none at t = 0.

    With ``denoise_rate`` r (a DiffuSeq-v2 model's, see ``_absorb``) each token of the new sample then becomes
    the absorbing state with probability r times that noise's standard deviation: r sqrt(beta_t) at respaced
    step t, 0 at t = 0 (v2's ``p_sample``; training's probability is r sqrt(1 - alpha_bar_t), another function
    of t).
    """

    name = "ddpm"
    absorbs = True

    def _update(self, pred_x0: torch.Tensor, index: int, x_t: torch.Tensor,
                noise: ExampleNoise | None) -> torch.Tensor:
        z = noise.draw(self.config.top_p) if index > 0 else torch.zeros_like(x_t)
        return self.process.ddpm_step(x_t, self._t(index, x_t), pred_x0, z, sigma_small=self.config.sigma_small)

    def _absorb(self, sample: torch.Tensor, index: int, absorbing: torch.Tensor,
                noise: ExampleNoise) -> torch.Tensor:
        """v2's absorbing draw: one uniform u per token from the example's generator, after the step's Gaussian
        noise; the token is absorbed where u < r std_t (in float32, as v2's Bernoulli). Nothing is drawn at t = 0,
        whose probability is 0."""
        if index == 0:
            return sample
        table = getattr(self.process, self.process.ddpm_log_variance_name(self.config.sigma_small))
        probability = torch.exp(0.5 * torch.tensor(table[index], dtype=torch.float32)) * self.config.denoise_rate
        absorbed = (noise.uniform() < probability).unsqueeze(-1)
        return torch.where(absorbed, absorbing.to(sample.dtype), sample)
