"""The Gaussian diffusion process over word embeddings, with partial noising.

The process knows the schedule and its derived coefficients, how to noise
(``q_sample``), the posterior ``q(x_{t-1} | x_t, x_0)`` and the two reverse
steps (DDPM and DDIM). It knows nothing about networks or losses: a reverse
step takes the network's x_0 prediction as an argument.

Partial noising: positions where ``mask == 0`` (the source and its ``[SEP]``)
always hold their clean value.

DiffuSeq-v2 (``q_sample`` with a ``mean``): the noise on target positions is centred on a learned
absorbing state m, and with ``absorb`` chosen target tokens are m itself (its discrete noise, each
token with probability ``absorb_probs``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .schedules import get_named_beta_schedule


class GaussianDiffusion:
    """A discrete-time Gaussian process with ``len(betas)`` steps.

    ``timestep_map[i]`` is the original timestep of step ``i`` (the identity
    unless the process was respaced); the network is always called with
    ``timestep_map[t] * 1000 / original_num_steps``.
    """

    def __init__(self, betas: np.ndarray, timestep_map: Sequence[int] | None = None,
                 original_num_steps: int | None = None) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.num_timesteps = len(betas)
        self.original_num_steps = original_num_steps or self.num_timesteps
        self.timestep_map = np.asarray(timestep_map if timestep_map is not None else np.arange(self.num_timesteps),
                                       dtype=np.int64)
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance at t = 0 is 0; use the t = 1 value there so the log is finite (improved-diffusion).
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]) if self.num_timesteps > 1
            else self.posterior_variance.clip(min=1e-20))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        # DiffuSeq's reverse-step variance ("fixed large"): beta_t, with the posterior variance of t = 1 at
        # t = 0 (where no noise is added). One step has only t = 0; its value is never used.
        self.fixed_large_log_variance = np.log(
            np.append(self.posterior_variance[1], betas[1:]) if self.num_timesteps > 1 else betas)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self._tensors: dict[tuple[str, torch.device], torch.Tensor] = {}

    @classmethod
    def from_schedule(cls, noise_schedule: str, num_steps: int) -> "GaussianDiffusion":
        """The full process of ``num_steps`` steps of a named schedule."""
        return cls(get_named_beta_schedule(noise_schedule, num_steps))

    # -- coefficient lookup -------------------------------------------------

    def _coef(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """``getattr(self, name)[t]`` as a float32 tensor broadcastable to ``ndim`` dimensions."""
        key = (name, t.device)
        table = self._tensors.get(key)
        if table is None:
            table = torch.as_tensor(getattr(self, name), dtype=torch.float32, device=t.device)
            self._tensors[key] = table
        return table[t].reshape(t.shape + (1,) * (ndim - t.dim()))

    def scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The float timestep the network sees: the original step, rescaled to [0, 1000)."""
        key = ("timestep_map", t.device)
        table = self._tensors.get(key)
        if table is None:
            table = torch.as_tensor(self.timestep_map, device=t.device)
            self._tensors[key] = table
        return table[t].float() * (1000.0 / self.original_num_steps)

    # -- forward process ----------------------------------------------------

    def q_mean(self, x_start: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_t | x_0)."""
        return self._coef("sqrt_alphas_cumprod", t, x_start.dim()) * x_start

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 mask: torch.Tensor | None = None, mean: torch.Tensor | None = None,
                 absorb: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0); positions with ``mask == 0`` keep ``x_start``.

        DiffuSeq-v2: with ``mean`` m ([D]) x_t = sqrt(ab_t) (x_0 - m) + sqrt(1 - ab_t) noise + m on the target
        positions (``mask``; every position without one), and the tokens ``absorb`` names (bool [B, N]) are m.
        """
        sqrt_ab = self._coef("sqrt_alphas_cumprod", t, x_start.dim())
        sqrt_one_minus_ab = self._coef("sqrt_one_minus_alphas_cumprod", t, x_start.dim())
        if mean is None:
            if absorb is not None:
                raise ValueError("absorbing tokens needs the mean embedding they are absorbed into")
            x_t = sqrt_ab * x_start + sqrt_one_minus_ab * noise
        else:  # v2's order of operations
            x_t = (sqrt_ab * (x_start - mean) + sqrt_one_minus_ab * noise
                   + (mean if mask is None else mean * mask.unsqueeze(-1)))
            if absorb is not None:
                x_t = torch.where(absorb.unsqueeze(-1), mean, x_t)
        if mask is None:
            return x_t
        return torch.where(mask.unsqueeze(-1).bool(), x_t, x_start)

    def absorb_probs(self, t: torch.Tensor, rate: float) -> torch.Tensor:
        """DiffuSeq-v2's probability that q_sample absorbs a token at step t: rate sqrt(1 - ab_t), float32 [B, 1]
        (the same for every token of an example)."""
        return self._coef("sqrt_one_minus_alphas_cumprod", t, 2) * rate

    def q_posterior_mean(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0)."""
        return (self._coef("posterior_mean_coef1", t, x_t.dim()) * x_start
                + self._coef("posterior_mean_coef2", t, x_t.dim()) * x_t)

    # -- reverse steps ------------------------------------------------------

    @staticmethod
    def ddpm_log_variance_name(sigma_small: bool) -> str:
        """The table of log variances of DDPM's noise: DiffuSeq's fixed-large one, or the (clipped) posterior's."""
        return "posterior_log_variance_clipped" if sigma_small else "fixed_large_log_variance"

    def ddpm_step(self, x_t: torch.Tensor, t: torch.Tensor, pred_x0: torch.Tensor,
                  noise: torch.Tensor, sigma_small: bool = False) -> torch.Tensor:
        """One ancestral step: the posterior mean plus noise (none at t = 0).

        The noise has DiffuSeq's fixed-large variance, or with ``sigma_small`` the (clipped)
        posterior variance. Computed in the order of DiffuSeq's ``p_sample``, so the results
        are bitwise equal.
        """
        mean = self.q_posterior_mean(pred_x0, x_t, t)
        log_var = self._coef(self.ddpm_log_variance_name(sigma_small), t, x_t.dim())
        nonzero = (t != 0).float().reshape(t.shape + (1,) * (x_t.dim() - t.dim()))
        return mean + nonzero * torch.exp(0.5 * log_var) * noise

    def ddim_step(self, x_t: torch.Tensor, t: torch.Tensor, pred_x0: torch.Tensor,
                  noise: torch.Tensor, eta: float = 0.0) -> torch.Tensor:
        """One DDIM step (Song et al.) with stochasticity ``eta`` (0 = deterministic), as DiffuSeq's ``ddim_sample``."""
        ndim = x_t.dim()
        eps = ((self._coef("sqrt_recip_alphas_cumprod", t, ndim) * x_t - pred_x0)
               / self._coef("sqrt_recipm1_alphas_cumprod", t, ndim))
        abar = self._coef("alphas_cumprod", t, ndim)
        abar_prev = self._coef("alphas_cumprod_prev", t, ndim)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        mean = pred_x0 * torch.sqrt(abar_prev) + torch.sqrt((1 - abar_prev - sigma ** 2).clamp(min=0)) * eps
        nonzero = (t != 0).float().reshape(t.shape + (1,) * (ndim - t.dim()))
        return mean + nonzero * sigma * noise
