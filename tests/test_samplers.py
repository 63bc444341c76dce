"""The reverse samplers: one contract every sampler passes, the config's one resolution rule, and DPM-Solver++
against diffusers' scheduler."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from diffuseq.errors import UserError
from diffuseq.samplers import (SAMPLERS, DPMSolverPlusPlusSampler, ExampleNoise, NearestEmbedding, SamplerConfig,
                               create_sampler, sampler_from_config)

FIXTURE = json.loads((Path(__file__).parent / "golden" / "fixtures" / "dpm_solver.json").read_text())
ETA = {"ddpm": -1.0, "ddim": 0.5, "dpm++": -1.0}
DRAWS = {"ddpm": 9, "ddim": 9, "dpm++": 0}  # noise draws of a 10-step chain: none at t = 0, none if deterministic


class CountingNoise(ExampleNoise):
    """Per-example noise that counts its draws and the truncations asked for."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.calls: list[float] = []

    def draw(self, top_p: float = 0.0) -> torch.Tensor:
        self.calls.append(top_p)
        return super().draw(top_p)


def _chain(sampler, preds, x_init, noise, mask=None, clamp=None):
    """Every sample of a chain fed ``preds`` as the network's outputs, and the x_0 each step used."""
    x, samples, used = x_init, [], []
    for i, t in enumerate(sampler.timesteps):
        out = sampler.step(preds[i].clone(), t, x, noise=noise, mask=mask, clamp=clamp)
        assert out.prev_sample.shape == x_init.shape and out.prev_sample.dtype == x_init.dtype
        x = out.prev_sample
        samples.append(x)
        used.append(out.pred_original_sample)
    return torch.stack(samples), used


# dpm-solver-v2 steps on DiffuSeq-v2's continuous grid, not the respaced steps: its contract is in test_v2_decoding.py
@pytest.mark.parametrize("name", [name for name in SAMPLERS if name != "dpm-solver-v2"])
def test_every_sampler_keeps_the_contract(name):
    config = SamplerConfig(200, "sqrt", "adp_10", ETA[name], sampler=name, top_p=0.5 if name == "ddpm" else 0.0)
    sampler = create_sampler(config)
    assert sampler.name == name and sampler.num_steps == 10
    # timesteps: what the network sees, from the noisiest step down, the original step rescaled to 1000 / T
    kept = sorted(int(t) for t in sampler.process.timestep_map)
    assert sampler.timesteps.dtype == torch.float32
    assert sampler.timesteps.tolist() == [t * 1000 / 200 for t in reversed(kept)]
    # the config round-trips: the same sampler from its saved dict; the sampler never changes the one it was given
    again = sampler_from_config(json.loads(json.dumps(sampler.config.to_dict())))
    assert type(again) is type(sampler) and again.config == sampler.config
    assert list(again.process.timestep_map) == list(sampler.process.timestep_map)
    assert config == SamplerConfig(200, "sqrt", "adp_10", ETA[name], sampler=name, top_p=config.top_p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sampler.config.eta = 0.3
    sampler.set_timesteps("20")
    assert sampler.num_steps == 20 and sampler.config.respacing == "20" and len(sampler.timesteps) == 20
    sampler.set_timesteps("adp_10")
    # a chain: shapes and dtypes kept, the same inputs give the same outputs (the multistep state starts afresh),
    # the last step lands on x_0, noise drawn only where the step adds some (DDPM's truncated by top_p)
    gen = torch.Generator().manual_seed(0)
    x_init, preds = torch.randn(2, 4, 3, generator=gen), torch.randn(10, 2, 4, 3, generator=gen)
    for i, t in enumerate(sampler.timesteps[:3]):  # an abandoned chain: the next one starts afresh
        sampler.step(preds[i].clone(), t, x_init, noise=ExampleNoise(3, range(2), (4, 3), torch.device("cpu")))
    runs = []
    for _ in range(2):
        noise = CountingNoise(7, range(2), (4, 3), torch.device("cpu"))
        runs.append(_chain(sampler, preds, x_init, noise)[0])
        assert noise.calls == [config.top_p] * DRAWS[name]
    assert torch.equal(runs[0], runs[1])
    torch.testing.assert_close(runs[0][-1], preds[-1])


def test_the_step_clamps_on_the_target_positions_by_the_clamp_step_rule_then_clips():
    gen = torch.Generator().manual_seed(1)
    embeddings = torch.randn(12, 3, generator=gen)
    x_init, preds = torch.randn(2, 4, 3, generator=gen), torch.randn(10, 2, 4, 3, generator=gen) * 3
    mask = torch.tensor([[False, True, True, True], [False, False, True, True]])
    noise = ExampleNoise(1, range(2), (4, 3), torch.device("cpu"))
    sampler = create_sampler(SamplerConfig(100, "sqrt", "10", clamp_step=4, clip_denoised=True))
    _, used = _chain(sampler, preds, x_init, noise, mask, NearestEmbedding(embeddings))
    for index, (pred, x0) in enumerate(zip(preds, used)):
        clamped = pred.clone()
        if 9 - index >= 4:  # respaced index i = 9 - step: clamped while i >= clamp_step
            clamped[mask] = NearestEmbedding(embeddings)(pred[mask])
        assert torch.equal(x0, clamped.clamp(-1, 1))


def test_the_config_resolves_diffuseqs_eta_rule_once_and_refuses_contradictions():
    assert SamplerConfig(100, eta=-1.0).resolve().sampler == "ddpm"
    assert SamplerConfig(100, eta=0.5).resolve() == SamplerConfig(100, eta=0.5, sampler="ddim")
    assert SamplerConfig(100, sampler="ddim").resolve().eta == 0.0  # DDIM without an eta: eta 0
    assert create_sampler(SamplerConfig(100, eta=0.5)).name == "ddim"
    assert create_sampler(SamplerConfig(100, sampler="ddim")).config.eta == 0.0
    with pytest.raises(UserError, match="takes no `eta`"):
        create_sampler(SamplerConfig(100, eta=0.0, sampler="ddpm"))
    with pytest.raises(UserError, match="`sampler` dpm\\+\\+ takes no `eta`"):
        create_sampler(SamplerConfig(100, eta=0.3, sampler="dpm++"))


def _toy(x: torch.Tensor, t: int, weight: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ weight) * (1.5 - t / 1000)


def _run_ours(respacing: str, second_order: bool = True) -> list[torch.Tensor]:
    sampler = create_sampler(SamplerConfig(1000, "sqrt", respacing, sampler="dpm++"))
    assert isinstance(sampler, DPMSolverPlusPlusSampler)
    sampler.second_order = second_order
    weight, x = torch.tensor(FIXTURE["weight"]), torch.tensor(FIXTURE["x_init"])
    samples = []
    for t in sampler.timesteps:  # T = 1000: the network's timestep is the original step
        x = sampler.step(_toy(x, float(t), weight), t, x).prev_sample
        samples.append(x)
    return samples


@pytest.mark.parametrize("respacing", ["adp_10", "20"])
def test_dpm_solver_plus_plus_matches_diffusers_step_by_step(respacing):
    case = FIXTURE["cases"][respacing]
    sampler = create_sampler(SamplerConfig(1000, "sqrt", respacing, sampler="dpm++"))
    assert sorted(int(t) for t in sampler.process.timestep_map) == case["kept"]
    ours = _run_ours(respacing)
    assert len(ours) == len(case["steps"])
    for got, step in zip(ours, case["steps"]):
        torch.testing.assert_close(got, torch.tensor(step["sample"], dtype=got.dtype), rtol=0, atol=1e-5)
    # without the second-order correction it is first order (DDIM), and no longer what diffusers computes
    first_order = _run_ours(respacing, second_order=False)
    assert (first_order[-2] - torch.tensor(case["steps"][-2]["sample"])).abs().max() > 1e-3
