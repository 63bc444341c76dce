"""The rounding loss's cross-entropy of ``lm_head(x)``: on a CPU block by block without denormals, on a GPU
as ``F.cross_entropy`` of the logits in float32."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..model.kernels import onednn_eligible, onednn_matmul_t

CE_BLOCK_ELEMENTS = 2**21  # logits per block of rows (8 MB in float32): small enough to stay in cache
# log of the smallest normal float32: exp() below it gives denormals (very slow on CPUs) or zeros
LOG_TINY = math.log(torch.finfo(torch.float32).tiny)
GRAD_SCALE = 2.0**64  # keeps the backward's products of tiny probabilities out of the denormal range


def grad_scale(dtype: torch.dtype) -> float:
    """The backward's scale for products in ``dtype``: 2^64 where the dtype has float32's range (float32,
    bfloat16), 1 for float16, whose largest value is 65504 and whose loss scaling is GradScaler's."""
    return GRAD_SCALE if torch.finfo(dtype).max > 1e38 else 1.0


class CrossEntropyWorkspace:
    """The float32 [rows, vocab] buffer of log-probabilities, kept from call to call by its owner (the
    training loop) so that a fresh one of this size is not mapped and zeroed by the OS every step."""

    def __init__(self) -> None:
        self.spare: torch.Tensor | None = None

    def take(self, rows: int, vocab: int, device: torch.device) -> torch.Tensor:
        """The buffer the last backward released when it fits, else a new one."""
        spare, self.spare = self.spare, None
        if spare is not None and spare.shape == (rows, vocab) and spare.device == device:
            return spare
        return torch.empty(rows, vocab, dtype=torch.float32, device=device)

    def give_back(self, buffer: torch.Tensor) -> None:
        self.spare = buffer


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of ``hidden @ weight.T + bias`` against ``ids``, computed block by block.

    The float32 log-probabilities kept for backward live in one buffer (from a
    :class:`CrossEntropyWorkspace` when one is given), filled and turned into the
    logits' gradient a cache-sized block of rows at a time. Logits further below their row's
    maximum than ``LOG_TINY + log(vocab)`` are raised to that floor before the
    log-softmax, so that no probability is a denormal; this moves the
    log-sum-exp and the gradient by less than float32 resolves, and the target's
    own logit is never raised. Matmuls run in ``dtype`` (the autocast dtype, as
    ``nn.Linear`` would), the log-softmax in float32, as
    ``F.cross_entropy(logits.float())``. Backward may run only once.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ids: torch.Tensor,
                dtype: torch.dtype, keep: bool, workspace: CrossEntropyWorkspace | None) -> torch.Tensor:
        x, w, b = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
        vocab = w.size(0)
        floor = LOG_TINY + math.log(vocab) + 1
        log_probs = (workspace or CrossEntropyWorkspace()).take(ids.numel(), vocab, hidden.device)
        ce = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)
        step = max(1, CE_BLOCK_ELEMENTS // vocab)
        scratch = None if dtype == torch.float32 else torch.empty(step, vocab, dtype=dtype, device=hidden.device)
        onednn = scratch is None and onednn_eligible(x, w)
        for start in range(0, ids.numel(), step):
            block = slice(start, start + step)
            idx = ids[block, None]
            if onednn:
                logits = onednn_matmul_t(x[block], w, b)
            elif scratch is None:
                logits = torch.addmm(b, x[block], w.t())
            else:
                logits = torch.addmm(b, x[block], w.t(), out=scratch[:idx.size(0)]).float()
            target = logits.gather(1, idx)
            torch.maximum(logits, logits.amax(1, keepdim=True) + floor, out=logits)
            raised = logits.gather(1, idx) - target  # what the floor added to the target logit (mostly 0)
            out = log_probs[block]
            torch.log_softmax(logits, 1, out=out)
            ce[block] = (raised - out.gather(1, idx)).squeeze(1)
        ctx.workspace = workspace
        if keep:
            ctx.save_for_backward(x, w, ids)
            ctx.log_probs = log_probs
            ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype)
        elif workspace is not None:
            workspace.give_back(log_probs)
        return ce

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.log_probs is None:
            raise RuntimeError("backward through the fused cross-entropy can run only once")
        x, w, ids = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        log_probs, ctx.log_probs = ctx.log_probs, None
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(w.shape, dtype=torch.promote_types(x.dtype, torch.float32), device=w.device)
        grad_b = torch.zeros(w.size(0), dtype=torch.float32, device=w.device)
        step = max(1, CE_BLOCK_ELEMENTS // w.size(0))
        scratch = None if x.dtype == torch.float32 else torch.empty(step, w.size(0), dtype=x.dtype, device=x.device)
        onednn = scratch is None and onednn_eligible(x, w)
        # The incoming per-row gradient g is scaled by 2^64 before it meets the probabilities and the
        # sums are scaled back once at the end: a power of two changes no rounding, but the products of
        # tiny probabilities and g * x (~1e-34 * 1e-5) stay normal floats instead of denormals, which
        # some CPUs (Intel's) process tens of times slower. Not in float16 (2^64 overflows it): there
        # G * g is rounded to float16 unscaled, as in F.cross_entropy's backward under autocast.
        scale = grad_scale(x.dtype)
        scaled_g = grad_ce * scale
        for start in range(0, ids.numel(), step):
            block = slice(start, start + step)
            # d ce / d logits = softmax - one_hot(ids), built in place of the log-probabilities
            grad = log_probs[block].exp_()
            grad[torch.arange(grad.size(0), device=grad.device), ids[block]] -= 1
            g = scaled_g[block, None]
            grad_b.addmv_(grad.t(), g.squeeze(1))
            if onednn:  # g scales the small factors: g * (G @ W) and G.T @ (g * x)
                torch.mul(onednn_matmul_t(grad, w.t()), grad_ce[block, None], out=grad_x[block])
                grad_w.add_(onednn_matmul_t(grad.t(), (x[block] * g).t()))
            elif scratch is None:
                torch.mul(grad @ w, grad_ce[block, None], out=grad_x[block])
                grad_w.addmm_(grad.t(), x[block] * g)
            else:  # g scales G as it is rounded to the matmul dtype, as in F.cross_entropy's backward
                grad = torch.mul(grad, g, out=scratch[:grad.size(0)])
                torch.mm(grad, w, out=grad_x[block])
                grad_w.add_(grad.t() @ x[block])
        if scratch is not None:
            grad_x.mul_(1 / scale)
        grad_w.mul_(1 / scale)
        grad_b.mul_(1 / scale)
        if ctx.workspace is not None:
            ctx.workspace.give_back(log_probs)
        return grad_x.to(hidden_dtype), grad_w.to(weight_dtype), grad_b.to(bias_dtype), None, None, None, None


def token_cross_entropy(hidden: torch.Tensor, lm_head: nn.Linear, ids: torch.Tensor,
                        mask: torch.Tensor | None = None,
                        workspace: CrossEntropyWorkspace | None = None) -> torch.Tensor:
    """Per-example cross-entropy of ``lm_head(hidden)``, averaged over all positions or over ``mask == 1``.

    On a CPU the fused, blocked kernel above (a cache-sized block at a time, no denormals); elsewhere
    (a GPU, whose memory bandwidth and denormal handling need neither) ``F.cross_entropy`` of the
    logits in float32, the logits' product in the autocast dtype: a few kernels per call.
    """
    device = hidden.device.type
    if device != "cpu":
        logits = F.linear(hidden, lm_head.weight, lm_head.bias)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten(), reduction="none").view(ids.shape)
    else:
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else lm_head.weight.dtype
        inputs = (hidden.flatten(0, 1), lm_head.weight, lm_head.bias)
        keep = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        with torch.autocast(device, enabled=False):
            ce = _LinearCrossEntropy.apply(*inputs, ids.flatten(), dtype, keep, workspace).view(ids.shape)
    if mask is None:
        return ce.mean(dim=-1)
    mask = mask.to(ce.dtype)
    return (ce * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
