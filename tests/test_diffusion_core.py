"""Schedules, the Gaussian process, the DiffuSeq loss, the samplers and the model layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import HalfModel

from diffuseq.diffusion.process import GaussianDiffusion
from diffuseq.diffusion.schedules import get_named_beta_schedule
from diffuseq.errors import UserError
from diffuseq.model import EncoderConfig, TransformerNetModel, timestep_embedding
from diffuseq.training.losses import diffuseq_losses
from diffuseq.diffusion.timesteps import LossAwareTimesteps, UniformTimesteps, create_timestep_distribution


@pytest.mark.parametrize("T", [10, 200, 2000])
def test_sqrt_schedule_matches_closed_form_alpha_bar(T):
    diffusion = GaussianDiffusion.from_schedule("sqrt", T)
    abar = lambda s: 1 - math.sqrt(s + 1e-4)  # noqa: E731
    # The cumulative product telescopes: alpha_bar_t = abar((t+1)/T) / abar(0) while no beta is clipped.
    expected = np.array([abar((t + 1) / T) / abar(0) for t in range(T)])
    clipped = np.flatnonzero(diffusion.betas >= 0.999)
    first_clipped = clipped[0] if len(clipped) else T
    assert first_clipped >= T - 2  # only the last step(s) of sqrt hit the 0.999 cap
    np.testing.assert_allclose(diffusion.alphas_cumprod[:first_clipped], expected[:first_clipped], rtol=1e-9)
    assert diffusion.betas.max() <= 0.999


def test_linear_and_cosine_schedules():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    cos = GaussianDiffusion.from_schedule("cosine", 100)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    np.testing.assert_allclose(cos.alphas_cumprod[:50], [f((t + 1) / 100) / f(0) for t in range(50)], rtol=1e-9)
    with pytest.raises(UserError, match="unknown noise schedule"):
        get_named_beta_schedule("quadratic", 10)


def test_partial_noising_leaves_source_untouched():
    diffusion = GaussianDiffusion.from_schedule("sqrt", 100)
    x0 = torch.randn(2, 6, 4)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    t = torch.tensor([99, 50])
    x_t = diffusion.q_sample(x0, t, torch.randn_like(x0), mask)
    assert torch.equal(x_t[0, :3], x0[0, :3]) and torch.equal(x_t[1, :1], x0[1, :1])
    assert not torch.allclose(x_t[0, 3:], x0[0, 3:])
    noise = torch.randn_like(x0)
    full = diffusion.q_sample(x0, t, noise)
    a = torch.tensor(diffusion.alphas_cumprod[[99, 50]], dtype=torch.float32).view(2, 1, 1)
    torch.testing.assert_close(full, a.sqrt() * x0 + (1 - a).sqrt() * noise)


def test_posterior_mean_and_ddpm_step_by_hand():
    diffusion = GaussianDiffusion(np.array([0.1, 0.2, 0.3]))
    abar = np.cumprod([0.9, 0.8, 0.7])
    t = 2
    c1 = 0.3 * math.sqrt(abar[1]) / (1 - abar[2])
    c2 = (1 - abar[1]) * math.sqrt(0.7) / (1 - abar[2])
    var = 0.3 * (1 - abar[1]) / (1 - abar[2])
    x_t, x0, z = torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([[0.5]])
    # DiffuSeq's variance is "fixed large": beta_t (the posterior variance of t = 1 at t = 0, where it is unused)
    out = diffusion.ddpm_step(x_t, torch.tensor([t]), x0, z)
    assert out.item() == pytest.approx(c1 * 2 + c2 * 1 + math.sqrt(0.3) * 0.5, rel=1e-5)
    small = diffusion.ddpm_step(x_t, torch.tensor([t]), x0, z, sigma_small=True)
    assert small.item() == pytest.approx(c1 * 2 + c2 * 1 + math.sqrt(var) * 0.5, rel=1e-5)
    assert diffusion.fixed_large_log_variance[0] == pytest.approx(math.log(diffusion.posterior_variance[1]))
    # t = 0: no noise, posterior variance there is that of t = 1 but unused
    out0 = diffusion.ddpm_step(x_t, torch.tensor([0]), x0, z)
    assert out0.item() == pytest.approx(diffusion.posterior_mean_coef1[0] * 2 + diffusion.posterior_mean_coef2[0],
                                        rel=1e-5)


def test_ddim_step_by_hand():
    diffusion = GaussianDiffusion(np.array([0.1, 0.2, 0.3]))
    abar = np.cumprod([0.9, 0.8, 0.7])
    x_t, x0 = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    eps = (1 - math.sqrt(abar[2]) * 2) / math.sqrt(1 - abar[2])
    expected = math.sqrt(abar[1]) * 2 + math.sqrt(1 - abar[1]) * eps
    out = diffusion.ddim_step(x_t, torch.tensor([2]), x0, torch.zeros(1, 1), eta=0.0)
    assert out.item() == pytest.approx(expected, rel=1e-5)
    sigma = math.sqrt((1 - abar[1]) / (1 - abar[2])) * math.sqrt(1 - abar[2] / abar[1])
    noisy = diffusion.ddim_step(x_t, torch.tensor([2]), x0, torch.ones(1, 1), eta=1.0)
    expected1 = math.sqrt(abar[1]) * 2 + math.sqrt(1 - abar[1] - sigma ** 2) * eps + sigma
    assert noisy.item() == pytest.approx(expected1, rel=1e-5)


def test_diffuseq_loss_on_a_two_token_toy_by_hand():
    diffusion = GaussianDiffusion.from_schedule("sqrt", 10)
    model = HalfModel()
    ids = torch.tensor([[0, 1]])
    mask = torch.tensor([[0, 1]])
    for t_value in (4, 0):
        t = torch.tensor([t_value])
        torch.manual_seed(7)
        terms = diffuseq_losses(model, diffusion, ids, mask, t, with_nll=True)
        torch.manual_seed(7)
        emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        eps0, eps = torch.randn(1, 2, 2), torch.randn(1, 2, 2)
        x0 = emb + math.sqrt(1 - diffusion.alphas_cumprod[0]) * eps0
        a = diffusion.alphas_cumprod[t_value]
        x_t = x0.clone()
        x_t[0, 1] = math.sqrt(a) * x0[0, 1] + math.sqrt(1 - a) * eps[0, 1]  # source position 0 stays clean
        pred = x_t / 2
        target = emb if t_value == 0 else x0
        mse = ((target - pred) ** 2).mean()
        t_t = ((math.sqrt(diffusion.alphas_cumprod[-1]) * x0) ** 2).mean()
        logits = x0 @ model.word_embedding.weight.detach().t()
        rounding = -torch.log_softmax(logits, -1)[0, [0, 1], [0, 1]].mean()
        nll = -torch.log_softmax(pred @ model.word_embedding.weight.detach().t(), -1)[0, 1, 1]
        assert terms["mse"].item() == pytest.approx(mse.item(), rel=1e-5)
        assert terms["tT"].item() == pytest.approx(t_t.item(), rel=1e-5)
        assert terms["rounding"].item() == pytest.approx(rounding.item(), rel=1e-5)
        assert terms["nll"].item() == pytest.approx(nll.item(), rel=1e-5)
        assert terms["loss"].item() == pytest.approx((mse + t_t + rounding).item(), rel=1e-5)


def test_timestep_embedding_formula():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 6)
    freqs = [math.exp(-math.log(10000) * i / 3) for i in range(3)]
    expected = [math.cos(3 * f) for f in freqs] + [math.sin(3 * f) for f in freqs]
    torch.testing.assert_close(emb[1], torch.tensor(expected))
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))


def _expected_keys(layers: int, vocab: int, dim: int, tdim: int, h: int, ffn: int) -> dict[str, tuple]:
    keys = {"word_embedding.weight": (vocab, dim), "lm_head.weight": (vocab, dim), "lm_head.bias": (vocab,),
            "time_embed.0.weight": (4 * tdim, tdim), "time_embed.0.bias": (4 * tdim,),
            "time_embed.2.weight": (h, 4 * tdim), "time_embed.2.bias": (h,),
            "input_up_proj.0.weight": (h, dim), "input_up_proj.0.bias": (h,),
            "input_up_proj.2.weight": (h, h), "input_up_proj.2.bias": (h,),
            "position_ids": (1, 512), "position_embeddings.weight": (512, h),
            "LayerNorm.weight": (h,), "LayerNorm.bias": (h,),
            "output_down_proj.0.weight": (h, h), "output_down_proj.0.bias": (h,),
            "output_down_proj.2.weight": (dim, h), "output_down_proj.2.bias": (dim,)}
    for i in range(layers):
        p = f"input_transformers.layer.{i}."
        for name in ("query", "key", "value"):
            keys[f"{p}attention.self.{name}.weight"] = (h, h)
            keys[f"{p}attention.self.{name}.bias"] = (h,)
        keys.update({f"{p}attention.output.dense.weight": (h, h), f"{p}attention.output.dense.bias": (h,),
                     f"{p}attention.output.LayerNorm.weight": (h,), f"{p}attention.output.LayerNorm.bias": (h,),
                     f"{p}intermediate.dense.weight": (ffn, h), f"{p}intermediate.dense.bias": (ffn,),
                     f"{p}output.dense.weight": (h, ffn), f"{p}output.dense.bias": (h,),
                     f"{p}output.LayerNorm.weight": (h,), f"{p}output.LayerNorm.bias": (h,)})
    return keys


@pytest.mark.parametrize("size", [(12, 768, 12, 3072), (2, 64, 4, 128)])
def test_state_dict_keys_and_shapes_match_diffuseq(size):
    layers, h, heads, ffn = size
    with torch.device("meta"):
        model = TransformerNetModel(30522 if h == 768 else 100, 128, 128, 0.1, EncoderConfig(layers, h, heads, ffn))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _expected_keys(layers, model.vocab_size, 128, 128, h, ffn)
    assert model.lm_head.weight is model.word_embedding.weight


def test_encoder_matches_huggingface_bert_encoder():
    import transformers  # a test requirement (requirements-test.txt): this test never skips
    from transformers.models.bert.modeling_bert import BertEncoder

    ours = TransformerNetModel(50, 16, 16, 0.0, EncoderConfig(2, 32, 4, 64)).input_transformers.eval()
    hf = BertEncoder(transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                             intermediate_size=64, attn_implementation="sdpa")).eval()
    hf.load_state_dict(ours.state_dict())
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(ours(x), hf(x).last_hidden_state)


def test_uniform_sampler_weights_are_one():
    t, w = UniformTimesteps(50).sample(100, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 50 and torch.equal(w, torch.ones(100))


def test_lossaware_sampler_warmup_and_weights():
    sampler = create_timestep_distribution("lossaware", 4)
    assert isinstance(sampler, LossAwareTimesteps)
    # not warmed up until every step has 10 losses: uniform
    sampler.record([0, 1, 2, 3] * 9, [1.0] * 36)
    assert not sampler.warmed_up() and torch.equal(sampler.weights(), torch.ones(4, dtype=torch.float64))
    sampler.record([0, 1, 2], [1.0, 2.0, 3.0])
    assert not sampler.warmed_up()
    sampler.record([3] * 12, [5.0] * 10 + [4.0, 4.0])  # history keeps the last 10 losses of step 3
    assert sampler.warmed_up()
    rms = np.array([math.sqrt((9 * 1 + 1) / 10), math.sqrt((9 * 1 + 4) / 10), math.sqrt((9 * 1 + 9) / 10),
                    math.sqrt((8 * 25 + 2 * 16) / 10)])
    expected = rms / rms.sum() * 0.999 + 0.001 / 4
    np.testing.assert_allclose(sampler.weights().numpy(), expected, rtol=1e-12)
    t, w = sampler.sample(1000, generator=torch.Generator().manual_seed(0))
    p = torch.tensor(expected / expected.sum(), dtype=torch.float32)
    torch.testing.assert_close(w, 1 / (4 * p[t]))
    counts = torch.bincount(t, minlength=4).double() / 1000
    assert (counts - torch.tensor(expected)).abs().max() < 0.05
    restored = LossAwareTimesteps(4)
    restored.load_state_dict(sampler.state_dict())
    assert torch.equal(restored.weights(), sampler.weights())
    with pytest.raises(UserError, match="schedule_sampler"):
        create_timestep_distribution("fancy", 4)
