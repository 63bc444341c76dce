"""CPU fast paths used when no gradient is needed (decoding, validation), each with its plain twin.

``packed_linear`` runs a linear layer through oneDNN with the weight packed once into its
blocked layout (what ``torch.compile`` does on a CPU), with the bias and an optional GELU fused
into the matmul: no bias copy, no separate activation pass. It falls back to ``F.linear`` when
gradients are needed, under autocast, off the CPU, for non-float32 tensors, or where this
PyTorch build lacks the oneDNN operators. ``bench/kernels_bench.py`` times it against the plain
formulation.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def onednn_linear_available() -> bool:
    """Whether this build runs oneDNN's packed linear (checked once, on a tiny input, against F.linear)."""
    try:
        weight, bias, x = torch.randn(8, 4), torch.randn(8), torch.randn(3, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 3)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return bool(torch.allclose(out, F.linear(x, weight, bias), atol=1e-5))
    except (RuntimeError, AttributeError) as err:
        logger.debug("oneDNN packed linear unavailable (%s): using F.linear", err)
        return False


def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.is_autocast_enabled("cpu") and onednn_linear_available())


def packed_linear(owner: torch.nn.Module, x: torch.Tensor, params: tuple[torch.Tensor, ...],
                  activation: str = "none") -> torch.Tensor:
    """``F.linear(x, W, b)`` (then GELU if ``activation == "gelu"``); ``params`` holds W and b, or the
    weights then the biases of several projections that are concatenated into one.

    The packed weight is kept on ``owner`` until a parameter changes (its version counter moves).
    """
    half = len(params) // 2
    if not _eligible(x, params[0]):
        weight = params[0] if half == 1 else torch.cat(params[:half])
        bias = params[1] if half == 1 else torch.cat(params[half:])
        out = F.linear(x, weight, bias)
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
