"""Fixtures from diffusers' DPMSolverMultistepScheduler, for tests/test_samplers.py (run by hand).

    pip install torch==2.13.0 diffusers        # in a separate environment
    python tests/golden/make_dpm_fixtures.py

For two grids of this project's sqrt schedule (T = 1000: ``adp_10`` and a uniform 20), it runs
diffusers' scheduler (``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``prediction_type="sample"``,
the same betas, the grid as custom timesteps) on a fixed toy denoiser and records every step:
the timestep, the toy's x_0 prediction and the sample after the step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

HERE = Path(__file__).resolve().parent
T = 1000


def sqrt_betas(steps: int) -> np.ndarray:
    """The sqrt schedule (Diffusion-LM / DiffuSeq): alpha_bar(s) = 1 - sqrt(s + 1e-4)."""
    def alpha_bar(s: float) -> float:
        return 1 - math.sqrt(s + 0.0001)

    return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)])


def toy(x: torch.Tensor, t: int, weight: torch.Tensor) -> torch.Tensor:
    """A fixed denoiser: tanh(x W) scaled down as t grows."""
    return torch.tanh(x @ weight) * (1.5 - t / T)


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 8, generator=gen, dtype=torch.float64) * 0.5
    x_init = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64)
    # the kept steps of this project's respacings at T = 1000 (tests/test_dpm_solver.py checks them)
    grids = {"adp_10": [0, 334, 417, 500, 583, 667, 750, 833, 916, 999],
             "20": [0, 53, 105, 158, 210, 263, 315, 368, 421, 473, 526, 578, 631, 684, 736, 789, 841, 894, 946, 999]}
    cases = {}
    for name, kept in grids.items():
        scheduler = DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=sqrt_betas(T), solver_order=2,
                                                algorithm_type="dpmsolver++", prediction_type="sample",
                                                lower_order_final=True, final_sigmas_type="zero")
        scheduler.set_timesteps(timesteps=sorted(kept, reverse=True))
        x = x_init.clone()
        steps = []
        for t in scheduler.timesteps.tolist():
            pred = toy(x, t, weight)
            x = scheduler.step(pred, t, x).prev_sample
            steps.append({"t": int(t), "pred_x0": pred.tolist(), "sample": x.tolist()})
        cases[name] = {"kept": sorted(kept), "steps": steps}
    out = {"generated_by": "tests/golden/make_dpm_fixtures.py", "diffusers": diffusers.__version__,
           "weight": weight.tolist(), "x_init": x_init.tolist(), "cases": cases}
    (HERE / "fixtures" / "dpm_solver.json").write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
