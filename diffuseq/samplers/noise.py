"""The noise of a decode: one generator per example, so the text does not depend on batching."""

from __future__ import annotations

from typing import Iterable

import torch


class ExampleNoise:
    """Gaussian noise (and DiffuSeq-v2's uniform absorbing draws) drawn on ``device`` from one generator per
    example, seeded by (seed, example index).

    The draws of an example depend only on the seed and its index, never on the batch or the process
    it is decoded in. On a CPU the generators are CPU generators; on a GPU they live on the GPU
    (its own Philox stream: the same text on every GPU, not the same numbers as on a CPU).
    """

    def __init__(self, seed: int, indices: Iterable[int], shape: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        device = torch.device(device)
        self.generators = [torch.Generator(device=device).manual_seed((seed * 1_000_003 + int(i)) % (2**63 - 1))
                           for i in indices]
        self.shape, self.device, self.dtype = shape, device, dtype

    def draw(self, top_p: float = 0.0) -> torch.Tensor:
        """The next draw of every example, stacked into [B, *shape].

        With ``top_p > 0``, entries with ``|z| > top_p`` are drawn again (from the same
        example's generator) until none is left, as DiffuSeq's ``p_sample``.
        """
        draws = []
        for gen in self.generators:
            z = torch.randn(self.shape, generator=gen, device=self.device)
            if top_p > 0:
                outside = z.abs() > top_p
                while outside.any():
                    z[outside] = torch.randn(int(outside.sum()), generator=gen, device=self.device)
                    outside = z.abs() > top_p
            draws.append(z)
        return torch.stack(draws).to(self.dtype)

    def uniform(self) -> torch.Tensor:
        """The next uniform draw in [0, 1) of every example, one per position: [B, *shape[:-1]] (DiffuSeq-v2's
        absorbing draws, one per token)."""
        return torch.stack([torch.rand(self.shape[:-1], generator=gen, device=self.device)
                            for gen in self.generators])
