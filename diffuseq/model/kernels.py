"""CPU matmuls through oneDNN, each with its plain twin (``bench/kernels_bench.py`` times both).

On a CPU, PyTorch runs float32 matmuls through MKL, which takes its AVX2 code path on
non-Intel processors; oneDNN, PyTorch's other CPU matmul library, uses the processor's widest
vector units on any x86 (and Arm's library on Arm): on an AMD EPYC (Zen 5) it runs this model's
float32 products 2.2x as fast. So in float32 on a CPU:

* :func:`linear` (and :class:`Linear`, an ``nn.Linear`` that uses it) computes ``F.linear`` and,
  in training, both products of its backward through oneDNN;
* :func:`packed_linear`, when no gradient is needed (decoding, validation), also packs the weight
  once into oneDNN's blocked layout (what ``torch.compile`` does on a CPU) and fuses the bias
  and an optional GELU into the product.

Both fall back to ``F.linear`` under autocast, off the CPU, for other dtypes, inside ``torch.compile``, where this
PyTorch build lacks the oneDNN operators, or with ``DIFFUSEQ_ONEDNN=0`` in the environment (for a
CPU where ``bench/kernels_bench.py`` shows oneDNN losing). The sums are the same products in another order:
results agree with ``F.linear`` to float32 rounding, and are the same from run to run.

:func:`dropout` (and :class:`Dropout`) draws its keep mask as ``uniform >= p`` with the vectorised
uniform generator instead of ``bernoulli_``, which draws element by element on a CPU: the same
distribution, half the time of ``F.dropout``'s forward and backward, in float32 on a CPU.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

OPT_OUT = "DIFFUSEQ_ONEDNN"


@functools.lru_cache(maxsize=1)
def onednn_linear_available() -> bool:
    """Whether this build runs oneDNN's linear, packed and on transposed views (checked once, on tiny inputs
    made without any random generator, against F.linear); False with ``DIFFUSEQ_ONEDNN=0``."""
    if os.environ.get(OPT_OUT, "1") == "0":
        return False
    try:
        weight = torch.arange(32, dtype=torch.float32).view(8, 4).sin()
        bias, x = torch.arange(8, dtype=torch.float32).cos(), torch.arange(12, dtype=torch.float32).view(3, 4).cos()
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 3)
        z = torch.arange(24, dtype=torch.float32).view(3, 8).sin()
        outs = (torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], ""), onednn_matmul_t(x, weight, bias),
                onednn_matmul_t(x.t(), z.t()))
        expected = (F.linear(x, weight, bias), F.linear(x, weight, bias), x.t() @ z)
        return all(bool(torch.allclose(a, b, atol=1e-5)) for a, b in zip(outs, expected))
    except (RuntimeError, AttributeError) as err:
        logger.debug("oneDNN packed linear unavailable (%s): using F.linear", err)
        return False


def onednn_eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``F.linear(x, weight)`` can run through oneDNN: float32 on a CPU, no autocast, rows to multiply,
    outside a ``torch.compile`` graph (the compiler makes its own choice of kernels there)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() >= 2 and x.numel() > 0 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and onednn_linear_available())


def _needs_grad(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def onednn_matmul_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` through oneDNN (``a``: [..., k], ``b``: [n, k]; either may be a transposed view)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with its forward and both backward products through oneDNN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return onednn_matmul_t(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        rows = grad.reshape(-1, grad.size(-1))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_matmul_t(grad, weight.t())  # grad @ W
        if ctx.needs_input_grad[1]:
            grad_w = onednn_matmul_t(rows.t(), x.reshape(-1, x.size(-1)).t())  # grad^T @ x
        if ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where it can run there (forward and backward)."""
    if onednn_eligible(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(torch.nn.Linear):
    """``nn.Linear`` (same parameters and state dict) computed by :func:`packed_linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(self, x, (self.weight, self.bias))


def packed_linear(owner: torch.nn.Module, x: torch.Tensor, params: tuple[torch.Tensor, ...],
                  activation: str = "none") -> torch.Tensor:
    """``F.linear(x, W, b)`` (then GELU if ``activation == "gelu"``); ``params`` holds W and b, or the
    weights then the biases of several projections that are concatenated into one.

    Without gradients the packed weight is kept on ``owner`` until a parameter changes (its
    version counter moves); with gradients it is :func:`linear`.
    """
    half = len(params) // 2
    if not onednn_eligible(x, params[0]) or _needs_grad(x, params[0]):
        weight = params[0] if half == 1 else torch.cat(params[:half])
        bias = params[1] if half == 1 else torch.cat(params[half:])
        out = linear(x, weight, bias)
        return F.gelu(out) if activation == "gelu" else out
    key = tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in params)
    cached = owner.__dict__.get("_packed_linear")
    if cached is None or cached[0] != key:
        weight = params[0] if half == 1 else torch.cat(params[:half])
        bias = params[1] if half == 1 else torch.cat(params[half:])
        cached = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, x.numel() // x.size(-1))),
                  bias.detach().clone())
        owner.__dict__["_packed_linear"] = cached
    _, packed, bias = cached
    if activation == "gelu":
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class _Dropout(torch.autograd.Function):
    """Inverted dropout: ``x * mask / (1 - p)`` with ``mask = (uniform >= p)``, the scaled mask kept for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        scale = torch.rand(x.shape, dtype=x.dtype, device=x.device).ge_(p).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)``; in float32 on a CPU, with the mask drawn by :class:`_Dropout`."""
    if (training and 0 < p < 1 and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.compiler.is_compiling()):
        return _Dropout.apply(x, p)
    return F.dropout(x, p, training)


class Dropout(torch.nn.Dropout):
    """``nn.Dropout`` computed by :func:`dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
