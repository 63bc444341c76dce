"""CPU matmuls through oneDNN, each with its plain twin (``bench/kernels_bench.py`` times both).

On a CPU, PyTorch runs float32 matmuls through MKL, which takes its AVX2 code path on
non-Intel processors; oneDNN, PyTorch's other CPU matmul library, uses the processor's widest
vector units on any x86 (and Arm's library on Arm): on an AMD EPYC (Zen 5) it runs this model's
float32 products 2.2x as fast. So in float32 on a CPU:

* :func:`linear` (and :class:`Linear`, an ``nn.Linear`` that uses it) computes ``F.linear`` and,
  in training, both products of its backward through oneDNN;
* :class:`PackedLinear`, when no gradient is needed (decoding, validation), also packs the weight
  once into oneDNN's blocked layout (what ``torch.compile`` does on a CPU) and fuses the bias
  and an optional GELU into the product.

PyTorch's oneDNN operators are private (``torch.ops.mkldnn``): only this module calls them, behind the one probe
:func:`onednn_linear_available`; other modules use :func:`onednn_matmul_t` and :func:`pack_linear_weight`.

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
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

OPT_OUT = "DIFFUSEQ_ONEDNN"


@functools.lru_cache(maxsize=1)
def onednn_linear_available() -> bool:
    """Whether this build runs oneDNN's linear, packed (with and without GELU) and on transposed views (checked
    once, on tiny inputs made without any random generator, against F.linear); False with ``DIFFUSEQ_ONEDNN=0``.

    The one probe of PyTorch's private oneDNN operators: only this module calls them, and only once this is True
    (through :func:`onednn_eligible`).
    """
    if os.environ.get(OPT_OUT, "1") == "0":
        return False
    try:
        weight = torch.arange(32, dtype=torch.float32).view(8, 4).sin()
        bias, x = torch.arange(8, dtype=torch.float32).cos(), torch.arange(12, dtype=torch.float32).view(3, 4).cos()
        packed = pack_linear_weight(weight, 3)
        z = torch.arange(24, dtype=torch.float32).view(3, 8).sin()
        outs = (onednn_matmul_t(x, packed, bias), onednn_matmul_t(x, packed, bias, "gelu"),
                onednn_matmul_t(x, weight, bias), onednn_matmul_t(x.t(), z.t()))
        expected = (F.linear(x, weight, bias), F.gelu(F.linear(x, weight, bias)), F.linear(x, weight, bias), x.t() @ z)
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


def onednn_matmul_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
                    activation: str = "none") -> torch.Tensor:
    """``a @ b.T (+ bias)``, then GELU if ``activation == "gelu"``, through oneDNN (``a``: [..., k]; ``b``: [n, k],
    possibly a transposed view, or packed by :func:`pack_linear_weight`)."""
    if activation == "gelu":
        return torch.ops.mkldnn._linear_pointwise(a, b, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def pack_linear_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` [n, k] in oneDNN's blocked layout, for :func:`onednn_matmul_t` with about ``rows`` rows a call
    (only where :func:`onednn_eligible`)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


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


class PackedLinear:
    """``F.linear(x, W, b)`` (then GELU), with W packed once into oneDNN's blocked layout for products without
    gradients; owned by the layer that computes the product (one per product).

    ``params`` holds W and b, or the weights then the biases of several projections that are concatenated
    into one. Invalidation rule: the pack is rebuilt when a parameter is another tensor (other storage) or
    has been written in place since it was packed; every in-place write (an optimizer step, an EMA update,
    ``load_state_dict``) advances a tensor's version counter. Tensors made in inference mode have no version
    counter: they are treated as unchanged while their storage is the same. A copy (``copy.deepcopy``,
    pickling) starts empty. With gradients, or where oneDNN cannot run, the product is :func:`linear`.
    """

    def __init__(self) -> None:
        self.stamp: tuple[tuple[int, int], ...] | None = None  # what the pack was made from (see _stamp)
        self.weight: torch.Tensor | None = None  # the packed W
        self.bias: torch.Tensor | None = None

    def __reduce__(self) -> tuple[type, tuple]:
        return PackedLinear, ()

    @staticmethod
    def _stamp(params: tuple[torch.Tensor, ...]) -> tuple[tuple[int, int], ...]:
        """Storage and version counter of each parameter (-1 for an inference tensor, which has none)."""
        return tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in params)

    @staticmethod
    def _joined(params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """W and b of the one product (the projections' weights, and biases, concatenated)."""
        half = len(params) // 2
        if half == 1:
            return params[0], params[1]
        return torch.cat(params[:half]), torch.cat(params[half:])

    def __call__(self, x: torch.Tensor, params: tuple[torch.Tensor, ...], activation: str = "none") -> torch.Tensor:
        """``F.linear(x, W, b)``, then GELU if ``activation == "gelu"``."""
        if not onednn_eligible(x, params[0]) or _needs_grad(x, params[0]):
            out = linear(x, *self._joined(params))
            return F.gelu(out) if activation == "gelu" else out
        stamp = self._stamp(params)
        if self.stamp != stamp:
            weight, bias = self._joined(params)
            self.weight = pack_linear_weight(weight.detach(), max(1, x.numel() // x.size(-1)))
            self.bias = bias.detach().clone()
            self.stamp = stamp
        return onednn_matmul_t(x, self.weight, self.bias, activation)


class Linear(torch.nn.Linear):
    """``nn.Linear`` (same parameters and state dict) computed by a :class:`PackedLinear` of its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.packed = PackedLinear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed(x, (self.weight, self.bias))


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
