"""The reverse samplers: one contract every sampler passes, and DPM-Solver++ against diffusers' scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffuseq.errors import UserError
from diffuseq.samplers import SAMPLERS, DPMSolverPlusPlusSampler, SamplerConfig, create_sampler, sampler_from_config

FIXTURE = json.loads((Path(__file__).parent / "golden" / "fixtures" / "dpm_solver.json").read_text())
ETA = {"ddpm": -1.0, "ddim": 0.0, "dpm++": -1.0}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_keeps_the_contract(name):
    sampler = create_sampler(SamplerConfig(200, "sqrt", "adp_10", ETA[name], sampler=name))
    assert sampler.name == name and sampler.num_steps == 10 and sampler.timesteps == list(range(9, -1, -1))
    # the config round-trips: the same sampler from its saved dict
    again = sampler_from_config(json.loads(json.dumps(sampler.config.to_dict())))
    assert type(again) is type(sampler) and again.config == sampler.config
    assert list(again.process.timestep_map) == list(sampler.process.timestep_map)
    sampler.set_timesteps("20")
    assert sampler.num_steps == 20 and sampler.config.respacing == "20"
    # a chain: shapes and dtypes kept, the same inputs give the same outputs, the last step lands on x_0
    gen = torch.Generator().manual_seed(0)
    x_init, preds = torch.randn(2, 4, 3, generator=gen), torch.randn(20, 2, 4, 3, generator=gen)
    noises = torch.randn(20, 2, 4, 3, generator=gen)
    runs = []
    for _ in range(2):
        sampler.reset()
        x = x_init
        for i, index in enumerate(sampler.timesteps):
            noise = noises[i] if sampler.uses_noise(index) else torch.zeros_like(x)
            x = sampler.step(preds[i], index, x, noise)
            assert x.shape == x_init.shape and x.dtype == x_init.dtype
        runs.append(x)
    assert torch.equal(runs[0], runs[1])
    torch.testing.assert_close(runs[0], preds[-1])
    assert not sampler.uses_noise(0)


def test_sampler_choice_follows_diffuseqs_eta_rule_and_refuses_contradictions():
    assert create_sampler(SamplerConfig(100, eta=-1.0)).name == "ddpm"
    assert create_sampler(SamplerConfig(100, eta=0.5)).name == "ddim"
    assert create_sampler(SamplerConfig(100, sampler="ddim")).config.eta == 0.0
    with pytest.raises(UserError, match="takes no --eta"):
        create_sampler(SamplerConfig(100, eta=0.0, sampler="ddpm"))
    with pytest.raises(UserError, match="--sampler dpm\\+\\+ takes no --eta"):
        create_sampler(SamplerConfig(100, eta=0.3, sampler="dpm++"))


def _toy(x: torch.Tensor, t: int, weight: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ weight) * (1.5 - t / 1000)


def _run_ours(respacing: str, second_order: bool = True) -> list[torch.Tensor]:
    sampler = create_sampler(SamplerConfig(1000, "sqrt", respacing, sampler="dpm++"))
    assert isinstance(sampler, DPMSolverPlusPlusSampler)
    sampler.second_order = second_order
    weight, x = torch.tensor(FIXTURE["weight"]), torch.tensor(FIXTURE["x_init"])
    samples = []
    for index in sampler.timesteps:
        t = int(sampler.process.timestep_map[index])
        x = sampler.step(_toy(x, t, weight), index, x, torch.zeros_like(x))
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
