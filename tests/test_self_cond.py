"""Self-conditioning (--self_cond): the layout, the training input, the decoding chain, and a run."""

from __future__ import annotations

import json

import pytest
import torch

from diffuseq.diffusion.process import GaussianDiffusion
from diffuseq.model import EncoderConfig, TransformerNetModel
from diffuseq.samplers import ExampleNoise, NearestEmbedding, SamplerConfig, create_sampler, denoise
from diffuseq.training.losses import LossDraws, diffuseq_losses, self_cond_input
from helpers import assert_clean_error, make_toy_dataset, run_script, tiny_args


def tiny_model(self_cond: bool) -> TransformerNetModel:
    torch.manual_seed(0)
    return TransformerNetModel(40, 16, 16, 0.0, EncoderConfig(2, 32, 4, 64), self_cond=self_cond).eval()


def test_without_self_cond_the_layout_is_diffuseqs_and_with_it_one_linear_more():
    plain, cond = tiny_model(False).state_dict(), tiny_model(True).state_dict()
    assert not any(k.startswith("self_cond_proj") for k in plain)
    assert set(cond) - set(plain) == {"self_cond_proj.weight", "self_cond_proj.bias"}
    assert cond["self_cond_proj.weight"].shape == (32, 16)


def test_no_estimate_is_the_zero_estimate_and_an_estimate_changes_the_prediction():
    model = tiny_model(True)
    x, ts = torch.randn(3, 6, 16), torch.tensor([10.0, 500.0, 900.0])
    none = model(x, ts)
    assert torch.allclose(none, model(x, ts, x0_prev=torch.zeros_like(x)), atol=1e-6)
    assert not torch.allclose(none, model(x, ts, x0_prev=torch.randn_like(x)), atol=1e-3)
    plain = tiny_model(False)
    assert torch.equal(plain(x, ts), plain(x, ts, x0_prev=torch.randn_like(x)))  # ignored without self_cond


def test_training_input_is_the_detached_estimate_on_chosen_examples_target_rows_only():
    model = tiny_model(True)
    x, ts = torch.randn(4, 6, 16), torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1]] * 4)
    use = torch.tensor([True, False, True, False])
    prev = self_cond_input(model, x, ts, mask, use)
    estimate = model(x, ts)
    assert not prev.requires_grad
    assert torch.allclose(prev[use][:, 3:], estimate[use][:, 3:], atol=1e-6)
    assert torch.count_nonzero(prev[use][:, :3]) == 0 and torch.count_nonzero(prev[~use]) == 0
    assert self_cond_input(model, x, ts, mask, None) is None


def test_the_loss_trains_the_self_cond_projection_and_draws_half_the_examples():
    model = tiny_model(True).train()
    diffusion = GaussianDiffusion.from_schedule("sqrt", 100)
    ids, mask = torch.randint(0, 40, (64, 6)), torch.tensor([[0, 0, 0, 1, 1, 1]] * 64)
    t = torch.randint(0, 100, (64,))
    torch.manual_seed(1)
    draws = LossDraws.sample(model.get_embeds(ids), t, self_cond=True)
    assert 16 < int(draws.self_cond.sum()) < 48
    diffuseq_losses(model, diffusion, ids, mask, t, draws=draws)["loss"].mean().backward()
    assert model.self_cond_proj.weight.grad.abs().sum() > 0
    # with nobody chosen only the bias is trained (the input is zeros)
    model.zero_grad()
    draws.self_cond = torch.zeros(64, dtype=torch.bool)
    diffuseq_losses(model, diffusion, ids, mask, t, draws=draws)["loss"].mean().backward()
    assert model.self_cond_proj.weight.grad.abs().sum() == 0 and model.self_cond_proj.bias.grad.abs().sum() > 0


class Recorder(torch.nn.Module):
    """Wraps a denoiser and records the previous-estimate argument of every call."""

    def __init__(self, inner: TransformerNetModel) -> None:
        super().__init__()
        self.inner, self.self_cond, self.seen, self.outputs = inner, inner.self_cond, [], []

    def forward(self, x, ts, rows=None, x0_prev=None):
        self.seen.append(None if x0_prev is None else x0_prev.clone())
        out = self.inner(x, ts, rows, x0_prev)
        self.outputs.append(out.clone())
        return out


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_every_sampler_feeds_the_previous_raw_prediction(sampler):
    model = Recorder(tiny_model(True))
    config = SamplerConfig(num_train_timesteps=100, respacing="5", sampler=sampler)
    mask = torch.tensor([[0, 0, 1, 1, 1]] * 2)
    x_start = torch.randn(2, 5, 16)
    with torch.inference_mode():
        denoise(model, create_sampler(config), x_start, mask, ExampleNoise(10, [0, 1], x_start.shape[1:],
                                                                           x_start.device),
                NearestEmbedding(model.inner.word_embedding.weight.detach()))
    assert len(model.seen) == 5 and model.seen[0] is None
    for previous, output in zip(model.seen[1:], model.outputs[:-1]):
        assert torch.equal(previous, output)  # the raw prediction, not the clamped one
        assert torch.count_nonzero(previous[:, :2]) == 0


def test_a_self_conditioned_run_trains_decodes_and_fixes_its_setting(tmp_path):
    data = make_toy_dataset(tmp_path / "data")
    run = tmp_path / "run"
    result = run_script("run_train.py", tiny_args(data, run, self_cond=True, learning_steps=10))
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "training_args.json").read_text())["self_cond"] is True
    assert "self_cond_proj.weight" in torch.load(run / "model000010.pt", weights_only=True)
    out = tmp_path / "decode"
    result = run_script("sample_seq2seq.py", ["--model_path", str(run / "ema_0.9999_000010.pt"), "--step", "100",
                                              "--decode_respacing", "adp_5", "--sampler", "dpm++", "--out_dir",
                                              str(out), "--max_examples", "4", "--seeds", "10"])
    assert result.returncode == 0, result.stderr
    (written,) = list(out.rglob("seed10_*.json"))
    assert len(written.read_text().splitlines()) == 4 and "samplerdpm++" in written.name
    # post-training from it keeps self-conditioning; asking to drop it is refused before anything is written
    post = tmp_path / "post"
    result = run_script("run_train.py", tiny_args(data, post, self_cond=False, learning_steps=20,
                                                  resume_checkpoint=run / "model000010.pt"))
    assert_clean_error(result, "self_cond")
    assert not post.exists()
    result = run_script("run_train.py", tiny_args(data, post, learning_steps=14, save_interval=14,
                                                  simi_penalty="l2_noise_random",
                                                  resume_checkpoint=run / "model000010.pt"))
    assert result.returncode == 0, result.stderr
    assert json.loads((post / "training_args.json").read_text())["self_cond"] is True
    assert "self_cond_proj.weight" in torch.load(post / "ema_0.9999_000014.pt", weights_only=True)
