"""DiffuSeq-v2's training side against its code: the config, the ``warmup-decay`` schedule, the model's
``mean_embed``, q_sample with the mean and the absorbing draw, the loss terms and optimizer steps.

The fixtures ``tests/golden/fixtures/v2_*.pt`` were written by ``tests/golden/make_v2_fixtures.py`` from the
``diffuseq-v2`` branch of DiffuSeq with recorded randomness; every test feeds their inputs and draws to this
project's code and compares, bitwise where the arithmetic is the same.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, golden_trainer, make_toy_dataset, run_script, tiny_args, tiny_encoder

from diffuseq.config import TrainConfig, parse_train_args
from diffuseq.diffusion.penalty import DistancePenalty, mean_flat
from diffuseq.diffusion.process import GaussianDiffusion
from diffuseq.diffusion.schedules import get_named_beta_schedule, warmup_decay_betas
from diffuseq.errors import UserError
from diffuseq.loading import load_checkpoint
from diffuseq.model import TransformerNetModel
from diffuseq.model import checkpoints as ckpt
from diffuseq.training.loop import Trainer
from diffuseq.training.losses import LossDraws, diffuseq_losses, distance_penalty_losses
from diffuseq.training.setup import plan_run

FIXTURES = Path(__file__).parent / "golden" / "fixtures"


def load(name: str):
    return torch.load(FIXTURES / name, weights_only=True)


MODEL = load("v2_model.pt")
STATE = MODEL["state_dict"]
V1_STATE = {k: v for k, v in STATE.items() if k != "mean_embed"}


def v2_model(state: dict = STATE) -> TransformerNetModel:
    """The package's denoiser with the fixture's sizes and their weights, loaded strictly."""
    vocab, hidden_dim = state["word_embedding.weight"].shape
    model = TransformerNetModel(vocab, hidden_dim, hidden_dim, 0.0, tiny_encoder(MODEL["bert_config"]),
                                learned_mean_embed="mean_embed" in state)
    model.load_state_dict(state)
    return model


# ---------------------------------------------------------------------------------- config


def test_v2_flags_defaults_and_their_refusals():
    cfg = TrainConfig()
    assert (cfg.learned_mean_embed, cfg.denoise, cfg.denoise_rate, cfg.reg_rate) == (False, False, 0.2, 0.01)
    cfg = parse_train_args(["--data_dir", "d", "--learned_mean_embed", "--denoise", "True", "--denoise_rate", "0.5",
                            "--reg_rate", "0.1"])
    assert (cfg.learned_mean_embed, cfg.denoise, cfg.denoise_rate, cfg.reg_rate) == (True, True, 0.5, 0.1)
    with pytest.raises(UserError, match="`denoise` .* needs `learned_mean_embed`"):
        parse_train_args(["--data_dir", "d", "--denoise", "True"])
    for rate in ("-0.1", "1.5", "nan"):
        with pytest.raises(UserError, match="`denoise_rate` must be in"):
            parse_train_args(["--data_dir", "d", "--learned_mean_embed", "--denoise_rate", rate])
    with pytest.raises(UserError, match="`reg_rate` must be"):
        parse_train_args(["--data_dir", "d", "--reg_rate", "-1"])


def test_training_args_of_diffuseq_v1_v2_and_ours_load(tmp_path, caplog):
    v1 = {k: v for k, v in MODEL["create_args"].items()
          if k not in ("data_split_num", "device", "learned_mean_embed", "denoise", "denoise_rate", "rejection_rate",
                       "reg_rate")}
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    cfg = TrainConfig.load(tmp_path / "v1.json")
    assert (cfg.learned_mean_embed, cfg.denoise, cfg.denoise_rate, cfg.reg_rate) == (False, False, 0.2, 0.01)
    assert cfg.diffusion_steps == 2000 and cfg.hidden_dim == 16
    # their training_args.json (args.__dict__ of train.py); they train with 0.01 whatever --reg_rate says
    v2 = {**MODEL["create_args"], "reg_rate": 0.5, "device": ""}
    (tmp_path / "v2.json").write_text(json.dumps(v2))
    with caplog.at_level(logging.WARNING, logger="diffuseq.config.train"):
        cfg = TrainConfig.load(tmp_path / "v2.json")
    assert (cfg.learned_mean_embed, cfg.denoise, cfg.denoise_rate, cfg.reg_rate) == (True, True, 0.5, 0.01)
    assert cfg.use_fp16 and "reg_rate 0.5, which DiffuSeq-v2 ignores" in caplog.text
    # ours keeps the flag's value
    (tmp_path / "ours.json").write_text(dataclasses.replace(cfg, reg_rate=0.5).to_json(wordpiece=False))
    assert TrainConfig.load(tmp_path / "ours.json").reg_rate == 0.5


# ---------------------------------------------------------------------------------- schedule, model, q_sample


def test_warmup_decay_schedule_is_bitwise_theirs():
    schedules = load("v2_schedules.pt")
    for key, theirs in schedules.items():
        if key == "meta":
            continue
        steps, _, ratio = key.removeprefix("warmup-decay_").partition("_ratio")
        ours = (warmup_decay_betas(int(steps), float(ratio)) if ratio
                else get_named_beta_schedule("warmup-decay", int(steps)))
        assert ours.dtype == np.float64 and np.array_equal(ours, theirs.numpy()), key
    GaussianDiffusion.from_schedule("warmup-decay", 2)  # valid betas at the smallest T


def test_their_state_dict_loads_strictly_and_gives_their_output():
    model = v2_model().eval()
    assert list(model.state_dict()) == MODEL["state_dict_keys"]  # the keys (and order) their decoder loads
    assert model.mean_embed.shape == (16,) and model.mean_embed.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(model(MODEL["x"], MODEL["t"]), MODEL["out"], rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="`learned_mean_embed`"):
        ckpt.load_model_weights(v2_model(V1_STATE), STATE, Path("ema.pt"))


def test_their_checkpoint_folder_loads_with_its_mean_embed(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MODEL["bert_config"]))
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
                                                  + [f"w{i}" for i in range(26)]) + "\n")
    (tmp_path / "training_args.json").write_text(json.dumps({**MODEL["create_args"],
                                                             "config_name": str(tmp_path / "config.json")}))
    torch.save(STATE, tmp_path / "ema_0.9999_000100.pt")
    cfg, vocab, model = load_checkpoint(tmp_path / "ema_0.9999_000100.pt", torch.device("cpu"))
    assert cfg.learned_mean_embed and cfg.denoise and cfg.denoise_rate == 0.5 and vocab.size == 30
    assert torch.equal(model.mean_embed, STATE["mean_embed"])
    with torch.no_grad():
        torch.testing.assert_close(model(MODEL["x"], MODEL["t"]), MODEL["out"], rtol=1e-5, atol=1e-5)


def test_mean_embed_is_created_last_with_their_init():
    encoder = tiny_encoder(MODEL["bert_config"])
    torch.manual_seed(0)
    plain = TransformerNetModel(30, 64, 16, 0.0, encoder)
    torch.manual_seed(0)
    v2 = TransformerNetModel(30, 64, 16, 0.0, encoder, learned_mean_embed=True)
    assert plain.mean_embed is None and "mean_embed" not in plain.state_dict()
    assert all(torch.equal(v, v2.state_dict()[k]) for k, v in plain.state_dict().items())
    torch.manual_seed(0)
    TransformerNetModel(30, 64, 16, 0.0, encoder)
    expected = torch.empty(64).normal_(0.0, 64 ** -0.5)
    assert torch.equal(v2.mean_embed.detach(), expected)


Q_SAMPLE = load("v2_q_sample.pt")


@pytest.mark.parametrize("name", sorted(Q_SAMPLE["cases"]))
def test_q_sample_with_mean_and_absorbing_is_bitwise_theirs(name):
    case, q = Q_SAMPLE["cases"][name], Q_SAMPLE
    diffusion = GaussianDiffusion.from_schedule(case["noise_schedule"], case["diffusion_steps"])
    absorb = None
    if case["denoise"]:
        draw = case["bernoulli"][0]
        probs = diffusion.absorb_probs(case["t"], case["denoise_rate"])
        assert torch.equal(probs.expand_as(draw["probs"]), draw["probs"])
        absorb = draw["uniform"] < probs
        assert torch.equal(absorb.float(), draw["mask"])
    mean = q["mean_embed"] if case["with_mean_embed"] else None
    assert torch.equal(diffusion.q_sample(q["x_start"], case["t"], q["noise"], q["mask"], mean, absorb), case["x_t"])


def test_q_sample_absorbs_target_tokens_only_and_needs_a_mean():
    diffusion = GaussianDiffusion.from_schedule("sqrt", 100)
    x0, noise, mean = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(3)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    absorb = torch.ones(2, 5, dtype=torch.bool)
    x_t = diffusion.q_sample(x0, torch.tensor([3, 99]), noise, mask, mean, absorb)
    assert torch.equal(x_t[mask == 0], x0[mask == 0]) and bool((x_t[mask == 1] == mean).all())
    with pytest.raises(ValueError, match="mean embedding"):
        diffusion.q_sample(x0, torch.tensor([3, 99]), noise, mask, absorb=absorb)


# ---------------------------------------------------------------------------------- losses


LOSSES = load("v2_losses.pt")


@pytest.mark.parametrize("name", sorted(LOSSES["cases"]))
def test_loss_terms_and_mean_embed_gradient_match_theirs(name):
    case = LOSSES["cases"][name]
    assert case["reg_rate_used"] == 0.01 != LOSSES["reg_rate_requested"]  # they ignore --reg_rate
    model = v2_model(STATE if case["learned_mean_embed"] else V1_STATE).train()
    diffusion = GaussianDiffusion.from_schedule(case["noise_schedule"], case["diffusion_steps"])
    uniform = case["bernoulli"][0]["uniform"] if case["bernoulli"] else None
    draws = LossDraws(case["draws"][0], case["draws"][1], absorb_uniform=uniform)
    ours = diffuseq_losses(model, diffusion, LOSSES["ids"], LOSSES["mask"], case["t"], with_nll=True, draws=draws,
                           denoise_rate=case["denoise_rate"] if case["denoise"] else None,
                           reg_rate=case["reg_rate_used"])
    for key in ("mse", "nll", "loss"):
        torch.testing.assert_close(ours[key], case["terms"][key], rtol=0, atol=1e-6, msg=key)
    if not case["learned_mean_embed"]:
        assert "reg" not in ours
        return
    torch.testing.assert_close(ours["reg"], 0.01 * STATE["mean_embed"].norm().expand(4), rtol=0, atol=0)
    ours["loss"].sum().backward()
    torch.testing.assert_close(model.mean_embed.grad, case["mean_embed_grad"], rtol=0, atol=1e-6)


def test_absorbing_uniforms_follow_the_x_t_noise_in_the_training_stream():
    x0_mean, t = torch.zeros(3, 7, 4), torch.tensor([1, 50, 99])
    draws = LossDraws.sample(x0_mean, t, generator=torch.Generator().manual_seed(5), absorbing=True)
    gen = torch.Generator().manual_seed(5)
    expected = [torch.randn(3, 7, 4, generator=gen), torch.randn(3, 7, 4, generator=gen),
                torch.rand(3, 7, generator=gen)]
    assert all(torch.equal(a, b) for a, b in zip((draws.x0_noise, draws.xt_noise, draws.absorb_uniform), expected))
    plain = LossDraws.sample(x0_mean, t, generator=torch.Generator().manual_seed(5))
    assert plain.absorb_uniform is None and torch.equal(plain.xt_noise, expected[1])
    # with a penalty, Bridge-Gap's order with the uniforms after their noise: x_0, neighbours, x_t, absorb(t), x_t',
    # absorb(t')
    penalty = DistancePenalty.create("l2", -2.0, GaussianDiffusion.from_schedule("sqrt", 100), 10)
    draws = LossDraws.sample(x0_mean, t, penalty.neighbours, generator=torch.Generator().manual_seed(5),
                             absorbing=True)
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(draws.x0_noise, torch.randn(3, 7, 4, generator=gen))
    t_nb, _ = penalty.neighbours.draw(t, gen)
    assert torch.equal(draws.t_nb, t_nb) and torch.equal(draws.xt_noise, torch.randn(3, 7, 4, generator=gen))
    assert torch.equal(draws.absorb_uniform, torch.rand(3, 7, generator=gen))
    assert torch.equal(draws.nb_noise, torch.randn(3, 7, 4, generator=gen))
    assert torch.equal(draws.nb_absorb_uniform, torch.rand(3, 7, generator=gen))


def test_distance_penalty_and_self_conditioning_compose_with_v2():
    """Both allowed: the neighbour's x_t' is v2's with its own absorbing draw, reg is added once; a self-conditioned
    v2 denoiser estimates x_0 from v2's x_t."""
    case = LOSSES["cases"]["train_sh_sqrt2000"]
    ids, mask, t = LOSSES["ids"], LOSSES["mask"], case["t"]
    model = v2_model().eval()
    diffusion = GaussianDiffusion.from_schedule("sqrt", 2000)
    penalty = DistancePenalty.create("l2", -2.0, diffusion, 10)
    gen = torch.Generator().manual_seed(3)
    x0_noise, xt_noise, nb_noise = (torch.randn(4, 12, 16, generator=gen) for _ in range(3))
    u, u_nb = torch.rand(4, 12, generator=gen), torch.rand(4, 12, generator=gen)
    t_nb, active = torch.tensor([10, 11, 989, 1989]), torch.tensor([True, True, True, False])
    draws = LossDraws(x0_noise, xt_noise, t_nb, active, nb_noise, absorb_uniform=u, nb_absorb_uniform=u_nb)
    with torch.no_grad():
        ours = distance_penalty_losses(model, diffusion, penalty, ids, mask, t, draws=draws, denoise_rate=0.5,
                                       reg_rate=0.01)
        x0_mean = model.get_embeds(ids)
        x0 = x0_mean + float(diffusion.sqrt_one_minus_alphas_cumprod[0]) * x0_noise
        mean = model.mean_embed
        x_nb = diffusion.q_sample(x0, t_nb, nb_noise, mask, mean, u_nb < diffusion.absorb_probs(t_nb, 0.5))
        mse_nb = mean_flat((x0_mean - model(x_nb, diffusion.scale_timesteps(t_nb))) ** 2)
        torch.testing.assert_close(ours["mse_nb"], mse_nb, rtol=0, atol=1e-6)
        base = (ours["mse"] + ours["mse_nb"] + 2 * ours["rounding"] + 2 * ours["tT"] + ours["penalty"]) / 2
        torch.testing.assert_close(ours["loss"], base + 0.01 * mean.norm(), rtol=0, atol=1e-6)
        assert torch.equal(ours["reg"], (0.01 * mean.norm()).expand(4))

        torch.manual_seed(0)
        sc = TransformerNetModel(30, 16, 16, 0.0, tiny_encoder(MODEL["bert_config"]), self_cond=True,
                                 learned_mean_embed=True).eval()
        use = torch.tensor([True, False, True, False])
        ours = diffuseq_losses(sc, diffusion, ids, mask, t, draws=LossDraws(x0_noise, xt_noise, self_cond=use,
                                                                           absorb_uniform=u),
                               denoise_rate=0.5, reg_rate=0.01)
        x0 = sc.get_embeds(ids) + float(diffusion.sqrt_one_minus_alphas_cumprod[0]) * x0_noise
        x_t = diffusion.q_sample(x0, t, xt_noise, mask, sc.mean_embed, u < diffusion.absorb_probs(t, 0.5))
        ts = diffusion.scale_timesteps(t)
        prev = torch.where(use[:, None, None] & mask.bool()[..., None], sc(x_t, ts), 0.0)
        pred = sc(x_t, ts, x0_prev=prev)
        mse = torch.where(t == 0, mean_flat((sc.get_embeds(ids) - pred) ** 2), mean_flat((x0 - pred) ** 2))
        torch.testing.assert_close(ours["mse"], mse, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------- optimizer steps


TRAINING = load("v2_training.pt")


def _v2_trainer(tmp_path: Path, **overrides: object) -> Trainer:
    """A Trainer of the fixture's settings (their vocabulary size, fp32: their fp16 is a no-op on a CPU)."""
    settings = TRAINING["settings"]
    return golden_trainer(tmp_path, settings, MODEL["bert_config"], noise_schedule="sqrt", learned_mean_embed=True,
                          denoise=settings["denoise"], denoise_rate=settings["denoise_rate"], **overrides)


def test_optimizer_steps_match_their_training_loop(tmp_path, monkeypatch):
    run = TRAINING
    trainer = _v2_trainer(tmp_path)
    trainer.model.load_state_dict(STATE)
    for dst, src in zip(trainer.ema[trainer.ema_rates[0]], trainer.params):
        dst.copy_(src.detach())
    trainer.batches = iter([(run["ids"], run["mask"])] * len(run["records"]))
    samples = [(t, w) for record in run["records"] for t, w in zip(record["t"], record["weights"])]
    monkeypatch.setattr(trainer.timestep_sampler, "sample", lambda batch, device, generator=None: samples.pop(0))
    draws = [LossDraws(record["draws"][2 * m], record["draws"][2 * m + 1],
                       absorb_uniform=record["bernoulli"]["uniform"][m])
             for record in run["records"] for m in range(len(record["t"]))]
    monkeypatch.setattr(LossDraws, "sample", classmethod(lambda cls, *args, **kwargs: draws.pop(0)))
    trainer.model.train()
    for record in run["records"]:
        for m, t in enumerate(record["t"]):
            assert torch.equal(trainer.diffusion.absorb_probs(t, 0.5).expand(4, 12), record["bernoulli"]["probs"][m])
        terms = trainer.train_step(trainer.model, with_nll=False)
        assert terms is not None and "reg" in terms
        assert trainer.opt.param_groups[0]["lr"] == record["lr"]
    assert not draws and not samples
    names = [n for n, _ in trainer.model.named_parameters()]
    assert names == run["param_names"]
    # The key biases get a gradient that is zero up to rounding (softmax ignores a shift shared by all keys), which
    # Adam scales up to +-lr: rounding noise in both implementations, not compared (as in test_golden).
    final = trainer.model.state_dict()
    for key, theirs in run["final"].items():
        if not key.endswith("attention.self.key.bias"):
            torch.testing.assert_close(final[key], theirs, rtol=0, atol=1e-5, msg=key)
    for name, ema in zip(names, trainer.ema[trainer.ema_rates[0]]):
        if not name.endswith("attention.self.key.bias"):
            assert abs(ema.double().sum().item() - run["ema_sums"][name].item()) < 1e-5, name
    torch.testing.assert_close(trainer.ema[trainer.ema_rates[0]][0], run["ema_mean_embed"], rtol=0, atol=1e-6)


def test_post_training_keeps_the_step_count_where_theirs_restarts_it(tmp_path):
    """Their resume forces resume_step to 0 (lr from the top, EMA from the weights); ours continues at step K."""
    theirs = TRAINING["resume"]
    assert theirs["resume_step"] == 0 and theirs["lr_per_step"] == [1e-3 * (1 - k / 110) for k in (0, 1)]
    trainer = _v2_trainer(tmp_path, learning_steps=theirs["learning_steps"])
    source = tmp_path / "source"
    source.mkdir()
    weights = {k: (v * 1.01 if v.is_floating_point() else v) for k, v in STATE.items()}
    ckpt.atomic_save(weights, source / "model000100.pt")
    ckpt.atomic_save({k: v * 1.02 if v.is_floating_point() else v for k, v in STATE.items()},
                     source / "ema_0.9_000100.pt")
    trainer.load(source / "model000100.pt", exact=False)
    assert trainer.step == 100
    assert torch.equal(trainer.ema["0.9"][0], STATE["mean_embed"] * 1.02)
    trainer.model.train()
    assert trainer.train_step(trainer.model, with_nll=False) is not None
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - 100 / 110), rel=1e-12)


# ---------------------------------------------------------------------------------- end to end


def test_run_train_with_v2_flags_saves_mean_embed_and_resumes_exactly(tmp_path):
    toy = make_toy_dataset(tmp_path / "toy", n_train=32, n_valid=8, n_test=8)
    flags = dict(learned_mean_embed=True, denoise=True, denoise_rate=0.5, bsz=8, microbatch=4, learning_steps=6,
                 save_interval=3, log_interval=3, eval_interval=3, num_layers=1)
    refused = run_script("run_train.py", tiny_args(toy, tmp_path / "refused", denoise=True))
    assert_clean_error(refused, "--denoise", "--learned_mean_embed")
    folder = tmp_path / "ck"
    result = run_script("run_train.py", tiny_args(toy, folder, **flags))
    assert result.returncode == 0, result.stderr[-3000:]
    assert " reg 0.0" in result.stderr
    args = json.loads((folder / "training_args.json").read_text())
    assert (args["learned_mean_embed"], args["denoise"], args["denoise_rate"], args["reg_rate"]) == (True, True, 0.5,
                                                                                                    0.01)
    model = torch.load(folder / "model000006.pt", weights_only=True)
    ema = torch.load(folder / "ema_0.9999_000006.pt", weights_only=True)
    assert list(model)[0] == list(ema)[0] == "mean_embed" and model["mean_embed"].shape == (16,)
    cfg, _, loaded = load_checkpoint(folder / "ema_0.9999_000006.pt", torch.device("cpu"))
    assert cfg.denoise and torch.equal(loaded.mean_embed, ema["mean_embed"])

    other = tmp_path / "resumed"  # continuing from step 3 gives the straight run's step 6 bitwise
    other.mkdir()
    for path in folder.iterdir():
        if "000006" not in path.name:
            shutil.copy2(path, other / path.name)
    continued = run_script("run_train.py", tiny_args(toy, other, **flags))  # a process as the straight run's
    assert continued.returncode == 0, continued.stderr[-3000:]
    resumed = torch.load(other / "model000006.pt", weights_only=True)
    assert resumed.keys() == model.keys() and all(torch.equal(resumed[k], model[k]) for k in model)

    # post-training adopts the source's process, and may not contradict it
    post = dict(num_layers=1, learning_steps=9, resume_checkpoint=folder / "model000006.pt")
    settings = plan_run(parse_train_args(tiny_args(toy, tmp_path / "post", **post))).cfg
    assert (settings.learned_mean_embed, settings.denoise, settings.denoise_rate) == (True, True, 0.5)
    for key, value in (("learned_mean_embed", False), ("denoise_rate", 0.3)):
        with pytest.raises(UserError, match=f"`{key}` gives"):
            plan_run(parse_train_args(tiny_args(toy, tmp_path / "post", **post, **{key: value})))
