"""Clamping ("rounding"): replacing x_0 predictions by their nearest word embedding, fast on a CPU."""

from __future__ import annotations

import math

import torch

from ..model.kernels import onednn_eligible, onednn_matmul_t, pack_linear_weight
from ..runtime import full_fp32_matmul

ARGMIN_BLOCK = 64  # vocabulary entries per block of the two-pass argmin


def blocked_argmin(scores: torch.Tensor, block: int = ARGMIN_BLOCK) -> torch.Tensor:
    """``scores.argmin(-1)`` of a [M, V] tensor with V a multiple of ``block``, in two vectorised passes.

    The minimum of each block of ``block`` columns first, then the first block
    holding the row's minimum, then the first minimum inside that block: the
    same index as ``torch.argmin`` (ties go to the first column), but about 4x
    faster on a CPU, whose argmin kernel is not vectorised.
    """
    rows, vocab = scores.shape
    blocks = scores.view(rows, vocab // block, block)
    best_block = blocks.amin(dim=-1).argmin(dim=-1)
    inside = blocks[torch.arange(rows, device=scores.device), best_block].argmin(dim=-1)
    return best_block * block + inside


class NearestEmbedding:
    """Replace vectors by their nearest vocabulary embedding (L2), without a [V x N x d] tensor.

    Distances are float32 whatever the network's dtype and even where CUDA's TF32 is on (at squared
    norms of 100-250, bfloat16 or TF32 would round them to steps of 0.5-2 and decide close calls
    arbitrarily); the chosen embedding is returned in the input's dtype.

    argmin_v ||x - e_v||^2 = argmin_v (||e_v||^2 - 2 x . e_v): a matmul (in float32 on a CPU,
    oneDNN's, with the squared norms as its bias) and an argmin, ``ROWS`` vectors at a time so
    that their scores stay in the cache between the matmul and the two passes of the argmin. The
    vocabulary is padded to a multiple of ``ARGMIN_BLOCK`` with entries at infinite distance, never chosen.
    """

    ROWS = 128  # on a CPU: vectors per block, so that their scores stay in the cache
    GPU_BLOCK_ELEMENTS = 2**26  # elsewhere: scores per block (256 MB), a few large kernels per call

    def __init__(self, embeddings: torch.Tensor) -> None:
        embeddings = embeddings.float()
        self.embeddings = embeddings
        vocab, dim = embeddings.shape
        padded = -(-vocab // ARGMIN_BLOCK) * ARGMIN_BLOCK
        sq_norms = torch.full((padded,), math.inf, device=embeddings.device)
        sq_norms[:vocab] = embeddings.float().pow(2).sum(-1)
        self.sq_norms = sq_norms.to(embeddings.dtype)
        scaled = embeddings.new_zeros(padded, dim)
        scaled[:vocab] = embeddings * -2  # exact: a power of two
        self.scaled_t = scaled.t().contiguous()
        self.packed = None  # oneDNN's blocked layout of ``scaled`` (float32 on a CPU), the norms as its bias
        if onednn_eligible(scaled, scaled):
            self.packed = pack_linear_weight(scaled, self.ROWS)

    def nearest_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Ids of the nearest embeddings of the vectors in ``x`` [..., d] (shape [...])."""
        flat = x.reshape(-1, x.size(-1)).float()
        ids = torch.empty(flat.size(0), dtype=torch.long, device=flat.device)
        on_cpu = flat.device.type == "cpu"
        step = self.ROWS if on_cpu else max(self.ROWS, self.GPU_BLOCK_ELEMENTS // self.scaled_t.size(1))
        scores = None if self.packed is not None else flat.new_empty(min(step, flat.size(0)), self.scaled_t.size(1))
        with torch.autocast(flat.device.type, enabled=False), full_fp32_matmul():
            for start in range(0, flat.size(0), step):
                rows = flat[start:start + step]
                if scores is None:
                    block = onednn_matmul_t(rows, self.packed, self.sq_norms)
                else:
                    block = torch.mm(rows, self.scaled_t, out=scores[:rows.size(0)]).add_(self.sq_norms)
                ids[start:start + rows.size(0)] = blocked_argmin(block) if on_cpu else block.argmin(-1)
        return ids.view(x.shape[:-1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.embeddings[self.nearest_ids(x)].to(x.dtype)
