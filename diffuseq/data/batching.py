"""Batches for training: an endless, resumable stream of this process's slice of every global batch."""

from __future__ import annotations

from typing import Iterator

import torch

from ..errors import UserError
from .pairs import Seq2SeqData


class BatchStream:
    """An endless, resumable stream of this rank's batches.

    Each epoch is a permutation of the examples drawn from ``seed + epoch``; a
    global batch takes the next ``global_batch`` indices (wrapping into the next
    epoch) and rank r keeps its slice. The position (epoch, offset) is the whole
    state, so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, data: Seq2SeqData, global_batch: int, rank: int, world_size: int, seed: int) -> None:
        if global_batch % world_size:
            raise UserError(f"`bsz` {global_batch} is not divisible by the {world_size} processes")
        self.data = data
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._perm: torch.Tensor | None = None

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            self._perm = torch.randperm(len(self.data), generator=gen)
        return self._perm

    def _next_indices(self) -> torch.Tensor:
        chunks, need = [], self.global_batch
        while need:
            perm = self._permutation()
            take = perm[self.offset:self.offset + need]
            chunks.append(take)
            need -= len(take)
            self.offset += len(take)
            if self.offset >= len(perm):
                self.epoch, self.offset, self._perm = self.epoch + 1, 0, None
        idx = torch.cat(chunks)
        return idx[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            idx = self._next_indices()
            yield self.data.rows(idx)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset, self._perm = int(state["epoch"]), int(state["offset"]), None
