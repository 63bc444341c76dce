"""Respacing: which of the T steps a decode visits, and the process restricted to them.

Spec strings (``space_timesteps``):
* ``""``: all T steps;
* ``"N"`` / ``"a,b,c"``: counts per equal section, evenly spaced (improved-diffusion);
* ``"ddimN"``: every k-th step for the integer stride k that gives N steps;
* ``"adp_N"``: Adaptive Decay Sampling (Tang et al. 2023): of N steps, about 8.4% in the
  low-noise third of [0, T), 36.8% in the middle third and 54.8% in the high-noise third;
* ``"[a,b,c]"``: Bridge-Gap's list form: counts per equal section, where every section but
  the last drops its last point (its adp rule applied to any list);
* ``"x2_N"``: Bridge-Gap's quadratic spacing (N points, denser near t = T-1).

``respaced_diffusion`` builds the process over the kept steps: its betas come from
alpha_bar at those steps and the network is called with the original timesteps.
"""

from __future__ import annotations

import json
import re

import numpy as np

from ..errors import UserError
from .process import GaussianDiffusion

# Bridge-Gap's values to full precision: rounded to 4 decimals they pick other steps for some N (adp_125)
ADP_PROPORTIONS = (0.08400242284240157, 0.36759523570876984, 0.5484023414488285)


def _section_sizes(num_timesteps: int, sections: int) -> list[int]:
    """Sizes of ``sections`` equal parts of [0, T): T // k, plus one for the first T % k parts."""
    base, extra = divmod(num_timesteps, sections)
    return [base + (1 if i < extra else 0) for i in range(sections)]


def _evenly_spaced(start: int, size: int, count: int) -> list[int]:
    """``count`` points in [start, start + size): start + round(cur), cur += (size - 1) / (count - 1).

    As in improved-diffusion: a running float sum (not i * stride, which differs at some .5
    boundaries), Python's round (half to even), one point (``start``) for count 1, none for 0.
    The caller checks count <= size.
    """
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    points, cur = [], 0.0
    for _ in range(count):
        points.append(start + round(cur))
        cur += stride
    return points


def _sections(num_timesteps: int, counts: list[int], drop_last: list[bool], spec: str) -> set[int]:
    """Evenly spaced ``counts[i]`` points in section i of [0, T), less the last one where ``drop_last[i]``."""
    steps, start = [], 0
    sizes = _section_sizes(num_timesteps, len(counts))
    for i, (size, count, drop) in enumerate(zip(sizes, counts, drop_last)):
        if count > size:
            raise UserError(f"respacing {spec!r}: T = {num_timesteps} is too small (section {i + 1} of "
                            f"{len(counts)} has {size} step{'' if size == 1 else 's'}, {count} points needed)")
        points = _evenly_spaced(start, size, count)
        steps += points[:-1] if drop else points
        start += size
    return set(steps)


def _parse_count(text: str, spec: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise UserError(f"respacing {spec!r}: {text!r} is not a step count")
    return int(text)


def space_timesteps(num_timesteps: int, spec: str) -> set[int]:
    """The set of kept steps in [0, T) named by ``spec`` (see the module docstring)."""
    spec = (spec or "").strip()
    if not spec:
        return set(range(num_timesteps))
    if spec.startswith("adp_"):
        n = _parse_count(spec[4:], spec)
        c0 = max(round(ADP_PROPORTIONS[0] * n), 1)
        c1 = max(round(ADP_PROPORTIONS[1] * n), 1)
        c2 = n - c0 - c1
        if c2 < 1:
            raise UserError(f"respacing {spec!r}: adp_N needs N >= 3")
        if n > num_timesteps:
            raise UserError(f"respacing {spec!r}: {n} steps is more than the model's T = {num_timesteps}")
        # c0 + 1 and c1 + 1 points with the last dropped: the low-noise sections keep their
        # left edge and stay clear of the next section's first step.
        steps = _sections(num_timesteps, [c0 + 1, c1 + 1, c2], [True, True, False], spec)
        assert len(steps) == n  # sections are disjoint and count <= size keeps points distinct
        return steps
    if spec.startswith("["):
        try:
            counts = json.loads(spec)
        except ValueError:
            counts = None
        if not isinstance(counts, list) or not counts or not all(isinstance(c, int) and c >= 1 for c in counts):
            raise UserError(f"respacing {spec!r}: a list must hold positive step counts, e.g. [10,10,10]")
        return _sections(num_timesteps, counts, [True] * (len(counts) - 1) + [False], spec)
    if spec.startswith("x2_"):
        n = _parse_count(spec[3:], spec)
        if not 1 <= n <= num_timesteps:
            raise UserError(f"respacing {spec!r}: the step count must be in 1..{num_timesteps}")
        even = _evenly_spaced(0, num_timesteps, n)
        return {num_timesteps - 1 - int(((i + 1) ** 2 / n ** 2) * s) for i, s in enumerate(even)}
    if spec.startswith("ddim"):
        n = _parse_count(spec[4:], spec)
        if n < 1:
            raise UserError(f"respacing {spec!r}: the step count must be positive")
        if n > num_timesteps:
            raise UserError(f"respacing {spec!r}: {n} steps is more than the model's T = {num_timesteps}")
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == n:
                return set(range(0, num_timesteps, stride))
        raise UserError(f"respacing {spec!r}: no integer stride gives exactly {n} of {num_timesteps} steps")
    counts = [_parse_count(part, spec) for part in spec.split(",")]
    if any(c < 1 for c in counts):
        raise UserError(f"respacing {spec!r}: step counts must be positive")
    if sum(counts) > num_timesteps:
        raise UserError(f"respacing {spec!r}: {sum(counts)} steps is more than the model's T = {num_timesteps}")
    return _sections(num_timesteps, counts, [False] * len(counts), spec)


def respaced_diffusion(base: GaussianDiffusion, use_timesteps: set[int]) -> GaussianDiffusion:
    """The process over ``use_timesteps`` of ``base``: beta_i = 1 - abar(s_i) / abar(s_{i-1})."""
    kept = sorted(use_timesteps)
    abar = base.alphas_cumprod[kept]
    betas = 1.0 - abar / np.append(1.0, abar[:-1])
    return GaussianDiffusion(betas, timestep_map=kept, original_num_steps=base.num_timesteps)
