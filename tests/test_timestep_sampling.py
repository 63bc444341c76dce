"""The timestep distributions against a copy of their earlier, host-side implementation.

``update`` records a batch with tensor operations on the history's device and ``sample`` draws
on the requested device; on a CPU both must give bitwise what the sequential, list-based code
gave, and neither may read a tensor back to the host.
"""

from __future__ import annotations

import io
import random
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from diffuseq.diffusion import timesteps
from diffuseq.diffusion.timesteps import (FixStepTimesteps, LossAwareTimesteps, TimestepDistribution,
                                          UniformTimesteps, create_timestep_distribution)

SPECIALS = [float("inf"), float("-inf"), -0.0, 0.0, 1e-40, 3.4e38]


# -- the earlier implementation, the oracle ------------------------------------------------------

class OldSampler:
    """The earlier ``TimestepDistribution.sample``: multinomial on the CPU, then copied to ``device``."""

    def __init__(self, weights: torch.Tensor) -> None:
        self._weights = weights

    def weights(self) -> torch.Tensor:
        return self._weights

    def sample(self, batch_size, device="cpu", generator=None):
        p = self.weights()
        p = p / p.sum()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[t])
        return t.to(device), weights.float().to(device)


class OldLossAware(OldSampler):
    """The earlier ``LossAwareTimesteps``: a sequential, list-based history on the CPU (one rank)."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(torch.ones(num_timesteps, dtype=torch.float64))
        self.num_timesteps, self.history, self.uniform_prob = num_timesteps, history, uniform_prob
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
        self.record(t.cpu().tolist(), losses.cpu().double().tolist())

    def record(self, timesteps_: list[int], losses: list[float]) -> None:
        for t, loss in zip(timesteps_, losses):
            count = int(self.loss_counts[t])
            if count == self.history:
                self.loss_history[t, :-1] = self.loss_history[t, 1:].clone()
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, count] = loss
                self.loss_counts[t] = count + 1


def old_fixstep(num_timesteps: int) -> OldSampler:
    half = num_timesteps // 2
    return OldSampler(torch.cat([torch.ones(half, dtype=torch.float64),
                                 torch.full((half,), 0.5, dtype=torch.float64)]))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (NaNs compared by position only)."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    if not torch.equal(nan_a, nan_b):
        return False
    bits = {torch.float64: torch.int64, torch.float32: torch.int32}[a.dtype]
    return torch.equal(torch.where(nan_a, 0, a).view(bits), torch.where(nan_b, 0, b).view(bits))


def same_history(new: LossAwareTimesteps, old: OldLossAware) -> bool:
    return same_bits(new.loss_history, old.loss_history) and torch.equal(new.loss_counts, old.loss_counts)


def random_losses(rng: random.Random, n: int, specials: bool) -> torch.Tensor:
    values = [rng.choice(SPECIALS) if specials and rng.random() < 0.1 else rng.uniform(-3.0, 3.0) for _ in range(n)]
    return torch.tensor(values, dtype=torch.float32)


def random_pair(rng: random.Random, start_state: bool) -> tuple[LossAwareTimesteps, OldLossAware]:
    """A new and an old sampler with the same (random) T, history length and starting state."""
    num, size = rng.randint(1, 6), rng.choice([1, 2, 3, 5, 10])
    new, old = LossAwareTimesteps(num, history=size), OldLossAware(num, history=size)
    if start_state:
        # any state, even values beyond the counts (the sequential code leaves those alone)
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        history = torch.randn(num, size, dtype=torch.float64, generator=gen)
        counts = torch.tensor([rng.choice([0, size, rng.randint(0, size)]) for _ in range(num)])
        new.load_state_dict({"loss_history": history, "loss_counts": counts})
        old.loss_history.copy_(history)
        old.loss_counts.copy_(counts)
    return new, old


# -- recording -----------------------------------------------------------------------------------

def test_vectorised_update_equals_sequential_append():
    rng = random.Random(0)
    for case in range(400):
        new, old = random_pair(rng, start_state=case % 2 == 1)
        num, size = new.num_timesteps, new.history
        for _ in range(rng.randint(1, 4)):
            hot = rng.sample(range(num), rng.randint(1, num))  # few distinct steps: many repeats per step
            n = rng.randint(0, 3 * size * num + 2)
            t = torch.tensor([rng.choice(hot) for _ in range(n)], dtype=torch.long)
            losses = random_losses(rng, n, specials=case % 5 == 0)
            if rng.random() < 0.25:
                new.record(t.tolist(), losses.double().tolist())
                old.record(t.tolist(), losses.double().tolist())
            else:
                new.update(t, losses)
                old.update(t, losses)
            assert same_history(new, old), case


def test_update_keeps_float32_losses_and_record_float64_ones():
    new, old = LossAwareTimesteps(3, history=2), OldLossAware(3, history=2)
    losses = torch.tensor([0.1, 1 / 3, 2.0], dtype=torch.float64)
    new.update(torch.tensor([0, 0, 1]), losses)
    old.update(torch.tensor([0, 0, 1]), losses)
    new.record([2, 2, 2], [0.1, 0.2, 0.3])
    old.record([2, 2, 2], [0.1, 0.2, 0.3])
    assert same_history(new, old)
    assert new.loss_history[0, 0] == torch.tensor(0.1, dtype=torch.float32).double()
    assert new.loss_history[2].tolist() == [0.2, 0.3]


@pytest.mark.parametrize("batch", [
    [0] * 25,                        # one step far more than `history` times
    [1, 0, 1, 2, 1, 1, 0, 2] * 3,    # interleaved repeats
    list(range(4)) * 10,             # exactly reaches the warm-up boundary
    list(range(4)) * 9 + [3, 2, 1],  # one step short of it
    [],
])
def test_update_edge_cases(batch):
    for warm_start in (False, True):
        new, old = LossAwareTimesteps(4), OldLossAware(4)
        if warm_start:
            start = [s for s in range(4) for _ in range(10)]
            new.record(start, [float(i) for i in range(40)])
            old.record(start, [float(i) for i in range(40)])
        losses = torch.arange(len(batch), dtype=torch.float32) + 100
        new.update(torch.tensor(batch, dtype=torch.long), losses)
        old.update(torch.tensor(batch, dtype=torch.long), losses)
        assert same_history(new, old)
        assert new.warmed_up() == old.warmed_up()


def test_update_all_gathers_in_rank_order(monkeypatch):
    ranks = [(torch.tensor([2, 0, 2]), torch.tensor([1.0, 2.0, 3.0])),
             (torch.tensor([0, 1, 2]), torch.tensor([4.0, 5.0, 6.0])),
             (torch.tensor([2, 2, 1]), torch.tensor([7.0, 8.0, 9.0]))]

    def all_gather(out: list[torch.Tensor], tensor: torch.Tensor) -> None:
        for rank, dst in enumerate(out):
            dst.copy_(ranks[rank][0 if tensor.dtype == torch.long else 1])

    fake = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, get_world_size=lambda: 3,
                           all_gather=all_gather)
    monkeypatch.setattr(timesteps, "dist", fake)
    new, old = LossAwareTimesteps(3, history=3), OldLossAware(3, history=3)
    with no_host_sync():
        new.update(*ranks[0])
    old.update(torch.cat([t for t, _ in ranks]), torch.cat([loss for _, loss in ranks]))
    assert same_history(new, old)
    assert new.loss_history[2].tolist() == [6.0, 7.0, 8.0]  # ranks 0, 1, 2: 1, 3 | 6 | 7, 8


# -- weights and draws ---------------------------------------------------------------------------

def test_weights_bitwise_as_before():
    rng = random.Random(1)
    for case in range(200):
        new, old = random_pair(rng, start_state=True)
        if case % 2:  # fill every history: warmed up
            steps = [s for s in range(new.num_timesteps) for _ in range(new.history)]
            rng.shuffle(steps)
            losses = [rng.uniform(0.0, 5.0) for _ in steps]
            new.record(steps, losses)
            old.record(steps, losses)
        assert new.warmed_up() == old.warmed_up()
        assert same_bits(new.weights(), old.weights()), case


def _pairs() -> list[tuple[TimestepDistribution, OldSampler]]:
    pairs: list[tuple[TimestepDistribution, OldSampler]] = [
        (UniformTimesteps(50), OldSampler(torch.ones(50, dtype=torch.float64))),
        (FixStepTimesteps(100), old_fixstep(100)),
        (FixStepTimesteps(101), old_fixstep(101)),  # odd T: DiffuSeq never draws the last step
        (LossAwareTimesteps(20), OldLossAware(20)),
    ]
    rng = random.Random(2)
    for partial in (False, True):
        new, old = LossAwareTimesteps(20), OldLossAware(20)
        steps = [s for s in range(20 - partial) for _ in range(10 + s % 3)]
        rng.shuffle(steps)
        losses = torch.tensor([rng.uniform(0.0, 4.0) for _ in steps], dtype=torch.float32)
        new.update(torch.tensor(steps), losses)
        old.update(torch.tensor(steps), losses)
        assert new.warmed_up() == (not partial)
        pairs.append((new, old))
    return pairs


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_sample_bitwise_as_before(batch_size):
    for new, old in _pairs():
        for seed in range(5):
            torch.manual_seed(seed)
            t_old, w_old = old.sample(batch_size, "cpu")
            after_old = torch.rand(3)
            torch.manual_seed(seed)
            t_new, w_new = new.sample(batch_size, torch.device("cpu"))
            assert torch.equal(torch.rand(3), after_old)  # the global RNG advanced the same way
            assert t_new.dtype == torch.long and torch.equal(t_new, t_old)
            assert same_bits(w_new, w_old)
            t_old, w_old = old.sample(batch_size, generator=torch.Generator().manual_seed(seed))
            t_new, w_new = new.sample(batch_size, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(t_new, t_old) and same_bits(w_new, w_old)


# -- state ---------------------------------------------------------------------------------------

def _trained(num: int = 6, size: int = 4, seed: int = 3) -> LossAwareTimesteps:
    gen = torch.Generator().manual_seed(seed)
    sampler = LossAwareTimesteps(num, history=size)
    sampler.update(torch.randint(0, num, (5 * num * size,), generator=gen), torch.rand(5 * num * size, generator=gen))
    return sampler


def test_state_dict_round_trip():
    sampler = _trained()
    state = sampler.state_dict()
    assert all(v.device.type == "cpu" for v in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    sampler.update(torch.tensor([0, 1]), torch.tensor([9.0, 9.0]))  # the saved state is a copy
    buffer.seek(0)
    restored = LossAwareTimesteps(6, history=4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert same_bits(restored.loss_history, state["loss_history"])
    assert torch.equal(restored.loss_counts, state["loss_counts"])
    assert not torch.equal(restored.loss_history, sampler.loss_history)
    other = LossAwareTimesteps(7, history=4)  # another T: ignored
    other.load_state_dict(state)
    assert not other.loss_counts.any()
    for fixed in (UniformTimesteps(5), FixStepTimesteps(6)):
        assert fixed.state_dict() == {}
        fixed.load_state_dict({})


def test_load_state_dict_onto_the_current_device():
    sampler = LossAwareTimesteps(6, history=4)
    sampler.sample(3, "meta")
    sampler.load_state_dict(_trained().state_dict())
    assert sampler.loss_history.device.type == "meta" and sampler.loss_counts.device.type == "meta"
    assert all(v.device.type == "cpu" for v in _trained().state_dict().values())


def test_snapshot_restore_returns_the_exact_history():
    sampler = _trained()
    history, counts = sampler.loss_history.clone(), sampler.loss_counts.clone()
    snap = sampler.snapshot()
    sampler.update(torch.tensor([0, 0, 5, 3] * 5), torch.tensor([float("nan"), 2.0, float("inf"), 4.0] * 5))
    assert not same_bits(sampler.loss_history, history)
    sampler.restore(snap)
    assert same_bits(sampler.loss_history, history) and torch.equal(sampler.loss_counts, counts)
    sampler.update(torch.tensor([1, 2]), torch.tensor([7.0, 8.0]))  # restore copied: the snapshot is intact
    sampler.restore(snap)
    assert same_bits(sampler.loss_history, history) and torch.equal(sampler.loss_counts, counts)
    for fixed in (UniformTimesteps(5), FixStepTimesteps(6)):
        assert fixed.snapshot() is None
        fixed.restore(fixed.snapshot())


def test_restore_keeps_skipped_steps_out_of_the_history():
    """The training loop's use: snapshot per optimizer step, restore when the step is skipped."""
    rng = random.Random(4)
    new, old = LossAwareTimesteps(5, history=3), OldLossAware(5, history=3)
    for _ in range(200):
        snap = new.snapshot()
        step = []
        for _ in range(rng.randint(1, 3)):  # microbatches
            t = torch.tensor([rng.randrange(5) for _ in range(4)])
            losses = random_losses(rng, 4, specials=False)
            if rng.random() < 0.1:
                losses[rng.randrange(4)] = rng.choice([float("nan"), float("inf"), float("-inf")])
            new.update(t, losses)
            step.append((t, losses))
        if all(torch.isfinite(losses).all() for _, losses in step):
            for t, losses in step:
                old.update(t, losses)
        else:
            new.restore(snap)
        assert torch.isfinite(new.loss_history).all()
        assert same_history(new, old)
    assert new.warmed_up()


# -- no host synchronisation ---------------------------------------------------------------------

class HostSync(AssertionError):
    """A tensor was read back to the host."""


SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextmanager
def no_host_sync():
    """Within the block, every way of reading a tensor's values on the host raises ``HostSync``."""
    with pytest.MonkeyPatch.context() as patch:
        for name in SYNCING:
            def refuse(*_args, _name=name, **_kwargs):
                raise HostSync(f"Tensor.{_name} called")
            patch.setattr(torch.Tensor, name, refuse)
        yield


def test_the_guard_catches_host_reads():
    x = torch.ones(2)
    with no_host_sync():
        for read in (lambda: x[0].item(), x.tolist, x.cpu, x.numpy, lambda: bool(x[0]), lambda: int(x[0]),
                     lambda: float(x[0]), lambda: [1, 2][torch.tensor(0)], lambda: x[0] if x[0] > 0 else x[1]):
            with pytest.raises(HostSync):
                read()
        old = OldLossAware(4)
        with pytest.raises(HostSync):
            old.update(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))
        with pytest.raises(HostSync):
            old.sample(3)
    assert x.tolist() == [1.0, 1.0]  # undone after the block


def test_update_and_sample_make_no_host_sync():
    samplers = [create_timestep_distribution(name, 12) for name in ("uniform", "fixstep", "lossaware")]
    gen = torch.Generator().manual_seed(5)
    t_batches = [torch.randint(0, 12, (40,), generator=gen) for _ in range(6)]
    loss_batches = [torch.rand(40, generator=gen) for _ in range(6)]
    with no_host_sync():
        for sampler in samplers:
            for t, losses in zip(t_batches, loss_batches):  # crosses the warm-up of the loss-aware one
                snap = sampler.snapshot()
                sampler.sample(8, "cpu")
                sampler.sample(1, "cpu")
                sampler.update(t, losses)
                sampler.weights()
                sampler.restore(snap)
                sampler.update(t, losses)
    assert samplers[2].warmed_up()


def test_everything_stays_on_the_given_device():
    """On the meta device a tensor has no values: any read-back or stray CPU tensor fails."""
    for name in ("uniform", "fixstep", "lossaware"):
        sampler = create_timestep_distribution(name, 12)
        for _ in range(3):
            t, weights = sampler.sample(8, "meta")
            assert t.device.type == "meta" and t.dtype == torch.long
            assert weights.device.type == "meta" and weights.dtype == torch.float32
            snap = sampler.snapshot()
            sampler.update(t, torch.empty(8, device="meta"))
            sampler.restore(snap)
        if isinstance(sampler, LossAwareTimesteps):
            assert sampler.loss_history.device.type == "meta" and sampler.loss_counts.device.type == "meta"
            assert sampler.weights().device.type == "meta"
    recorded_first = LossAwareTimesteps(12)  # the first update moves the history too
    recorded_first.update(torch.zeros(8, dtype=torch.long, device="meta"), torch.empty(8, device="meta"))
    assert recorded_first.loss_history.device.type == "meta" and recorded_first.loss_counts.device.type == "meta"
