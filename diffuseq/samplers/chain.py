"""The reverse chain of a batch: from noise on the target positions to x_0, with any reverse sampler."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .base import ReverseSampler
from .clamp import NearestEmbedding
from .noise import ExampleNoise


def denoise(model: nn.Module, sampler: ReverseSampler, x_start: torch.Tensor, mask: torch.Tensor,
            noise: ExampleNoise, clamp: NearestEmbedding | None, on_step: Callable[[], object] | None = None,
            trajectory: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Run the reverse process on a batch; source positions (``mask == 0``) stay ``x_start``.

    The chain starts from one draw of ``noise`` on the target positions; at each of the sampler's
    ``timesteps`` the network predicts x_0 and the sampler's ``step`` (clamping with ``clamp``,
    drawing its own noise from ``noise``) gives the next sample. A self-conditioned model
    (``model.self_cond``) reads the previous step's raw x_0 prediction on the target positions
    (nothing at the first step). A DiffuSeq-v2 model's absorbing state (``model.mean_embed``, if not
    None) is added to that first draw where the sampler has ``mean_start``, and handed to every step.

    Returns x_0 after the last step. ``on_step`` (if given) is called after each step;
    ``trajectory`` (if given) receives the x_0 prediction of every step, as the step used it.
    """
    target = mask.bool()
    is_target = target.unsqueeze(-1)
    absorbing = getattr(model, "mean_embed", None)
    start = noise.draw()
    if absorbing is not None and sampler.mean_start:
        start = start + absorbing
    x = torch.where(is_target, start, x_start)
    self_cond = getattr(model, "self_cond", False)
    previous = None
    for t in sampler.timesteps:
        ts = torch.full((x.size(0),), float(t), dtype=torch.float32, device=x.device)
        pred_x0 = model(x, ts, target, previous) if self_cond else model(x, ts, target)
        if self_cond:  # the raw prediction (rows outside ``target`` are zeros); the step clamps it in place
            previous = pred_x0.clone()
        out = sampler.step(pred_x0, t, x, noise=noise, mask=target, clamp=clamp, absorbing=absorbing)
        if trajectory is not None:
            trajectory.append(out.pred_original_sample.detach().clone())
        x = torch.where(is_target, out.prev_sample, x_start)
        if on_step is not None:
            on_step()
    return x
