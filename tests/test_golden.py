"""This project against the original code: golden values computed by DiffuSeq and Bridge-Gap.

The fixtures in ``tests/golden/fixtures/`` were written by ``tests/golden/make_fixtures.py``,
which runs the two original repositories on small inputs with recorded randomness. Every test
here feeds the same inputs and draws to this project's code and compares: bitwise where the
arithmetic is the same, to float32 rounding where the order of operations differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import golden_trainer, tiny_encoder

from diffuseq.config import parse_decode_args
from diffuseq.data import encode_pairs
from diffuseq.data.vocab import WordPieceVocab, WordVocab
from diffuseq.data.vocab import decode_text
from diffuseq.samplers import NearestEmbedding, SamplerConfig, create_sampler, denoise
from diffuseq.diffusion.process import GaussianDiffusion
from diffuseq.diffusion.respace import space_timesteps
from diffuseq.diffusion.schedules import get_named_beta_schedule
from diffuseq.errors import UserError
from diffuseq.model import TransformerNetModel
from diffuseq.model import checkpoints as ckpt
from diffuseq.training.losses import LossDraws, diffuseq_losses, distance_penalty_losses
from diffuseq.diffusion.penalty import DistancePenalty, noise_windows
from diffuseq.diffusion.timesteps import LossAwareTimesteps, create_timestep_distribution

FIXTURES = Path(__file__).parent / "golden" / "fixtures"


def load(name: str):
    return torch.load(FIXTURES / name, weights_only=True)


@pytest.fixture(scope="module")
def denoiser_fixture():
    return load("denoiser.pt")


def tiny_model(state: dict, bert_config: dict) -> TransformerNetModel:
    vocab, hidden_dim = state["word_embedding.weight"].shape
    model = TransformerNetModel(vocab, hidden_dim, hidden_dim, 0.0, tiny_encoder(bert_config))
    model.load_state_dict(state)
    return model


# ---------------------------------------------------------------------------------- the process


def test_noise_schedules_are_bitwise_diffuseqs():
    fixture = load("schedules.pt")
    for key, betas in fixture.items():
        if key == "meta":
            continue
        name, steps = key.rsplit("_", 1)
        ours = get_named_beta_schedule(name, int(steps))
        if name == "trunc_cos":  # np.cos of numpy 1.23 (the fixtures') and libm's differ by an ulp at times
            np.testing.assert_allclose(ours, betas.numpy(), rtol=1e-10, atol=0)
        else:
            assert np.array_equal(ours, betas.numpy()), key


def test_respacing_matches_diffuseq_and_bridge_gap_for_every_spec():
    fixture = json.loads((FIXTURES / "respacing.json").read_text())
    checked = 0
    for family, prefix in (("uniform", ""), ("ddim", "ddim"), ("adp", "adp_"), ("lists", ""), ("x2", "x2_")):
        for key, expected in fixture[family].items():
            steps, spec = key.split(":", 1)
            if expected is None:
                with pytest.raises(UserError):
                    space_timesteps(int(steps), prefix + spec)
                continue
            assert sorted(space_timesteps(int(steps), prefix + spec)) == expected, (family, key)
            checked += 1
    assert checked > 600
    # the case that 4-decimal proportions got wrong
    assert sorted(space_timesteps(2000, "adp_125")) == fixture["adp"]["2000:125"]


def test_neighbour_windows_are_bridge_gaps_noise_maps():
    fixture = json.loads((FIXTURES / "noise_maps.json").read_text())
    for key, maps in fixture.items():
        if key == "meta":
            continue
        schedule, steps, noise = key.split("_")
        steps = int(steps)
        lo, hi = noise_windows(GaussianDiffusion.from_schedule(schedule, steps).alphas_cumprod, float(noise))
        up, down = {int(k): v for k, v in maps["up"].items()}, {int(k): v for k, v in maps["down"].items()}
        for t in range(steps):
            # Bridge-Gap has no entry where the window reaches the end of the schedule (penalty off there)
            assert (t in up) == (hi[t] < steps - 1), (key, t)
            assert up.get(t, hi[t]) == hi[t], (key, t)
            assert (t in down) == (lo[t] > 0), (key, t)
            assert down.get(t, lo[t]) == lo[t], (key, t)


def test_lossaware_weights_match_diffuseq():
    fixture = load("lossaware.pt")
    sampler = LossAwareTimesteps(20)
    for (ts, losses), expected in zip(fixture["updates"], fixture["weights"]):
        sampler.record(ts, losses)
        torch.testing.assert_close(sampler.weights(), expected, rtol=1e-12, atol=1e-15)
    assert sampler.warmed_up()
    for steps, expected in fixture["fixstep"].items():
        fix = create_timestep_distribution("fixstep", int(steps))
        assert torch.equal(fix.weights(), expected)
        t, w = fix.sample(1000, generator=torch.Generator().manual_seed(0))
        assert int(t.max()) < len(expected)  # DiffuSeq's odd-T fixstep never draws the last step
        torch.testing.assert_close(w, (1 / (len(expected) * expected / expected.sum()))[t].float())


def test_denoiser_forward_on_their_state_dict(denoiser_fixture):
    f = denoiser_fixture
    model = tiny_model(f["state_dict"], f["bert_config"]).eval()
    assert set(model.state_dict()) == set(f["state_dict"])
    with torch.no_grad():
        out = model(f["x"], f["t"])
        torch.testing.assert_close(out, f["out"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.get_logits(out), f["logits"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- decoding


class FedNoise:
    """The noise their chain drew, handed out in the same order."""

    def __init__(self, draws: list[torch.Tensor]) -> None:
        self.draws = list(draws)

    def draw(self, top_p: float = 0.0) -> torch.Tensor:
        return self.draws.pop(0)


class Replay(torch.nn.Module):
    """A network that returns the outputs their network gave, checking that it is called with their x_t
    (to within float32 rounding: the fixtures' CPU and this one may round vectorised arithmetic
    differently, e.g. Intel against AMD) and their timesteps."""

    def __init__(self, calls: list[dict], inputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.calls, self.inputs, self.step = list(calls), list(inputs), 0

    def forward(self, x, t, rows=None):
        call, expected = self.calls.pop(0), self.inputs.pop(0)
        assert torch.equal(t, call["t"]), (t, call["t"])
        torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6, msg=lambda m: f"step {self.step}: {m}")
        self.step += 1
        return call["out"].clone()


def _their_settings(case: dict) -> tuple[int, str, float]:
    spacing = json.loads(case["spacing"])
    respacing = json.dumps(spacing, separators=(",", ":")) if isinstance(spacing, list) else spacing
    return case["num_timesteps"], respacing, case["eta"]


CHAINS = load("chains.pt")


@pytest.mark.parametrize("name", sorted(CHAINS["cases"]))
def test_reverse_chain_matches_the_original_step_by_step(name, denoiser_fixture):
    case = CHAINS["cases"][name]
    steps, respacing, eta = _their_settings(case)
    sampler = create_sampler(SamplerConfig(steps, "sqrt", respacing, eta, case["clamp_step"],
                                             case["clip_denoised"]))
    assert [int(s) for s in sampler.process.timestep_map] == case["timestep_map"]
    model = tiny_model(CHAINS["state_dict"], denoiser_fixture["bert_config"]).eval().requires_grad_(False)
    ids, mask = case["ids"], case["mask"]
    x_start = model.get_embeds(ids)
    clamp = NearestEmbedding(model.word_embedding.weight.detach()) if case["clamp"] else None
    noise = [case["x_init"]] + case["step_noise"]
    with torch.no_grad():
        # the sampler alone: their network outputs replayed, so every step must agree to float32 rounding
        inputs = [case["x_init"]] + case["samples"][:-1]
        replayed = denoise(Replay(case["calls"], inputs), sampler, x_start, mask, FedNoise(noise), clamp)
        torch.testing.assert_close(replayed, case["final"], rtol=1e-6, atol=1e-6)
        # the whole chain with this project's network
        x0 = denoise(model, sampler, x_start, mask, FedNoise(noise), clamp)
        torch.testing.assert_close(x0, case["final"], rtol=1e-4, atol=1e-4)
        assert torch.equal(model.get_logits(x0).argmax(-1), case["tokens"])


# The decoding flags that ask this project for each original decode: DiffuSeq's --step (S < T: its DDIM, which
# has no eta, so 0), Bridge-Gap's --decode_respacing and --eta. (DiffuSeq's ddim25 ran without clamping, which
# has no flag here: its sampler and steps are still these flags'.)
ORIGINAL_DECODE_FLAGS = {
    "diffuseq_ddpm_all_T30_clamp": ["--step", "30"],
    "diffuseq_ddpm_uniform10_T200_clampstep4": ["--decode_respacing", "10", "--clamp_step", "4"],
    "diffuseq_ddpm_uniform10_T200_clip": ["--decode_respacing", "10", "--clip_denoised", "True"],
    "diffuseq_ddim_uniform20_T200_clamp": ["--step", "20"],
    "diffuseq_ddim_ddim25_T200_noclamp": ["--decode_respacing", "ddim25", "--sampler", "ddim"],
    "bridge_gap_ddpm_adp20_T2000_clamp": ["--decode_respacing", "adp_20"],
    "bridge_gap_ddpm_adp10_T1000_clampstep3": ["--decode_respacing", "adp_10", "--clamp_step", "3"],
    "bridge_gap_ddim0_adp20_T2000_clamp": ["--decode_respacing", "adp_20", "--eta", "0"],
    "bridge_gap_ddim05_uniform10_T200_clamp": ["--decode_respacing", "[10]", "--eta", "0.5"],
}


def _sampler_from_flags(flags: list[str], num_timesteps: int):
    """The reverse sampler that ``sample_seq2seq.py`` builds from ``flags`` for a model of ``num_timesteps``."""
    config = parse_decode_args(["--model_path", "run/model000001.pt", *flags])
    return create_sampler(config.sampling(num_timesteps, "sqrt"))


@pytest.mark.parametrize("name", sorted(ORIGINAL_DECODE_FLAGS))
def test_the_original_decode_flags_give_their_sampler_steps_and_eta(name):
    case = CHAINS["cases"][name]
    sampler = _sampler_from_flags(ORIGINAL_DECODE_FLAGS[name], case["num_timesteps"])
    assert sampler.name == ("ddim" if case["eta"] >= 0 else "ddpm")
    assert [int(s) for s in sampler.process.timestep_map] == case["timestep_map"]
    assert (sampler.config.clamp_step, sampler.config.clip_denoised) == (case["clamp_step"], case["clip_denoised"])
    if sampler.name == "ddim":
        assert sampler.config.eta == case["eta"]


def test_decoded_text_and_tokenisation_match_diffuseq(tmp_path):
    f = load("tokenizer.pt")
    (tmp_path / "vocab.txt").write_text("\n".join(f["vocab"]) + "\n")
    vocab = WordPieceVocab(tmp_path / "vocab.txt")
    assert vocab.encode_batch(f["texts"]) == f["encoded"]
    half = len(f["texts"]) // 2
    data = encode_pairs(list(zip(f["texts"][:half], f["texts"][half:])), vocab, f["seq_len"])
    assert torch.equal(data.input_ids, f["input_ids"])
    assert torch.equal(data.input_mask, f["input_mask"])
    for seq, pred, mask, record in zip(f["input_ids"].tolist(), f["predicted"].tolist(), f["input_mask"].tolist(),
                                       f["records"]):
        src_len = len(mask) - sum(mask)
        assert decode_text(vocab, pred[src_len:]) == record["recover"]
        assert decode_text(vocab, seq[src_len:]) == record["reference"]
        assert decode_text(vocab, seq[:src_len]) == record["source"]
    words = WordVocab(f["word_vocab"])
    assert [decode_text(words, ids) for ids in f["word_ids"]] == f["word_text"]


# ---------------------------------------------------------------------------------- training


LOSSES = load("losses.pt")


@pytest.mark.parametrize("name", sorted(LOSSES["cases"]))
def test_loss_terms_match_the_original(name, denoiser_fixture):
    case = LOSSES["cases"][name]
    model = tiny_model(LOSSES["state_dict"], denoiser_fixture["bert_config"])
    diffusion = GaussianDiffusion.from_schedule("sqrt", 2000)
    ids, mask, t, draws, theirs = LOSSES["ids"], LOSSES["mask"], case["t"], case["draws"], case["terms"]
    if name == "diffuseq_base":
        ours = diffuseq_losses(model, diffusion, ids, mask, t, with_nll=True, draws=LossDraws(draws[0], draws[1]))
        mse_total = ours["mse"]
    else:
        penalty = DistancePenalty.create(case["kind"], case["simi_lambda"], diffusion, case["simi_step"],
                                         case["simi_noise"])
        ours = distance_penalty_losses(model, diffusion, penalty, ids, mask, t, with_nll=True,
                                       draws=LossDraws(draws[0], draws[1], case["t_nb"], case["active"], draws[-1]))
        mse_total = ours["mse"] + ours["mse_nb"]
        nb_key = "mse_teacher" if case["kind"] == "kl" else "mse_similar"
        torch.testing.assert_close(ours["mse_nb"], theirs[nb_key], rtol=1e-5, atol=1e-6)
        penalty_key = {"kl": "kl_loss", "cosine": "cos_penalty"}.get(case["kind"], "l2")
        expected = theirs[penalty_key] * (1 if case["kind"] == "kl" else case["active"].float())
        torch.testing.assert_close(ours["penalty"], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mse_total, theirs["mse"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["nll"], theirs["nll"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["loss"], theirs["loss"], rtol=1e-5, atol=1e-5)


def test_step_neighbours_follow_bridge_gap():
    diffusion = GaussianDiffusion.from_schedule("sqrt", 2000)
    for name, case in LOSSES["cases"].items():
        if name == "diffuseq_base" or case["kind"].startswith("l2_noise"):
            continue
        step, t, t_nb, active = case["simi_step"], case["t"], case["t_nb"], case["active"]
        # their choice is one of the two (or, for kl, the one) clamped offsets, with their activity rule
        allowed = [(t - step).clamp(0, 1999)] + ([] if case["kind"] == "kl" else [(t + step).clamp(0, 1999)])
        assert all(any(int(a[i]) == int(t_nb[i]) for a in allowed) for i in range(len(t))), name
        assert torch.equal(active, (t_nb != 0) & (t_nb != 1999)), name
        penalty = DistancePenalty.create(case["kind"], case["simi_lambda"], diffusion, step)
        torch.manual_seed(0)
        ours, ours_active = penalty.neighbours.draw(t.repeat(200))
        assert set(ours.tolist()) == {int(a[i]) for a in allowed for i in range(len(t))}
        assert torch.equal(ours_active, (ours != 0) & (ours != 1999))


def test_noise_neighbour_draws_cover_bridge_gaps_support():
    maps = json.loads((FIXTURES / "noise_maps.json").read_text())["sqrt_2000_0.05"]
    up, down = {int(k): v for k, v in maps["up"].items()}, {int(k): v for k, v in maps["down"].items()}
    diffusion = GaussianDiffusion.from_schedule("sqrt", 2000)
    for kind in ("l2_noise", "l2_noise_random"):
        penalty = DistancePenalty.create(kind, -2.0, diffusion, 10, 0.05)
        for t in (1, 5, 300, 1000, 1900, 1990, 1999):
            torch.manual_seed(t)
            nb, active = penalty.neighbours.draw(torch.full((50000,), t))
            theirs = set()
            if t in up and up[t] != t:
                theirs |= {up[t]} if kind == "l2_noise" else set(range(t + 1, up[t] + 1))
            if t in down and down[t] != t:
                theirs |= {down[t]} if kind == "l2_noise" else set(range(down[t], t))
            assert set(nb[active].tolist()) == theirs, (kind, t)
            assert torch.equal(active, nb != t)


TRAINING = load("training.pt")


@pytest.mark.parametrize("name", [k for k in sorted(TRAINING) if k != "meta"])
def test_optimizer_steps_match_the_original_training_loop(name, tmp_path, monkeypatch, denoiser_fixture):
    run = TRAINING[name]
    settings = run["settings"]
    penalty = ({"simi_penalty": settings["simi_penalty"], "simi_lambda": -2.0, "simi_step": 10, "simi_noise": 0.05}
               if settings["simi_penalty"] else {})
    trainer = golden_trainer(tmp_path, settings, denoiser_fixture["bert_config"], **penalty)
    if settings["resume_step"]:
        other = tmp_path / "base_run"  # post-training starts from another run's files: weights and EMA only
        other.mkdir()
        ckpt.atomic_save(run["resume_model"], other / "model000100.pt")
        ckpt.atomic_save(run["resume_ema"], other / "ema_0.9_000100.pt")
        ckpt.atomic_save({"not": torch.zeros(1)}, other / "opt000100.pt")  # never read: a fresh optimizer
        trainer.load(other / "model000100.pt", exact=False)
        assert trainer.step == settings["resume_step"]
    else:
        trainer.model.load_state_dict(run["start"])
        for rate in trainer.ema_rates:
            for dst, src in zip(trainer.ema[rate], trainer.params):
                dst.data.copy_(src)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, run["start"][key]), key

    ids, mask = run["ids"], run["mask"]
    trainer.batches = iter([(ids, mask)] * settings["steps"])
    samples = [(t, w) for record in run["records"] for t, w in zip(record["t"], record["weights"])]
    monkeypatch.setattr(trainer.timestep_sampler, "sample", lambda batch, device, generator=None: samples.pop(0))
    draws = []
    for record in run["records"]:
        per_micro = len(record["draws"]) // len(record["t"])
        for m in range(len(record["t"])):
            d = record["draws"][m * per_micro:(m + 1) * per_micro]
            if settings["simi_penalty"]:
                draws.append(LossDraws(d[0], d[1], record["t_nb"][m], record["active"][m], d[-1]))
            else:
                draws.append(LossDraws(d[0], d[1]))
    monkeypatch.setattr(LossDraws, "sample", classmethod(lambda cls, *args, **kwargs: draws.pop(0)))
    trainer.model.train()
    for record in run["records"]:
        assert trainer.train_step(trainer.model, with_nll=False) is not None
        assert trainer.opt.param_groups[0]["lr"] == pytest.approx(record["lr"], rel=1e-12)
    assert not draws and not samples
    assert trainer.step == settings["resume_step"] + settings["steps"]
    # The key biases get a gradient that is zero up to rounding (softmax ignores a shift shared by all
    # keys), which Adam scales up to +-lr: rounding noise in both implementations, not compared.
    final = trainer.model.state_dict()
    names = [n for n, _ in trainer.model.named_parameters()]
    assert names == run["param_names"]
    for key, value in run["final"].items():
        if not key.endswith("attention.self.key.bias"):
            torch.testing.assert_close(final[key], value, rtol=1e-5, atol=2e-6, msg=key)
    for key, ours, theirs in zip(names, trainer.ema[trainer.ema_rates[0]], run["ema"]):
        if not key.endswith("attention.self.key.bias"):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-6, msg=key)
    if "sampler" in run:
        assert torch.equal(trainer.timestep_sampler.loss_counts, run["sampler"]["counts"])
        torch.testing.assert_close(trainer.timestep_sampler.loss_history, run["sampler"]["history"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(trainer.timestep_sampler.weights(), run["sampler"]["weights"])
