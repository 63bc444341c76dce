"""DiffuSeq-v2's decoding side against its code: the DDPM decode of a model with ``mean_embed`` (the chain starts
at noise + the mean; with ``denoise`` each step absorbs tokens into it) and their DPM-Solver decode
(``--sampler dpm-solver-v2``), then both through every front end.

The fixtures ``tests/golden/fixtures/v2_p_sample.pt`` and ``v2_dpm_solver.pt`` were written by
``tests/golden/make_v2_fixtures.py`` from the ``diffuseq-v2`` branch of DiffuSeq with recorded randomness; the tests
feed their draws (and, to check the solver alone, their network's outputs) to this project's chain and compare.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_clean_error, make_toy_dataset, run_script, tiny_args

from diffuseq import DecodeConfig, Seq2SeqDiffusion
from diffuseq.config import parse_decode_args, parse_train_args
from diffuseq.decode_files import run_decode
from diffuseq.diffusion.respace import space_timesteps
from diffuseq.errors import UserError
from diffuseq.model import EncoderConfig, TransformerNetModel
from diffuseq.samplers import (DPMSolverV2Sampler, ExampleNoise, NearestEmbedding, SamplerConfig, create_sampler,
                               denoise, sampler_from_config)
from diffuseq.training.setup import train

FIXTURES = Path(__file__).parent / "golden" / "fixtures"


def load(name: str):
    return torch.load(FIXTURES / name, weights_only=True)


MODEL = load("v2_model.pt")
P_SAMPLE = load("v2_p_sample.pt")
DPM = load("v2_dpm_solver.pt")


def v2_net(with_mean: bool = True) -> TransformerNetModel:
    """The package's denoiser with the fixture's weights (their ``mean_embed`` too, unless not ``with_mean``)."""
    bert, state = MODEL["bert_config"], dict(MODEL["state_dict"])
    encoder = EncoderConfig(num_layers=bert["num_hidden_layers"], hidden_size=bert["hidden_size"],
                            num_heads=bert["num_attention_heads"], intermediate_size=bert["intermediate_size"],
                            attention_dropout=bert["attention_probs_dropout_prob"],
                            max_positions=bert["max_position_embeddings"])
    if not with_mean:
        state.pop("mean_embed")
    vocab, hidden_dim = state["word_embedding.weight"].shape
    net = TransformerNetModel(vocab, hidden_dim, hidden_dim, 0.0, encoder, learned_mean_embed=with_mean)
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


class FedNoise:
    """Hands out recorded draws in order: Gaussian ones (``draw``) and DiffuSeq-v2's uniform ones (``uniform``)."""

    def __init__(self, gaussian: list[torch.Tensor], uniform: list[torch.Tensor] = ()) -> None:
        self.gaussian, self.uniforms = list(gaussian), list(uniform)

    def draw(self, top_p: float = 0.0) -> torch.Tensor:
        return self.gaussian.pop(0)

    def uniform(self) -> torch.Tensor:
        return self.uniforms.pop(0)


class Recorder(torch.nn.Module):
    """A network (``net``, or the outputs in ``replay`` in order) that records its inputs and timesteps; it has
    the absorbing state ``mean_embed`` given."""

    def __init__(self, net, mean_embed: torch.Tensor | None, replay: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.net, self.mean_embed, self.replay = net, mean_embed, replay
        self.inputs: list[torch.Tensor] = []
        self.times: list[torch.Tensor] = []

    def forward(self, x, t, rows=None):
        self.inputs.append(x.clone())
        self.times.append(t.clone())
        return self.replay.pop(0).clone() if self.replay is not None else self.net(x, t)


# ------------------------------------------------------------------------------ DDPM: their p_sample_loop


@pytest.mark.parametrize("name", sorted(P_SAMPLE["cases"]))
def test_the_ddpm_decode_of_a_v2_model_is_their_p_sample_loop(name):
    case = P_SAMPLE["cases"][name]
    steps, rate = case["diffusion_steps"], case["denoise_rate"] if case["denoise"] else 0.0
    sampler = create_sampler(SamplerConfig(steps, "sqrt", clamp_step=case["clamp_step"], denoise_rate=rate))
    net = v2_net()
    ids, mask = P_SAMPLE["ids"], P_SAMPLE["mask"]
    # their draws: the start, one Gaussian per step but the last (which adds no noise), then with denoise one
    # uniform per token per step but the last (whose probability is 0)
    uniforms = list(case["bernoulli"]["uniform"][:-1]) if case["denoise"] else []
    noise = FedNoise([case["x_start_noise"], *case["step_noise"][:-1]], uniforms)
    model = Recorder(net, net.mean_embed)
    with torch.no_grad():
        final = denoise(model, sampler, net.get_embeds(ids), mask, noise,
                        NearestEmbedding(net.word_embedding.weight.detach()))
    assert noise.gaussian == [] and noise.uniforms == []
    assert torch.equal(model.inputs[0], case["x_init_plus_mean"])  # noise + mean_embed on the target positions
    assert torch.equal(torch.stack(model.times), case["call_t"])
    assert torch.equal(case["call_t"][:, 0], sampler.timesteps)
    samples = [*model.inputs[1:], final]  # each step's sample is the next step's input
    for k, (ours, theirs) in enumerate(zip(samples, case["samples"], strict=True)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5, msg=lambda m: f"step {k}: {m}")
    assert torch.equal(net.get_logits(final).argmax(-1), case["tokens"])
    if case["denoise"]:  # tokens were absorbed: whole vectors equal to mean_embed
        absorbed = (torch.stack(samples) == net.mean_embed).all(-1) & mask.bool()
        assert absorbed.any()


# ------------------------------------------------------------------------------ their DPM-Solver decode


@pytest.mark.parametrize("name", sorted(DPM["cases"]))
def test_dpm_solver_v2_is_their_modified_dpm_solver(name):
    case = DPM["cases"][name]
    sampler = create_sampler(SamplerConfig(case["diffusion_steps"], case["noise_schedule"], sampler="dpm-solver-v2",
                                           solver_steps=case["steps"]))
    assert isinstance(sampler, DPMSolverV2Sampler) and sampler.num_steps == case["steps"]
    assert torch.equal(sampler.grid, case["grid"])
    lambdas = torch.stack([m.lambda_ for m in sampler.marginals])
    torch.testing.assert_close(lambdas, case["grid_lambda"], rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.stack([m.sigma for m in sampler.marginals]), case["grid_sigma"], rtol=0,
                               atol=1e-6)
    net = v2_net()
    if case["network"] == "tiny":
        runs = {"network": net, "replayed": list(case["call_out"])}  # theirs replayed: the solver alone
    else:
        weight = case["toy_weight"]
        runs = {"toy": lambda x, t: torch.tanh(x @ weight) * (1.5 - t / 1000.0)[:, None, None]}
    for kind, fn in runs.items():
        # their decoder ignores mean_embed: the chain starts from plain noise though the model has one
        model = Recorder(net if kind == "replayed" else fn, net.mean_embed,
                         replay=list(fn) if kind == "replayed" else None)
        x0s: list[torch.Tensor] = []
        with torch.no_grad():
            final = denoise(model, sampler, case["x_start"], case["mask"], FedNoise([case["noise"]]), None,
                            trajectory=x0s)
        assert torch.equal(model.inputs[0], case["x_noised"]), kind
        assert torch.equal(torch.stack(model.times), case["call_t"]), kind
        assert torch.equal(case["call_t"][:, 0], sampler.timesteps)
        if "call_x" in case:
            torch.testing.assert_close(torch.stack(model.inputs), case["call_x"], rtol=0, atol=1e-5)
        # their intermediates: the first x_0 prediction (their state after the first evaluation), then each update
        ours = torch.stack([x0s[0], *model.inputs[1:], final])
        torch.testing.assert_close(ours, case["intermediates"], rtol=0, atol=1e-5, msg=lambda m: f"{kind}: {m}")
        torch.testing.assert_close(final, case["final"], rtol=0, atol=1e-5)
        assert torch.equal(net.get_logits(final).argmax(-1), case["tokens"]), kind


def test_dpm_solver_v2_grids_config_and_refusals():
    sampler = create_sampler(SamplerConfig(2000, "sqrt", sampler="dpm-solver-v2"))
    assert sampler.config.solver_steps == 10 and sampler.num_steps == 10  # their run_decode_solver.py's --step 10
    saved = json.loads(json.dumps(sampler.config.to_dict()))
    assert saved["solver_steps"] == 10 and "denoise_rate" not in saved
    again = sampler_from_config(saved)
    assert again.config == sampler.config and torch.equal(again.timesteps, sampler.timesteps)
    # a respacing's kept steps n are the grid, at their times (n + 1) / T, where the interpolated log alpha is the
    # discrete schedule's: K kept steps, K - 1 solver steps
    sampler.set_timesteps("adp_10")
    kept = sorted(space_timesteps(2000, "adp_10"), reverse=True)
    assert sampler.config.solver_steps is None and sampler.num_steps == 9
    assert torch.equal(sampler.grid, torch.linspace(0.0, 1.0, 2001)[1:][kept])
    assert torch.equal(sampler.timesteps, sampler.grid[:-1] * 1000.0)
    alphas_cumprod = torch.from_numpy(sampler.base.alphas_cumprod[kept]).float()
    torch.testing.assert_close(torch.stack([m.alpha for m in sampler.marginals]) ** 2, alphas_cumprod, rtol=1e-5,
                               atol=0)
    sampler.set_timesteps("")
    assert sampler.config.solver_steps == 10 and torch.equal(sampler.grid, torch.linspace(1.0, 1 / 2000, 11))
    # a chain abandoned midway does not leak into the next one
    gen = torch.Generator().manual_seed(0)
    x, outs = torch.randn(2, 5, 4, generator=gen), torch.randn(10, 2, 5, 4, generator=gen)
    sampler.step(outs[0], sampler.timesteps[0], x)
    sampler.step(outs[1], sampler.timesteps[1], x)
    runs = []
    for _ in range(2):
        y = x
        for k, t in enumerate(sampler.timesteps):
            y = sampler.step(outs[k], t, y).prev_sample
        runs.append(y)
    assert torch.equal(runs[0], runs[1])
    with pytest.raises(UserError, match="`solver_steps` is the number of steps of `sampler` dpm-solver-v2"):
        create_sampler(SamplerConfig(2000, solver_steps=10))
    with pytest.raises(UserError, match="conflicts with the respacing"):
        create_sampler(SamplerConfig(2000, respacing="adp_10", sampler="dpm-solver-v2", solver_steps=10))
    with pytest.raises(UserError, match=">= 2"):
        create_sampler(SamplerConfig(2000, sampler="dpm-solver-v2", solver_steps=1))
    with pytest.raises(UserError, match="at least 3"):
        create_sampler(SamplerConfig(2000, respacing="2", sampler="dpm-solver-v2"))
    with pytest.raises(UserError, match="takes no `eta`"):
        create_sampler(SamplerConfig(2000, eta=0.0, sampler="dpm-solver-v2"))


def test_the_lower_order_rule_is_theirs():
    """Their last step is first order only when the solver makes fewer than 10 steps."""
    for steps, last_is_first_order in ((9, True), (10, False)):
        sampler = create_sampler(SamplerConfig(2000, sampler="dpm-solver-v2", solver_steps=steps))
        x = torch.randn(1, 3, 2, generator=torch.Generator().manual_seed(1))
        outs = [x * (k + 1) for k in range(steps)]
        for k, t in enumerate(sampler.timesteps):
            step = sampler.step(outs[k], t, x)
            x = step.prev_sample
        now, nxt = sampler.marginals[-2], sampler.marginals[-1]
        phi = torch.expm1(-(nxt.lambda_ - now.lambda_))
        first_order = nxt.sigma / now.sigma * step.pred_original_sample - nxt.alpha * phi * step.pred_original_sample
        assert torch.equal(x, first_order) == last_is_first_order


# ------------------------------------------------------------------------------ the other samplers, no mean


@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_ddim_and_dpm_plus_plus_start_at_the_mean_and_absorb_nothing(name):
    """No v2 code has them; with a v2 model they start where its DDPM decode starts, noise + mean_embed on the
    target positions, and their update (like v2's DDPM posterior) ignores the mean; they add no discrete noise."""
    sampler = create_sampler(SamplerConfig(20, "sqrt", "5", sampler=name, denoise_rate=0.5))
    assert sampler.config.denoise_rate == 0.0 and "denoise_rate" not in sampler.config.to_dict()
    net = v2_net()
    ids, mask = P_SAMPLE["ids"], P_SAMPLE["mask"]
    start = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(3))
    model = Recorder(net, net.mean_embed)
    with torch.no_grad():
        denoise(model, sampler, net.get_embeds(ids), mask, FedNoise([start]), None)  # FedNoise: no uniform left
    target = mask.bool().unsqueeze(-1)
    assert torch.equal(model.inputs[0], torch.where(target, start + net.mean_embed, net.get_embeds(ids)))
    assert len(model.inputs) == 5


def test_a_model_without_mean_decodes_as_before():
    """No mean_embed: the chain starts from the noise itself and nothing is absorbed, whatever the config says;
    the saved settings of such a decode have no DiffuSeq-v2 key (the meta files of earlier decodes still match)."""
    assert set(SamplerConfig(2000, respacing="adp_20").resolve().to_dict()) == {
        "num_train_timesteps", "noise_schedule", "respacing", "eta", "clamp_step", "clip_denoised", "top_p",
        "sigma_small", "sampler"}
    net = v2_net(with_mean=False)
    ids, mask = P_SAMPLE["ids"], P_SAMPLE["mask"]
    sampler = create_sampler(SamplerConfig(10, "sqrt", "4", denoise_rate=0.5))
    draws = list(torch.randn(4, 2, 12, 16, generator=torch.Generator().manual_seed(4)))
    model = Recorder(net, None)
    with torch.no_grad():
        denoise(model, sampler, net.get_embeds(ids), mask, FedNoise(draws), None)
    assert torch.equal(model.inputs[0], torch.where(mask.bool().unsqueeze(-1), draws[0], net.get_embeds(ids)))


def test_absorbing_draws_are_per_example():
    """One uniform per token from each example's own generator, after its Gaussian draws: an example absorbs the
    same tokens in any batch."""
    both = ExampleNoise(5, [7, 8], (6, 4), torch.device("cpu"))
    alone = ExampleNoise(5, [8], (6, 4), torch.device("cpu"))
    for noise in (both, alone):
        noise.draw()
    u_both, u_alone = both.uniform(), alone.uniform()
    assert u_both.shape == (2, 6) and torch.equal(u_both[1:], u_alone)
    assert torch.equal(both.draw()[1:], alone.draw())

    class Ordered(ExampleNoise):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            self.calls: list[str] = []

        def draw(self, top_p: float = 0.0) -> torch.Tensor:
            self.calls.append("gaussian")
            return super().draw(top_p)

        def uniform(self) -> torch.Tensor:
            self.calls.append("uniform")
            return super().uniform()

    noise = Ordered(5, [7, 8], (6, 4), torch.device("cpu"))
    sampler = create_sampler(SamplerConfig(10, "sqrt", "4", denoise_rate=0.5))
    with torch.no_grad():
        denoise(Recorder(lambda x, t: x * 0.5, torch.zeros(4)), sampler, torch.zeros(2, 6, 4),
                torch.ones(2, 6, dtype=torch.long), noise, None)
    assert noise.calls == ["gaussian"] + ["gaussian", "uniform"] * 3  # none at the last step


@pytest.mark.parametrize("settings", [{"sampler": "dpm-solver-v2"}, {"denoise_rate": 1.0}])
def test_a_v2_chain_of_an_example_is_bitwise_the_same_in_any_batch(settings):
    """With a network that treats rows alone (this one: elementwise) every number of an example's chain is the
    same in any batch, absorbing draws included."""
    sampler = create_sampler(SamplerConfig(20, "sqrt", "" if "sampler" in settings else "8", **settings))
    mean = torch.full((4,), 0.3)
    model = Recorder(lambda x, t: torch.tanh(x) * (1.2 - t / 1000.0)[:, None, None], mean)
    x_start = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(5))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]] * 3)
    with torch.no_grad():
        batch = denoise(model, sampler, x_start, mask, ExampleNoise(9, range(3), (6, 4), torch.device("cpu")), None)
        alone = [denoise(model, sampler, x_start[i:i + 1], mask[i:i + 1],
                         ExampleNoise(9, [i], (6, 4), torch.device("cpu")), None) for i in range(3)]
    assert torch.equal(batch, torch.cat(alone))
    if "denoise_rate" in settings:  # rate 1 at T = 20: tokens were absorbed (the network saw them)
        assert any((x == mean).all(-1).any() for x in model.inputs)


# ------------------------------------------------------------------------------ the front ends


@pytest.fixture(scope="module")
def v2_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2decode")
    data = make_toy_dataset(root / "toy", n_test=6)
    flags = tiny_args(data, root / "run", learning_steps=10, save_interval=10, learned_mean_embed=True, denoise=True,
                      denoise_rate=0.5)
    train(parse_train_args(flags))
    return root / "run" / "model000010.pt"


def test_every_front_end_decodes_a_v2_model_with_either_sampler(v2_checkpoint, tmp_path):
    model = Seq2SeqDiffusion.from_checkpoint(v2_checkpoint, device="cpu")
    assert model.model.mean_embed is not None and model.denoise_rate == 0.5
    sources = ["the cat sat on", "red house", "a big dog ran to the sea"]
    # the API: DDPM with the checkpoint's absorbing rate, and their solver; the text does not depend on batching
    # (the x_0 predictions differ by the network's rounding in another batch shape, where not clamped)
    for settings in ({"respacing": "adp_10"}, {"sampler": "dpm-solver-v2", "solver_steps": 5},
                     {"sampler": "dpm-solver-v2", "respacing": "adp_10"}):
        one = model.generate(sources, seeds=[3], batch_size=1, return_x0=True, **settings)
        three = model.generate(sources, seeds=[3], batch_size=3, return_x0=True, **settings)
        assert one.first == three.first, settings
        for x0_one, x0_three in zip(one.x0[0], three.x0[0], strict=True):
            torch.testing.assert_close(x0_one, x0_three, rtol=0, atol=1e-5)
    assert model.sampling(respacing="10").denoise_rate == 0.5
    with pytest.raises(UserError, match="denoise_rate 0.0"):
        model.generate(sources, SamplerConfig(model.num_timesteps, model.config.noise_schedule, "10"))
    # a decode of a split: the settings saved, the solver's steps in the file name
    runs = {}
    for sampler, extra in (("ddpm", {}), ("dpm-solver-v2", {"solver_steps": 5})):
        config = DecodeConfig(model_path=str(v2_checkpoint), split="test", out_dir=str(tmp_path / sampler),
                              sampler=sampler, decode_respacing="adp_10" if sampler == "ddpm" else "", **extra)
        config.validate()
        runs[sampler] = run_decode(config)
    ddpm = json.loads(runs["ddpm"].meta.read_text())["settings"]["sampler"]
    solver_meta = json.loads(runs["dpm-solver-v2"].meta.read_text())
    assert ddpm["denoise_rate"] == 0.5 and "solver_steps" not in ddpm
    assert solver_meta["settings"]["sampler"]["solver_steps"] == 5 and solver_meta["denoising_steps"] == 5
    assert "denoise_rate" not in solver_meta["settings"]["sampler"]
    assert runs["dpm-solver-v2"].name.endswith("_samplerdpm-solver-v2_solversteps5")
    assert DecodeConfig.load(runs["dpm-solver-v2"].meta).solver_steps == 5
    # the command line, as DiffuSeq-v2's run_decode_solver.sh decodes (their --step is --solver_steps here)
    (tmp_path / "sources.txt").write_text("\n".join(sources) + "\n")
    args = ["--model_path", str(v2_checkpoint), "--input", str(tmp_path / "sources.txt"), "--seed2", "3",
            "--sampler", "dpm-solver-v2", "--solver_steps", "5", "--batch_size", "2"]
    printed = run_script("sample_seq2seq.py", args)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines() == model.generate(sources, seeds=[3], sampler="dpm-solver-v2",
                                                         solver_steps=5).first


def test_the_solver_flags_refuse_what_they_cannot_mean():
    config = parse_decode_args(["--model_path", "run/model000001.pt", "--sampler", "dpm-solver-v2"])
    assert config.sampling(2000, "sqrt", 0.5).solver_steps is None  # the sampler fills its default
    assert create_sampler(config.sampling(2000, "sqrt", 0.5)).config.solver_steps == 10
    with pytest.raises(UserError, match="`solver_steps` is the number of steps"):
        parse_decode_args(["--model_path", "m.pt", "--solver_steps", "5"])
    with pytest.raises(UserError, match="conflicts with the respacing"):
        parse_decode_args(["--model_path", "m.pt", "--sampler", "dpm-solver-v2", "--solver_steps", "5",
                           "--decode_respacing", "adp_10"])
    stepped = parse_decode_args(["--model_path", "m.pt", "--sampler", "dpm-solver-v2", "--step", "10"])
    with pytest.raises(UserError, match="DiffuSeq's 10-step DDIM, not `sampler` dpm-solver-v2.*`solver_steps`"):
        stepped.sampling(2000, "sqrt")
    result = run_script("sample_seq2seq.py", ["--model_path", "m.pt", "--solver_steps", "5"])
    assert_clean_error(result, "solver_steps", "dpm-solver-v2")
