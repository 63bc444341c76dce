"""Timestep sampling for training: ``uniform``, ``lossaware`` (importance sampling) and ``fixstep``.

A sampler draws t for a batch and returns importance weights 1 / (T p_t) so
that the weighted loss stays an unbiased estimate of the uniform one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..errors import UserError

TIMESTEP_SAMPLERS = ("uniform", "lossaware", "fixstep")


class TimestepSampler:
    """Base class: a distribution over the T timesteps."""

    def __init__(self, num_timesteps: int) -> None:
        self.num_timesteps = num_timesteps

    def weights(self) -> torch.Tensor:
        """Unnormalised float64 weights of each timestep."""
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch_size`` timesteps; return (t as int64, importance weights as float32) on ``device``."""
        p = self.weights()
        p = p / p.sum()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[t])
        return t.to(device), weights.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the losses of this rank's examples (a no-op for fixed samplers)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` saved."""


class UniformTimesteps(TimestepSampler):
    """Every timestep equally likely."""


class FixStepTimesteps(TimestepSampler):
    """DiffuSeq's ``fixstep``: weight 1 on the first half of the timesteps, 0.5 on the second half."""

    def weights(self) -> torch.Tensor:
        half = self.num_timesteps // 2
        return torch.cat([torch.ones(half, dtype=torch.float64),
                          torch.full((half,), 0.5, dtype=torch.float64)])


class LossAwareTimesteps(TimestepSampler):
    """p_t proportional to sqrt(E[loss_t^2]) over the last ``history`` losses of t.

    Uniform until every timestep has ``history`` losses; then mixed with
    ``uniform_prob`` uniform mass. Losses are all-gathered across ranks so every
    rank holds the same history.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_timesteps)
        self.history = history
        self.uniform_prob = uniform_prob
        self.loss_history = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up():
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        w = self.loss_history.pow(2).mean(dim=-1).sqrt()
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        t, losses = t.detach(), losses.detach().float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered_t = [torch.empty_like(t) for _ in range(dist.get_world_size())]
            gathered_l = [torch.empty_like(losses) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered_t, t)
            dist.all_gather(gathered_l, losses)
            t, losses = torch.cat(gathered_t), torch.cat(gathered_l)
        self.record(t.cpu().tolist(), losses.cpu().double().tolist())

    def record(self, timesteps: list[int], losses: list[float]) -> None:
        """Append losses to each timestep's history (oldest dropped when full), in order."""
        for t, loss in zip(timesteps, losses):
            count = int(self.loss_counts[t])
            if count == self.history:
                self.loss_history[t, :-1] = self.loss_history[t, 1:].clone()
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, count] = loss
                self.loss_counts[t] = count + 1

    def state_dict(self) -> dict:
        return {"loss_history": self.loss_history.clone(), "loss_counts": self.loss_counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("loss_history") is not None and state["loss_history"].shape == self.loss_history.shape:
            self.loss_history.copy_(state["loss_history"])
            self.loss_counts.copy_(state["loss_counts"])


def create_timestep_sampler(name: str, num_timesteps: int) -> TimestepSampler:
    """The sampler called ``name`` (``uniform`` or ``lossaware``)."""
    if name == "uniform":
        return UniformTimesteps(num_timesteps)
    if name in ("lossaware", "loss-second-moment"):
        return LossAwareTimesteps(num_timesteps)
    if name == "fixstep":
        return FixStepTimesteps(num_timesteps)
    raise UserError(f"unknown --schedule_sampler {name!r}; choose one of {', '.join(TIMESTEP_SAMPLERS)}")
