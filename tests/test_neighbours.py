"""Neighbour timesteps for the Distance Penalty: noise windows against brute force, and the samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffuseq.diffusion.penalty import (PENALTIES, NeighbourRule, NoiseWindowNeighbours, RandomNoiseWindowNeighbours,
                                       StepNeighbours, TeacherBelow, check_penalty_settings, noise_windows,
                                       penalty_class)
from diffuseq.errors import UserError


def sqrt_alphas_cumprod(T: int) -> np.ndarray:
    """DiffuSeq's ``sqrt`` schedule: alpha_bar(s) = 1 - sqrt(s + 1e-4), discretised into betas."""
    def alpha_bar(s: float) -> float:
        return 1 - math.sqrt(s + 1e-4)
    betas = np.array([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)])
    return np.cumprod(1 - betas)


def linear_alphas_cumprod(T: int) -> np.ndarray:
    """improved-diffusion's linear schedule, rescaled to T steps."""
    scale = 1000 / T
    return np.cumprod(1 - np.linspace(scale * 1e-4, scale * 0.02, T))


SCHEDULES = {"sqrt": sqrt_alphas_cumprod, "linear": linear_alphas_cumprod}


def neighbours_of(variant: str, abar: np.ndarray, simi_step: int = 10, simi_noise: float = 0.05) -> NeighbourRule:
    """The neighbour draw of penalty ``variant`` on the schedule ``abar``, as ``DistancePenalty.create`` builds it."""
    return PENALTIES[variant].neighbour_rule(abar, simi_step, simi_noise)


def brute_windows(abar: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """O(T^2): for each t, the smallest and largest s with |sigma[s] - sigma[t]| <= noise."""
    sigma = np.sqrt(1 - abar)
    inside = np.abs(sigma[None, :] - sigma[:, None]) <= noise
    steps = np.arange(len(sigma))
    return np.where(inside, steps, len(sigma)).min(1), np.where(inside, steps, -1).max(1)


def sides(abar: np.ndarray, noise: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """lo, hi and whether the down / up side has a usable neighbour (a step besides t, not reaching the end)."""
    lo, hi = (torch.from_numpy(a) for a in noise_windows(abar, noise))
    steps = torch.arange(len(abar))
    return lo, hi, (lo < steps) & (lo > 0), (hi > steps) & (hi < len(abar) - 1)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [50, 200, 2000])
@pytest.mark.parametrize("noise", [0.01, 0.05, 0.2])
def test_windows_match_brute_force(schedule, T, noise):
    abar = SCHEDULES[schedule](T)
    lo, hi = noise_windows(abar, noise)
    assert lo.dtype == np.int64 and hi.dtype == np.int64 and lo.shape == hi.shape == (T,)
    blo, bhi = brute_windows(abar, noise)
    np.testing.assert_array_equal(lo, blo)
    np.testing.assert_array_equal(hi, bhi)
    steps = np.arange(T)
    assert (lo <= steps).all() and (steps <= hi).all()
    assert (np.diff(lo) >= 0).all() and (np.diff(hi) >= 0).all()


def test_windows_with_ties_and_plateaus():
    # noise levels on a 0.05 grid, so many distances equal the threshold up to rounding; repeated levels too
    sigma = np.array([0.0, 0.0, 0.05, 0.1, 0.1, 0.1, 0.15, 0.2, 0.3, 0.35, 0.35, 0.4, 0.6, 0.65, 0.7, 0.95, 1.0])
    abar = 1 - sigma ** 2
    for noise in (0.0, 0.05, 0.1, 0.25, 1.0):
        np.testing.assert_array_equal(np.stack(noise_windows(abar, noise)), np.stack(brute_windows(abar, noise)))
    rng = np.random.default_rng(0)
    for _ in range(50):
        abar = 1 - np.sort(np.round(rng.random(rng.integers(1, 40)), 2)) ** 2
        np.testing.assert_array_equal(np.stack(noise_windows(abar, 0.05)), np.stack(brute_windows(abar, 0.05)))


def test_paper_window_t1000():
    lo, hi = noise_windows(sqrt_alphas_cumprod(2000), 0.05)
    assert abs(lo[1000] - 785) <= 2 and abs(hi[1000] - 1256) <= 2


def test_non_monotone_schedule_and_bad_noise_are_user_errors():
    with pytest.raises(UserError, match="monotone"):
        noise_windows(np.array([1.0, 0.5, 0.7]), 0.05)
    with pytest.raises(UserError, match="simi_noise"):
        noise_windows(sqrt_alphas_cumprod(10), float("nan"))


@pytest.mark.parametrize("variant", ["l2_noise", "l2_noise_random"])
@pytest.mark.parametrize("schedule,T,noise", [("sqrt", 50, 0.05), ("sqrt", 200, 0.01), ("sqrt", 2000, 0.05),
                                              ("sqrt", 300, 0.2), ("linear", 200, 0.05)])
def test_noise_neighbours(variant, schedule, T, noise):
    abar = SCHEDULES[schedule](T)
    lo, hi, down_ok, up_ok = sides(abar, noise)
    neighbours = neighbours_of(variant, abar, simi_noise=noise)
    reps = 40
    t = torch.arange(T).repeat(reps)
    t_nb, active = neighbours.draw(t, torch.Generator().manual_seed(1))
    assert t_nb.dtype == torch.int64 and active.dtype == torch.bool and t_nb.shape == active.shape == t.shape
    lo_t, hi_t = lo[t], hi[t]
    assert ((t_nb >= lo_t) & (t_nb <= hi_t)).all()
    assert (t_nb[active] != t[active]).all() and (t_nb[~active] == t[~active]).all()
    went_down, went_up = active & (t_nb < t), active & (t_nb > t)
    # a side is used only where it has a neighbour; never on where neither side has one; always on where both do
    assert down_ok[t][went_down].all() and up_ok[t][went_up].all()
    assert not active[~down_ok[t] & ~up_ok[t]].any()
    assert active[down_ok[t] & up_ok[t]].all()
    # where exactly one side has a neighbour, the penalty is on for about half the draws (the 50/50 direction)
    one_side = (down_ok[t] ^ up_ok[t])
    if one_side.sum() > 200:
        assert 0.4 < active[one_side].float().mean() < 0.6
    assert went_down.any() and went_up.any()
    if variant == "l2_noise":  # the window's edge on the drawn side
        assert torch.equal(t_nb[went_down], lo_t[went_down]) and torch.equal(t_nb[went_up], hi_t[went_up])


def test_random_neighbours_cover_both_sides_uniformly():
    abar = sqrt_alphas_cumprod(2000)
    lo, hi = noise_windows(abar, 0.05)
    neighbours = neighbours_of("l2_noise_random", abar, simi_noise=0.05)
    t = torch.full((60000,), 1000)
    t_nb, active = neighbours.draw(t, torch.Generator().manual_seed(0))
    assert active.all()
    below, above = t_nb[t_nb < 1000], t_nb[t_nb > 1000]
    assert 0.48 < len(below) / len(t) < 0.52
    for side, first, last in ((below, lo[1000], 999), (above, 1001, hi[1000])):
        counts = torch.bincount(side - first, minlength=last - first + 1).double()
        assert len(counts) == last - first + 1 and (counts > 0).all()  # every step of the side occurs
        expected = len(side) / len(counts)
        chi2 = (((counts - expected) ** 2) / expected).sum().item()
        dof = len(counts) - 1
        assert chi2 < dof + 5 * math.sqrt(2 * dof)  # consistent with uniform


def test_kl_teacher_is_the_step_below():
    T, step = 100, 10
    neighbours = neighbours_of("kl", sqrt_alphas_cumprod(T), simi_step=step)
    t = torch.arange(T).repeat(3)
    t_nb, active = neighbours.draw(t, torch.Generator().manual_seed(3))
    assert torch.equal(t_nb, (t - step).clamp(0, T - 1))
    assert torch.equal(active, t_nb > 0)


@pytest.mark.parametrize("variant", ["l2", "cosine"])
def test_step_neighbours(variant):
    T, step = 100, 10
    neighbours = neighbours_of(variant, sqrt_alphas_cumprod(T), simi_step=step)
    t = torch.arange(T).repeat(20)
    t_nb, active = neighbours.draw(t, torch.Generator().manual_seed(3))
    expected_down, expected_up = (t - step).clamp(0, T - 1), (t + step).clamp(0, T - 1)
    is_down, is_up = t_nb == expected_down, t_nb == expected_up
    assert (is_down | is_up).all()
    assert torch.equal(active, (t_nb > 0) & (t_nb < T - 1))
    # both directions occur, for the middle steps too
    middle = (t >= step) & (t < T - step)
    assert (t_nb[middle] < t[middle]).any() and (t_nb[middle] > t[middle]).any()
    assert 0.4 < (t_nb[middle] < t[middle]).float().mean() < 0.6
    # near the ends: the clamped direction is switched off, the other is on
    assert not active[(t < step) & (t_nb < t)].any() and active[(t < step) & (t_nb > t) & (t + step < T - 1)].all()
    assert not active[(t >= T - step) & (t_nb > t)].any()
    assert not active[t_nb == 0].any() and not active[t_nb == T - 1].any()


@pytest.mark.parametrize("variant", ["l2", "l2_noise", "l2_noise_random"])
def test_reproducible_and_shape_preserving(variant):
    neighbours = neighbours_of(variant, sqrt_alphas_cumprod(500), simi_step=5, simi_noise=0.05)
    t = torch.randint(0, 500, (8, 64), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    a, act_a = neighbours.draw(t, torch.Generator().manual_seed(7))
    b, act_b = neighbours.draw(t, torch.Generator().manual_seed(7))
    c, _ = neighbours.draw(t, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and torch.equal(act_a, act_b) and not torch.equal(a, c)
    assert a.shape == t.shape and a.dtype == torch.int64 and a.device == t.device
    empty, empty_active = neighbours.draw(torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,) and empty_active.shape == (0,)


def test_each_penalty_names_its_rule():
    assert {name: penalty.neighbour_rule for name, penalty in PENALTIES.items()} == {
        "l2": StepNeighbours, "cosine": StepNeighbours, "kl": TeacherBelow, "l2_noise": NoiseWindowNeighbours,
        "l2_noise_random": RandomNoiseWindowNeighbours}


def test_bad_settings_are_user_errors():
    for variant in ("l1", "", "L2", "noise"):
        with pytest.raises(UserError, match="unknown"):
            penalty_class(variant)
    for variant in ("l2", "cosine", "kl"):
        for step in (0, 50):
            with pytest.raises(UserError, match="simi_step"):
                check_penalty_settings(variant, 0.0, step, 0.05, 50)
    for variant in ("l2_noise", "l2_noise_random"):
        for noise in (0.0, -1.0, float("inf"), float("nan")):
            with pytest.raises(UserError, match="simi_noise"):
                check_penalty_settings(variant, 0.0, 10, noise, 50)
