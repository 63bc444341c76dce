"""The Distance Penalty of Tang et al. (2023): the neighbour step t' of each example and the penalty.

For an example at step t the penalty compares the predictions at t and at a
neighbour t':

* ``l2`` / ``cosine``: t' = t +- ``simi_step`` (direction 50/50), clamped to [0, T-1]; the
  penalty is off where t' lands on 0 or T-1.
* ``kl``: the teacher t' = t - ``simi_step``, clamped and switched off the same way.
* ``l2_noise``: a direction (down/up, 50/50), then the farthest step on that side whose
  noise level sigma = sqrt(1 - alpha_bar) is within ``simi_noise`` of t's.
* ``l2_noise_random`` (the paper's setting): same direction, then t' uniform among the
  steps on that side inside the window, t excluded.

For the noise variants the penalty is off (t' = t) where the drawn side holds no
step besides t, or where the window reaches the end of the schedule on that side.
The windows are computed once per schedule; sampling is vectorised over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.process import GaussianDiffusion
from ..errors import UserError

PENALTIES = ("l2", "l2_noise", "l2_noise_random", "cosine", "kl")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first."""
    return x.mean(dim=tuple(range(1, x.dim())))




def noise_windows(alphas_cumprod: np.ndarray, simi_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """lo[t], hi[t]: the smallest / largest step s with |sigma[s] - sigma[t]| <= ``simi_noise`` (int64, length T).

    sigma = sqrt(1 - alpha_bar) is nondecreasing in s, so the steps within ``simi_noise`` of
    step t form a contiguous window around t. searchsorted gives a first guess; a vectorised
    bisection on the exact predicate then settles the edges, so ties at the threshold agree
    with a brute-force search bit for bit (O(T log T), no loop over T).
    """
    if not simi_noise >= 0:
        raise UserError(f"--simi_noise must be a non-negative number, got {simi_noise}")
    sigma = np.sqrt(1.0 - np.asarray(alphas_cumprod, dtype=np.float64))
    if sigma.ndim != 1 or not np.all(np.isfinite(sigma)):
        raise UserError("alphas_cumprod must be a 1-D array of values in [0, 1]")
    if np.any(np.diff(sigma) < 0):
        raise UserError("the noise level of this schedule is not monotone; noise windows are undefined")
    steps = np.arange(len(sigma), dtype=np.int64)
    guess_lo = np.minimum(np.searchsorted(sigma, sigma - simi_noise, side="left"), steps)
    guess_hi = np.maximum(np.searchsorted(sigma, sigma + simi_noise, side="right") - 1, steps)

    def inside(s: np.ndarray) -> np.ndarray:
        return np.abs(sigma[s] - sigma) <= simi_noise

    # lo: the first s in [0, t] inside (inside(t) holds; the predicate is monotone on [0, t]).
    # Search [0, guess_lo] if guess_lo is inside, else (guess_lo, t].
    ok = inside(guess_lo)
    lo, right = np.where(ok, 0, guess_lo + 1), np.where(ok, guess_lo, steps)
    while np.any(lo < right):
        mid = (lo + right) // 2
        hit = inside(mid)
        right, lo = np.where(hit, mid, right), np.where(hit, lo, mid + 1)
    # hi: the last s in [t, T-1] inside, mirrored.
    ok = inside(guess_hi)
    left, hi = np.where(ok, guess_hi, steps), np.where(ok, len(sigma) - 1, guess_hi - 1)
    while np.any(left < hi):
        mid = (left + hi + 1) // 2
        hit = inside(mid)
        left, hi = np.where(hit, mid, left), np.where(hit, hi, mid - 1)
    return lo.astype(np.int64), hi.astype(np.int64)


class NeighbourDraw:
    """Draws the neighbour step t' for a batch of t; ``draw`` returns (t', active)."""

    def __init__(self, variant: str, alphas_cumprod: np.ndarray, simi_step: int = 10,
                 simi_noise: float = 0.05) -> None:
        if variant not in PENALTIES:
            raise UserError(f"unknown distance penalty {variant!r}; choose one of: {', '.join(PENALTIES)}")
        if variant in ("l2", "cosine", "kl") and simi_step < 1:
            raise UserError(f"--simi_step must be positive, got {simi_step}")
        if variant.startswith("l2_noise") and not simi_noise > 0:
            raise UserError(f"--simi_noise must be positive, got {simi_noise}")
        self.variant = variant
        self.num_timesteps = len(alphas_cumprod)
        self.simi_step = simi_step
        lo, hi = noise_windows(alphas_cumprod, simi_noise)
        self._windows = {"cpu": (torch.from_numpy(lo), torch.from_numpy(hi))}

    def windows(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (lo, hi) tables on ``device`` (moved once)."""
        key = str(device)
        if key not in self._windows:
            lo, hi = self._windows["cpu"]
            self._windows[key] = (lo.to(device), hi.to(device))
        return self._windows[key]

    def draw(self, t: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour steps of ``t`` (int64, same shape) and whether the penalty applies to each example."""
        t = t.long()
        last = self.num_timesteps - 1
        draw = torch.rand((2,) + t.shape, generator=generator, device=t.device)
        down = draw[0] < 0.5
        if self.variant == "kl":
            down = torch.ones_like(down)
        if self.variant in ("l2", "cosine", "kl"):
            t_nb = torch.where(down, t - self.simi_step, t + self.simi_step).clamp(0, last)
            return t_nb, (t_nb > 0) & (t_nb < last)
        lo, hi = self.windows(t.device)
        lo, hi = lo[t], hi[t]
        if self.variant == "l2_noise":
            t_nb = torch.where(down, lo, hi)
        else:
            below = lo + (draw[1] * (t - lo)).long()  # uniform in [lo, t-1]
            above = t + 1 + (draw[1] * (hi - t)).long()  # uniform in [t+1, hi]
            t_nb = torch.where(down, torch.minimum(below, t - 1), torch.minimum(above, hi))
        active = torch.where(down, (lo < t) & (lo > 0), (hi > t) & (hi < last))
        return torch.where(active, t_nb, t), active


@dataclass
class DistancePenalty:
    """The post-training penalty: which distance, its weight and how the neighbour step is chosen.

    As in Bridge-Gap's ``training_losses_seq2seq`` (and ``..._kl``), per example:
    * ``l2*``: ``-simi_lambda * mean((f(x_t', t') - f(x_t, t))^2)`` (simi_lambda <= 0);
    * ``cosine``: with c the cosine similarity per position, ``simi_lambda * mean(1 + c)`` for
      simi_lambda > 0, else ``-simi_lambda * mean(1 - c)``;
    * ``kl``: ``simi_lambda * mean over positions and vocabulary of p_t' (log p_t' - log p_t)``,
      the teacher t' = t - simi_step predicting without gradient (simi_lambda >= 0).
    """

    kind: str
    simi_lambda: float
    neighbours: NeighbourDraw

    @classmethod
    def create(cls, kind: str, simi_lambda: float, diffusion: GaussianDiffusion, simi_step: int = 10,
               simi_noise: float = 0.05) -> "DistancePenalty":
        """Validate the settings and precompute the neighbour windows of ``diffusion`` once."""
        if kind not in PENALTIES:
            raise UserError(f"unknown --simi_penalty {kind!r}; choose one of: {', '.join(PENALTIES)} (or '' for none)")
        if kind.startswith("l2") and simi_lambda > 0:
            raise UserError(f"--simi_lambda must be negative or zero for {kind} (the penalty is -simi_lambda * "
                            f"distance); got {simi_lambda} (the paper uses -2)")
        if kind == "kl" and simi_lambda < 0:
            raise UserError(f"--simi_lambda must be positive or zero for kl (the penalty is simi_lambda * KL); "
                            f"got {simi_lambda}")
        if simi_step >= diffusion.num_timesteps and kind in ("l2", "cosine", "kl"):
            raise UserError(f"--simi_step {simi_step} must be below the model's T = {diffusion.num_timesteps}")
        return cls(kind, simi_lambda, NeighbourDraw(kind, diffusion.alphas_cumprod, simi_step, simi_noise))

    def penalty(self, pred: torch.Tensor, pred_nb: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Per-example weighted penalty between the predictions at t and at the neighbour t'."""
        if self.kind == "cosine":
            cos = F.cosine_similarity(pred_nb, pred, dim=-1)
            if self.simi_lambda > 0:
                return mean_flat(1 + cos) * self.simi_lambda
            return -mean_flat(1 - cos) * self.simi_lambda
        if self.kind == "kl":
            with torch.no_grad():
                logits_teacher = lm_head(pred_nb)
            log_pred = F.log_softmax(lm_head(pred), dim=-1)
            log_target = F.log_softmax(logits_teacher, dim=-1)
            return mean_flat(F.softmax(logits_teacher, dim=-1) * (log_target - log_pred)) * self.simi_lambda
        return -mean_flat((pred_nb - pred) ** 2) * self.simi_lambda
