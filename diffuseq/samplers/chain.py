"""The reverse chain of a batch: from noise on the target positions to x_0, with any reverse sampler."""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from .base import ReverseSampler
from .clamp import NearestEmbedding
from .noise import ExampleNoise


def denoise(model: nn.Module, sampler: ReverseSampler, x_start: torch.Tensor, mask: torch.Tensor,
            noise: ExampleNoise, clamp: NearestEmbedding | None, timings: dict[str, float] | None = None,
            on_step: Callable[[], object] | None = None,
            trajectory: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Run the reverse process on a batch; source positions (``mask == 0``) stay ``x_start``.

    A self-conditioned model (``model.self_cond``) reads the previous step's raw x_0
    prediction on the target positions (nothing at the first step).

    Returns x_0 after the last step. ``timings`` (if given) accumulates the seconds spent in
    the network and in clamping; ``on_step`` (if given) is called after each step;
    ``trajectory`` (if given) receives the x_0 prediction of every step, as the step used it.
    """
    sampler.reset()
    target = mask.bool()
    is_target = target.unsqueeze(-1)
    x = torch.where(is_target, noise.draw(), x_start)
    self_cond = getattr(model, "self_cond", False)
    previous = None
    for index in sampler.timesteps:
        started = time.perf_counter()
        ts = sampler.model_timesteps(index, x.size(0), x.device)
        pred_x0 = model(x, ts, target, previous) if self_cond else model(x, ts, target)
        if self_cond:  # the raw prediction (rows outside ``target`` are zeros); clamping below works in place
            previous = pred_x0.clone()
        if timings is not None:
            _sync(x.device)
            timings["network"] = timings.get("network", 0.0) + time.perf_counter() - started
            started = time.perf_counter()
        pred_x0 = sampler.denoised(pred_x0, index, clamp, target)
        if trajectory is not None:
            trajectory.append(pred_x0.detach().clone())
        if timings is not None:
            _sync(x.device)
            timings["clamp"] = timings.get("clamp", 0.0) + time.perf_counter() - started
        step_noise = noise.draw(sampler.noise_top_p) if sampler.uses_noise(index) else torch.zeros_like(x)
        x = sampler.step(pred_x0.to(x.dtype), index, x, step_noise)
        x = torch.where(is_target, x, x_start)
        if on_step is not None:
            on_step()
    return x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
