"""The respaced process, clamping and the --step rule (space_timesteps itself: tests/test_respace.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffuseq.config.decoding import check_step_flag
from diffuseq.samplers import NearestEmbedding
from diffuseq.diffusion.process import GaussianDiffusion
from diffuseq.diffusion.respace import respaced_diffusion, space_timesteps
from diffuseq.errors import UserError


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
    assert check_step_flag(2000, 2000, "adp_20", -1.0) == ("adp_20", -1.0)
    assert check_step_flag(None, 2000, "", -1.0) == ("", -1.0)
    # DiffuSeq: --step S < T is DDIM (eta 0 unless given) with S steps, here ending at t = 0
    assert check_step_flag(100, 2000, "", -1.0) == ("100", 0.0)
    assert check_step_flag(100, 2000, "", 0.5) == ("100", 0.5)
    assert 0 in space_timesteps(2000, check_step_flag(100, 2000, "", -1.0)[0])
    with pytest.raises(UserError, match="conflicts"):
        check_step_flag(100, 2000, "adp_20", -1.0)
    with pytest.raises(UserError, match="outside"):
        check_step_flag(4000, 2000, "", -1.0)
