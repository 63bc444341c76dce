"""Timestep distributions for training: ``uniform``, ``lossaware`` (importance sampling) and ``fixstep``.

A distribution draws t for a batch and returns importance weights 1 / (T p_t) so
that the weighted loss stays an unbiased estimate of the uniform one. ``--schedule_sampler``
names one of ``TIMESTEP_DISTRIBUTIONS``.

Drawing and recording never synchronise the host with an accelerator: t is
drawn on the device it is used on, and the loss-aware history lives there too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..errors import UserError

# what ``TimestepDistribution.snapshot`` returns: opaque, only to be handed back to ``restore``
Snapshot = tuple[torch.Tensor, torch.Tensor] | None


class TimestepDistribution:
    """Base class: a fixed distribution over the T timesteps."""

    def __init__(self, num_timesteps: int) -> None:
        self.num_timesteps = num_timesteps
        self._probabilities: dict[torch.device, torch.Tensor] = {}

    def weights(self) -> torch.Tensor:
        """Unnormalised float64 weights of each timestep."""
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    def probabilities(self, device: torch.device | str) -> torch.Tensor:
        """The normalised float64 distribution on ``device`` (computed once per device: it never changes)."""
        device = torch.device(device)
        if device not in self._probabilities:
            p = self.weights()
            self._probabilities[device] = (p / p.sum()).to(device)
        return self._probabilities[device]

    def sample(self, batch_size: int, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch_size`` timesteps on ``device`` (``generator``, if given, must live there).

        Returns (t as int64, importance weights 1 / (T p_t) as float32), both on ``device``.
        """
        p = self.probabilities(device)
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[t])
        return t, weights.float()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the losses of this rank's examples (a no-op for fixed distributions)."""

    def snapshot(self) -> Snapshot:
        """The recorded state, to ``restore`` if the losses recorded after it must be forgotten.

        The training loop takes one at the start of each optimizer step and restores it when
        the step is skipped for a non-finite gradient, so a skipped step's losses never enter
        the history. None for distributions that record nothing.
        """
        return None

    def restore(self, snapshot: Snapshot) -> None:
        """Return to the state of ``snapshot`` (from ``snapshot()`` of this distribution); the snapshot stays valid."""

    def state_dict(self) -> dict:
        """The recorded state as CPU tensors (checkpoints are read with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` saved."""


class UniformTimesteps(TimestepDistribution):
    """Every timestep equally likely."""


class FixStepTimesteps(TimestepDistribution):
    """DiffuSeq's ``fixstep``: weight 1 on the first half of the timesteps, 0.5 on the second half."""

    def weights(self) -> torch.Tensor:
        half = self.num_timesteps // 2
        return torch.cat([torch.ones(half, dtype=torch.float64),
                          torch.full((half,), 0.5, dtype=torch.float64)])


class LossAwareTimesteps(TimestepDistribution):
    """p_t proportional to sqrt(E[loss_t^2]) over the last ``history`` losses of t.

    Uniform until every timestep has ``history`` losses; then mixed with
    ``uniform_prob`` uniform mass. Losses are all-gathered across ranks (in rank
    order) so every rank holds the same history. The history (``loss_history``
    [T, history] float64, ``loss_counts`` [T] int64) starts on the CPU and moves
    to the device of the tensors given to ``update`` or ``sample``; recording,
    weighting and drawing then run there without a host synchronisation.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_timesteps)
        self.history = history
        self.uniform_prob = uniform_prob
        self.loss_history = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.long)

    def _move_to(self, device: torch.device | str) -> None:
        device = torch.device(device)
        if self.loss_history.device != device:
            self.loss_history = self.loss_history.to(device)
            self.loss_counts = self.loss_counts.to(device)

    def warmed_up(self) -> bool:
        """Whether every timestep has a full history (reads the device: not for the training step)."""
        return bool((self.loss_counts == self.history).all())

    def weights(self) -> torch.Tensor:
        """Unnormalised float64 weights, on the history's device: ones until warmed up."""
        w = self.loss_history.pow(2).mean(dim=-1).sqrt()
        w = w / w.sum()
        mixed = w * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps
        return torch.where((self.loss_counts == self.history).all(), mixed, torch.ones_like(mixed))

    def probabilities(self, device: torch.device | str) -> torch.Tensor:
        """The normalised distribution of the current history, on ``device`` (where the history moves)."""
        self._move_to(device)
        p = self.weights()
        return p / p.sum()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """All-gather (t, losses) across ranks and append each loss, as float32, to its timestep's history."""
        t, losses = t.detach(), losses.detach().float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered_t = [torch.empty_like(t) for _ in range(dist.get_world_size())]
            gathered_l = [torch.empty_like(losses) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered_t, t)
            dist.all_gather(gathered_l, losses)
            t, losses = torch.cat(gathered_t), torch.cat(gathered_l)
        self._move_to(t.device)
        self._append(t.long(), losses.to(t.device, torch.float64))

    def record(self, timesteps: list[int], losses: list[float]) -> None:
        """Append float64 ``losses`` to the histories of ``timesteps``, in order, on this rank only."""
        device = self.loss_history.device
        self._append(torch.as_tensor(timesteps, dtype=torch.long, device=device),
                     torch.as_tensor(losses, dtype=torch.float64, device=device))

    def _append(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append ``losses`` [N] to the histories of ``t`` [N] as if one at a time, in order.

        Each timestep's old entries followed by its new ones (in batch order) form one
        sequence, of which the last ``history`` are kept: the old entries shift left by the
        number that fall off the front, and the new ones land after them.
        """
        num, size = self.num_timesteps, self.history
        device = self.loss_history.device
        counts = self.loss_counts
        added = torch.zeros(num, dtype=torch.long, device=device).scatter_add_(0, t, torch.ones_like(t))
        t_sorted, order = torch.sort(t, stable=True)
        first = torch.cumsum(added, 0) - added  # where each timestep's run starts in the sorted batch
        occurrence = torch.arange(t.numel(), device=device) - first[t_sorted]
        total = counts + added
        dropped = (total - size).clamp(min=0)
        # old entries shift left by the number dropped; the columns whose source is clamped are
        # all overwritten by new entries below
        source = (torch.arange(size, device=device) + dropped[:, None]).clamp(max=size - 1)
        shifted = self.loss_history.gather(1, source)
        # new entries that would fall off the front go to a spare last column, cut off below
        position = (counts - dropped)[t_sorted] + occurrence
        position = torch.where(position >= 0, position, size)
        merged = torch.cat([shifted, shifted.new_zeros(num, 1)], dim=1)
        merged.index_put_((t_sorted, position), losses[order])
        self.loss_history.copy_(merged[:, :size])
        self.loss_counts.copy_(total.clamp(max=size))

    def snapshot(self) -> Snapshot:
        """Clones of the history and counts, on their device (see ``TimestepDistribution.snapshot``)."""
        return self.loss_history.clone(), self.loss_counts.clone()

    def restore(self, snapshot: Snapshot) -> None:
        """Copy a ``snapshot()`` back into the history, on its current device, dropping what came after."""
        history, counts = snapshot
        self.loss_history.copy_(history)
        self.loss_counts.copy_(counts)

    def state_dict(self) -> dict:
        return {"loss_history": self.loss_history.to("cpu", copy=True),
                "loss_counts": self.loss_counts.to("cpu", copy=True)}

    def load_state_dict(self, state: dict) -> None:
        """Copy a saved history onto the history's current device (ignored if its shape differs)."""
        if state.get("loss_history") is not None and state["loss_history"].shape == self.loss_history.shape:
            self.loss_history.copy_(state["loss_history"])
            self.loss_counts.copy_(state["loss_counts"])


TIMESTEP_DISTRIBUTIONS: dict[str, type[TimestepDistribution]] = {
    "uniform": UniformTimesteps, "lossaware": LossAwareTimesteps, "fixstep": FixStepTimesteps}


def check_timestep_distribution(name: str) -> None:
    """Raise a UserError unless ``name`` is one of ``TIMESTEP_DISTRIBUTIONS``."""
    if name not in TIMESTEP_DISTRIBUTIONS:
        raise UserError(f"unknown `schedule_sampler` {name!r}; choose one of {', '.join(TIMESTEP_DISTRIBUTIONS)}")


def create_timestep_distribution(name: str, num_timesteps: int) -> TimestepDistribution:
    """The distribution ``--schedule_sampler name`` selects, over ``num_timesteps`` steps."""
    check_timestep_distribution(name)
    return TIMESTEP_DISTRIBUTIONS[name](num_timesteps)
