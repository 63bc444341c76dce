"""Noise schedules: the betas of the forward process for T steps (pure numpy).

* ``sqrt`` (Diffusion-LM / DiffuSeq): alpha_bar(s) = 1 - sqrt(s + 1e-4).
* ``linear`` (DDPM, rescaled to T as in improved-DDPM).
* ``cosine`` (improved-DDPM): alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2) ** 2.
* DiffuSeq's truncated variants: ``trunc_cos`` (cos((s + 0.1) / 1.1 * pi / 2) ** 2, its first beta
  1 - alpha_bar(0)), ``trunc_lin`` (``linear`` + 0.01) and ``pw_lin`` (10 steps from
  ``trunc_lin``'s start down to ``linear``'s, then ``linear``).
* DiffuSeq-v2's ``warmup-decay``: ``sqrt``'s betas, but the last 10 % of them fall linearly from ``sqrt``'s value
  there to 1e-4 (so the last steps add little noise).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import UserError

NOISE_SCHEDULES = ("sqrt", "linear", "cosine", "trunc_cos", "trunc_lin", "pw_lin", "warmup-decay")
MAX_BETA = 0.999


def betas_for_alpha_bar(num_steps: int, alpha_bar: Callable[[float], float], max_beta: float = MAX_BETA) -> np.ndarray:
    """Discretise a continuous alpha_bar(s), s in [0, 1], into ``num_steps`` betas.

    beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta).
    """
    betas = []
    for i in range(num_steps):
        s1, s2 = i / num_steps, (i + 1) / num_steps
        betas.append(min(1 - alpha_bar(s2) / alpha_bar(s1), max_beta))
    return np.array(betas, dtype=np.float64)


def warmup_decay_betas(num_steps: int, warmup_ratio: float = 0.1) -> np.ndarray:
    """DiffuSeq-v2's ``warmup-decay``: W = max(1, int(warmup_ratio T)); ``sqrt``'s betas with the last W replaced
    by ``linspace(sqrt[-W], 1e-4, W)`` (v2 always uses the ratio 0.1)."""
    warmup = max(1, int(warmup_ratio * num_steps))
    sqrt = get_named_beta_schedule("sqrt", num_steps)
    return np.concatenate([sqrt[:-warmup], np.linspace(sqrt[-warmup], 0.0001, warmup)])


def get_named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """Return the float64 betas of schedule ``name`` for ``num_steps`` diffusion steps."""
    if num_steps < 1:
        raise UserError(f"the number of diffusion steps must be positive, got {num_steps}")
    if name == "sqrt":
        return betas_for_alpha_bar(num_steps, lambda s: 1 - math.sqrt(s + 0.0001))
    if name == "warmup-decay":
        return warmup_decay_betas(num_steps)
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if name == "cosine":
        return betas_for_alpha_bar(num_steps, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)
    scale = 1000 / num_steps
    if name == "trunc_cos":
        def alpha_bar(s: float) -> float:
            return float(np.cos((s + 0.1) / 1.1 * np.pi / 2) ** 2)

        first = min(1 - alpha_bar(0), MAX_BETA)
        return np.append(first, betas_for_alpha_bar(num_steps, alpha_bar)[:-1])
    if name == "trunc_lin":
        return np.linspace(scale * 0.0001 + 0.01, scale * 0.02 + 0.01, num_steps, dtype=np.float64)
    if name == "pw_lin":
        if num_steps <= 10:
            raise UserError(f"the pw_lin schedule needs more than 10 diffusion steps, got {num_steps}")
        return np.concatenate([np.linspace(scale * 0.0001 + 0.01, scale * 0.0001, 10, dtype=np.float64),
                               np.linspace(scale * 0.0001, scale * 0.02, num_steps - 10, dtype=np.float64)])
    raise UserError(f"unknown noise schedule {name!r}; choose one of {', '.join(NOISE_SCHEDULES)}")
