"""The Distance Penalty of Tang et al. (2023): the neighbour step t' of each example and the penalty.

For an example at step t the penalty compares the predictions at t and at a neighbour t'.
Each penalty is one class registered in ``PENALTIES`` by its ``--simi_penalty`` name; it
states its neighbour rule, its distance, the sign ``simi_lambda`` must have and, through
those, its validation. The neighbour rules:

* :class:`StepNeighbours` (``l2``, ``cosine``): t' = t +- ``simi_step`` (direction 50/50),
  clamped to [0, T-1]; the penalty is off where t' lands on 0 or T-1.
* :class:`TeacherBelow` (``kl``): the teacher t' = t - ``simi_step``, clamped and switched off the same way.
* :class:`NoiseWindowNeighbours` (``l2_noise``): a direction (down/up, 50/50), then the
  farthest step on that side whose noise level sigma = sqrt(1 - alpha_bar) is within
  ``simi_noise`` of t's.
* :class:`RandomNoiseWindowNeighbours` (``l2_noise_random``, the paper's setting): same
  direction, then t' uniform among the steps on that side inside the window, t excluded.

For the noise rules the penalty is off (t' = t) where the drawn side holds no step besides t,
or where the window reaches the end of the schedule on that side. The windows are computed
once per schedule; sampling is vectorised over the batch.

Adding a penalty: one class here, decorated with :func:`register`, plus its golden test.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .process import GaussianDiffusion


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
        raise UserError(f"`simi_noise` must be a non-negative number, got {simi_noise}")
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


# -- neighbour rules -----------------------------------------------------------------------------

class NeighbourRule(ABC):
    """How the neighbour step t' of each t is chosen; ``draw`` returns (t', active).

    Every rule draws the same random numbers (two uniforms per example: the direction and a
    position), so the training stream does not depend on the rule.
    """

    def __init__(self, alphas_cumprod: np.ndarray, simi_step: int, simi_noise: float) -> None:
        self.num_timesteps = len(alphas_cumprod)

    @classmethod
    @abstractmethod
    def check(cls, simi_step: int, simi_noise: float, num_timesteps: int) -> None:
        """Raise a UserError for ``--simi_step`` / ``--simi_noise`` values this rule cannot use."""

    def draw(self, t: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour steps of ``t`` (int64, same shape) and whether the penalty applies to each example."""
        t = t.long()
        uniform = torch.rand((2,) + t.shape, generator=generator, device=t.device)
        return self.pick(t, uniform[0] < 0.5, uniform[1])

    @abstractmethod
    def pick(self, t: torch.Tensor, down: torch.Tensor,
             position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t', active) for int64 ``t``, the drawn direction ``down`` and a uniform ``position`` in [0, 1)."""


class StepNeighbours(NeighbourRule):
    """t' = t - ``simi_step`` or t + ``simi_step`` as drawn, clamped; off where t' is 0 or T-1."""

    def __init__(self, alphas_cumprod: np.ndarray, simi_step: int, simi_noise: float) -> None:
        super().__init__(alphas_cumprod, simi_step, simi_noise)
        self.simi_step = simi_step

    @classmethod
    def check(cls, simi_step: int, simi_noise: float, num_timesteps: int) -> None:
        if not 1 <= simi_step < num_timesteps:
            raise UserError(f"`simi_step` must be in 1..{num_timesteps - 1} (below the model's T = "
                            f"{num_timesteps}), got {simi_step}")

    def pick(self, t: torch.Tensor, down: torch.Tensor,
             position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last = self.num_timesteps - 1
        t_nb = torch.where(down, t - self.simi_step, t + self.simi_step).clamp(0, last)
        return t_nb, (t_nb > 0) & (t_nb < last)


class TeacherBelow(StepNeighbours):
    """The teacher t' = t - ``simi_step`` whatever the drawn direction, clamped; off where t' is 0."""

    def pick(self, t: torch.Tensor, down: torch.Tensor,
             position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().pick(t, torch.ones_like(down), position)


class NoiseWindowNeighbours(NeighbourRule):
    """The farthest step on the drawn side of t within ``simi_noise`` of its noise level."""

    def __init__(self, alphas_cumprod: np.ndarray, simi_step: int, simi_noise: float) -> None:
        super().__init__(alphas_cumprod, simi_step, simi_noise)
        lo, hi = noise_windows(alphas_cumprod, simi_noise)
        self._windows = {"cpu": (torch.from_numpy(lo), torch.from_numpy(hi))}

    @classmethod
    def check(cls, simi_step: int, simi_noise: float, num_timesteps: int) -> None:
        if not 0 < simi_noise < float("inf"):
            raise UserError(f"`simi_noise` must be a finite number > 0, got {simi_noise}")

    def windows(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (lo, hi) tables on ``device`` (moved once)."""
        key = str(device)
        if key not in self._windows:
            lo, hi = self._windows["cpu"]
            self._windows[key] = (lo.to(device), hi.to(device))
        return self._windows[key]

    def pick(self, t: torch.Tensor, down: torch.Tensor,
             position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.windows(t.device)
        lo, hi = lo[t], hi[t]
        t_nb = self.inside(t, lo, hi, down, position)
        active = torch.where(down, (lo < t) & (lo > 0), (hi > t) & (hi < self.num_timesteps - 1))
        return torch.where(active, t_nb, t), active

    def inside(self, t: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, down: torch.Tensor,
               position: torch.Tensor) -> torch.Tensor:
        """The step chosen in the window [lo, hi] of t on the drawn side: here its edge."""
        return torch.where(down, lo, hi)


class RandomNoiseWindowNeighbours(NoiseWindowNeighbours):
    """A step uniform among those on the drawn side of t within ``simi_noise`` of its noise level, t excluded."""

    def inside(self, t: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, down: torch.Tensor,
               position: torch.Tensor) -> torch.Tensor:
        below = lo + (position * (t - lo)).long()  # uniform in [lo, t-1]
        above = t + 1 + (position * (hi - t)).long()  # uniform in [t+1, hi]
        return torch.where(down, torch.minimum(below, t - 1), torch.minimum(above, hi))


# -- penalties -----------------------------------------------------------------------------------

class DistancePenalty(ABC):
    """The post-training penalty: its weight ``simi_lambda`` and its neighbour draw (``neighbours``).

    A subclass names itself (``name``, the ``--simi_penalty`` value), its neighbour rule
    (``neighbour_rule``), the sign ``simi_lambda`` must have (``lambda_sign``: -1 for <= 0,
    +1 for >= 0, 0 for either, with ``adds`` saying why in the error message) and its
    weighted distance (``penalty``); :func:`register` adds it to ``PENALTIES``.
    """

    name: ClassVar[str]
    neighbour_rule: ClassVar[type[NeighbourRule]]
    lambda_sign: ClassVar[int] = 0
    adds: ClassVar[str] = ""

    def __init__(self, simi_lambda: float, neighbours: NeighbourRule) -> None:
        self.simi_lambda = simi_lambda
        self.neighbours = neighbours

    @classmethod
    def check(cls, simi_lambda: float, simi_step: int, simi_noise: float, num_timesteps: int) -> None:
        """Raise a UserError for settings this penalty cannot use: its neighbour rule's, then the sign of the weight."""
        cls.neighbour_rule.check(simi_step, simi_noise, num_timesteps)
        if cls.lambda_sign * simi_lambda < 0:
            raise UserError(f"`simi_lambda` {simi_lambda}: the {cls.name} penalty needs a weight "
                            f"{'<=' if cls.lambda_sign < 0 else '>='} 0 (it adds {cls.adds}), as in Bridge-Gap")

    @staticmethod
    def create(kind: str, simi_lambda: float, diffusion: GaussianDiffusion, simi_step: int = 10,
               simi_noise: float = 0.05) -> DistancePenalty:
        """The penalty called ``kind``: validate the settings and precompute its neighbours on ``diffusion`` once."""
        penalty = penalty_class(kind)
        check_penalty_settings(kind, simi_lambda, simi_step, simi_noise, diffusion.num_timesteps)
        return penalty(simi_lambda, penalty.neighbour_rule(diffusion.alphas_cumprod, simi_step, simi_noise))

    @abstractmethod
    def penalty(self, pred: torch.Tensor, pred_nb: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Per-example weighted penalty between the predictions at t and at the neighbour t'."""


PENALTIES: dict[str, type[DistancePenalty]] = {}

PenaltyT = TypeVar("PenaltyT", bound=type[DistancePenalty])


def register(cls: PenaltyT) -> PenaltyT:
    """Class decorator: make ``cls`` the penalty ``--simi_penalty cls.name`` selects."""
    PENALTIES[cls.name] = cls
    return cls


def penalty_class(kind: str) -> type[DistancePenalty]:
    """The registered penalty called ``kind``."""
    if kind not in PENALTIES:
        raise UserError(f"unknown `simi_penalty` {kind!r}; choose one of: {', '.join(PENALTIES)} (or '' for none)")
    return PENALTIES[kind]


def check_penalty_settings(kind: str, simi_lambda: float, simi_step: int, simi_noise: float,
                           num_timesteps: int) -> None:
    """Raise a UserError for ``--simi_*`` settings that penalty ``kind`` ('' = none) cannot use with T steps."""
    if not math.isfinite(simi_lambda):
        raise UserError(f"`simi_lambda` must be a finite number, got {simi_lambda}")
    if kind:
        penalty_class(kind).check(simi_lambda, simi_step, simi_noise, num_timesteps)


@register
class L2Penalty(DistancePenalty):
    """``-simi_lambda * mean((f(x_t', t') - f(x_t, t))^2)`` per example (Bridge-Gap's
    ``training_losses_seq2seq``), with t' = t +- ``simi_step``."""

    name = "l2"
    neighbour_rule = StepNeighbours
    lambda_sign = -1
    adds = "-simi_lambda * distance; the paper uses -2"

    def penalty(self, pred: torch.Tensor, pred_nb: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        return -mean_flat((pred_nb - pred) ** 2) * self.simi_lambda


@register
class L2NoisePenalty(L2Penalty):
    """The l2 penalty with t' the farthest step within ``simi_noise`` of t's noise level."""

    name = "l2_noise"
    neighbour_rule = NoiseWindowNeighbours


@register
class L2NoiseRandomPenalty(L2Penalty):
    """The l2 penalty with t' uniform among the steps within ``simi_noise`` of t's noise level (the paper's)."""

    name = "l2_noise_random"
    neighbour_rule = RandomNoiseWindowNeighbours


@register
class CosinePenalty(DistancePenalty):
    """With c the cosine similarity per position: ``simi_lambda * mean(1 + c)`` for simi_lambda > 0
    (pushing the predictions apart, as Bridge-Gap), else ``-simi_lambda * mean(1 - c)``; t' = t +- ``simi_step``."""

    name = "cosine"
    neighbour_rule = StepNeighbours

    def penalty(self, pred: torch.Tensor, pred_nb: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        cos = F.cosine_similarity(pred_nb, pred, dim=-1)
        if self.simi_lambda > 0:
            return mean_flat(1 + cos) * self.simi_lambda
        return -mean_flat(1 - cos) * self.simi_lambda


@register
class KLPenalty(DistancePenalty):
    """``simi_lambda * mean over positions and vocabulary of p_t' (log p_t' - log p_t)`` (Bridge-Gap's
    ``..._kl``), the teacher t' = t - ``simi_step`` predicting without gradient."""

    name = "kl"
    neighbour_rule = TeacherBelow
    lambda_sign = 1
    adds = "simi_lambda * KL"

    def penalty(self, pred: torch.Tensor, pred_nb: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            logits_teacher = lm_head(pred_nb)
        log_pred = F.log_softmax(lm_head(pred), dim=-1)
        log_target = F.log_softmax(logits_teacher, dim=-1)
        return mean_flat(F.softmax(logits_teacher, dim=-1) * (log_target - log_pred)) * self.simi_lambda
