"""DPM-Solver++ (Lu et al. 2022), second-order multistep with data prediction, on any respaced grid.

The denoiser predicts x_0, which is what the "++" (data-prediction) form integrates. With
alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) and
h = lambda_s - lambda_t for a step from t to the next grid point s:

    x_s = (sigma_s / sigma_t) x_t - alpha_s (exp(-h) - 1) D

with D = x0_t on the first step (first order, which is DDIM) and on the last step, which goes
to the clean data (sigma = 0, so x = x0); otherwise the 2M correction from the previous
prediction x0_u, D = x0_t + (x0_t - x0_u) / (2 r), r = (lambda_t - lambda_u) / h (diffusers'
"midpoint" form). No noise is added; one network evaluation per step.
"""

from __future__ import annotations

import math

import torch

from .base import ReverseSampler
from .noise import ExampleNoise


class DPMSolverPlusPlusSampler(ReverseSampler):
    """DPM-Solver++(2M); set ``second_order = False`` for its first-order form (DDIM with eta 0).

    The previous step's x_0 prediction is the multistep state: forgotten at the first step of a chain.
    """

    name = "dpm++"
    second_order = True
    _previous: tuple[torch.Tensor, float] | None = None  # (x_0 prediction, lambda) of the last step

    def _alpha_sigma_lambda(self, index: int) -> tuple[float, float, float]:
        abar = float(self.process.alphas_cumprod[index])
        alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
        return alpha, sigma, math.log(alpha) - math.log(sigma)

    def _update(self, pred_x0: torch.Tensor, index: int, x_t: torch.Tensor,
                noise: ExampleNoise | None) -> torch.Tensor:
        if index == self.num_steps - 1:  # a chain starts
            self._previous = None
        if index == 0:  # to the clean data: sigma = 0, alpha = 1
            return pred_x0
        _, sigma_t, lambda_t = self._alpha_sigma_lambda(index)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(index - 1)
        h = lambda_s - lambda_t
        direction = pred_x0
        if self.second_order and self._previous is not None:
            previous, lambda_u = self._previous
            ratio = (lambda_t - lambda_u) / h
            direction = pred_x0 + (pred_x0 - previous) * (0.5 / ratio)
        self._previous = (pred_x0, lambda_t)
        return x_t * (sigma_s / sigma_t) - direction * (alpha_s * math.expm1(-h))
