"""Respacing: SPEC vectors, properties, errors, and the respaced process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffuseq.decoding import NearestEmbedding, check_step_flag
from diffuseq.errors import UserError
from diffuseq.gaussian_diffusion import GaussianDiffusion
from diffuseq.respace import respaced_diffusion, space_timesteps

SPEC_VECTORS = {
    "adp_4": {0, 667, 1334, 1999},
    "adp_10": {0, 667, 833, 1000, 1167, 1334, 1500, 1666, 1833, 1999},
    "adp_20": {0, 333, 667, 762, 857, 952, 1048, 1143, 1238, 1334, 1400, 1467, 1534, 1600, 1666, 1733, 1800,
               1866, 1932, 1999},
}


@pytest.mark.parametrize("spec", sorted(SPEC_VECTORS))
def test_adp_matches_spec_vectors(spec):
    assert space_timesteps(2000, spec) == SPEC_VECTORS[spec]


def test_uniform_and_sectioned_respacing_by_hand():
    assert space_timesteps(10, "") == set(range(10))
    assert sorted(space_timesteps(100, "10")) == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    # sections of 10: 2 points (stride 9), 3 points (stride 4.5, round half to even), 4 points (stride 3)
    assert sorted(space_timesteps(30, "2,3,4")) == [0, 9, 10, 14, 19, 20, 23, 26, 29]
    assert space_timesteps(2000, "ddim100") == set(range(0, 2000, 20))
    assert space_timesteps(100, "ddim7") == set(range(0, 100, 15))
    assert space_timesteps(5, "1") == {0}


@pytest.mark.parametrize("T", [3, 10, 97, 1000, 2000, 4000])
@pytest.mark.parametrize("n", [3, 4, 5, 7, 10, 16, 20, 50, 100])
def test_adp_and_uniform_properties(T, n):
    for spec in (f"adp_{n}", str(n)):
        if n > T or (spec.startswith("adp") and 3 * n > T):
            # too many steps for T (or for one of adp's three sections): an error, or exactly n steps
            try:
                steps = space_timesteps(T, spec)
            except UserError:
                assert spec.startswith("adp") or n > T
                continue
        else:
            steps = space_timesteps(T, spec)
        assert len(steps) == n, (T, spec)
        assert all(isinstance(s, int) and 0 <= s < T for s in steps)
    if n <= T and T >= 30:
        adp = sorted(space_timesteps(T, f"adp_{n}"))
        # most steps in the noisy part: at least half of them in the last third
        assert sum(s >= T - T // 3 for s in adp) >= n // 2


@pytest.mark.parametrize("spec", ["adp_0", "adp_x", "adp_2", "adp_2001", "2001", "0", "foo", "ddim60", "10,x",
                                  "adp_", "-5"])
def test_bad_respacings_are_user_errors(spec):
    T = 2000 if spec not in ("ddim60",) else 100
    with pytest.raises(UserError, match="respacing"):
        space_timesteps(T, spec)


def test_respaced_process_with_all_steps_equals_the_base_process():
    base = GaussianDiffusion.from_schedule("sqrt", 200)
    full = respaced_diffusion(base, set(range(200)))
    for name in ("betas", "alphas_cumprod", "posterior_mean_coef1", "posterior_mean_coef2",
                 "posterior_log_variance_clipped"):
        np.testing.assert_allclose(getattr(full, name), getattr(base, name), rtol=1e-10, atol=1e-14)
    t = torch.arange(200)
    torch.testing.assert_close(full.scale_timesteps(t), base.scale_timesteps(t))


def test_respaced_process_keeps_alpha_bar_and_original_timesteps():
    base = GaussianDiffusion.from_schedule("sqrt", 2000)
    kept = space_timesteps(2000, "adp_10")
    spaced = respaced_diffusion(base, kept)
    assert spaced.num_timesteps == 10
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[sorted(kept)], rtol=1e-10)
    # the network sees the original step, rescaled to 1000 / T
    torch.testing.assert_close(spaced.scale_timesteps(torch.arange(10)),
                               torch.tensor(sorted(kept), dtype=torch.float32) * 0.5)


def test_nearest_embedding_returns_vocabulary_rows():
    torch.manual_seed(0)
    emb = torch.randn(50, 8)
    x = torch.randn(3, 7, 8)
    out = NearestEmbedding(emb)(x)
    brute = emb[torch.cdist(x.reshape(-1, 8), emb).argmin(-1)].reshape(x.shape)
    torch.testing.assert_close(out, brute)
    assert all(any(torch.equal(row, e) for e in emb) for row in out.reshape(-1, 8))


def test_step_flag_rules():
    assert check_step_flag(2000, 2000, "adp_20") == "adp_20"
    assert check_step_flag(None, 2000, "") == ""
    assert check_step_flag(100, 2000, "") == "100"
    with pytest.raises(UserError, match="conflicts"):
        check_step_flag(100, 2000, "adp_20")
    with pytest.raises(UserError, match="outside"):
        check_step_flag(4000, 2000, "")
