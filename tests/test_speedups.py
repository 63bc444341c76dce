"""The fast paths of a training step against the plain PyTorch computations they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffuseq import losses
from diffuseq.losses import token_cross_entropy
from diffuseq.model import attention_with_dropout


def _reference_cross_entropy(hidden: torch.Tensor, lm_head: nn.Linear, ids: torch.Tensor,
                             mask: torch.Tensor | None) -> torch.Tensor:
    ce = F.cross_entropy(lm_head(hidden).flatten(0, 1).float(), ids.flatten(), reduction="none").view(ids.shape)
    if mask is None:
        return ce.mean(dim=-1)
    return (ce * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_cross_entropy_matches_lm_head_and_cross_entropy(monkeypatch, autocast, masked):
    monkeypatch.setattr(losses, "CE_BLOCK_ELEMENTS", 4 * 50)  # blocks of 4 rows: 21 rows make 6 blocks
    torch.manual_seed(0)
    lm_head = nn.Linear(8, 50)
    # logits spread over hundreds of nats: many fall below the denormal floor, some targets too
    hidden = (80 * torch.randn(3, 7, 8)).requires_grad_()
    ids = torch.randint(0, 50, (3, 7))
    per_position = F.cross_entropy(lm_head(hidden).flatten(0, 1), ids.flatten(), reduction="none")
    assert (per_position > 100).any() and (per_position < 1).any()
    mask = (torch.rand(3, 7) > 0.3).float() if masked else None
    upstream = torch.rand(3)
    results = []
    for fn in (_reference_cross_entropy, token_cross_entropy):
        for tensor in (hidden, lm_head.weight, lm_head.bias):
            tensor.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ce = fn(hidden, lm_head, ids, mask)
        (ce * upstream).sum().backward()
        results.append([ce.detach(), hidden.grad, lm_head.weight.grad, lm_head.bias.grad])
    expected, got = results
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    for grad, reference in zip(got[1:], expected[1:]):
        if autocast:  # bf16 matmuls: both sides carry bf16 rounding errors of a few percent
            assert (grad - reference).norm() < 0.05 * reference.norm()
        else:
            torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-6)


def test_fused_cross_entropy_without_grad_and_backward_once():
    torch.manual_seed(1)
    lm_head = nn.Linear(4, 10)
    hidden = torch.randn(2, 5, 4, requires_grad=True)
    ids = torch.randint(0, 10, (2, 5))
    with torch.no_grad():
        no_grad = token_cross_entropy(hidden, lm_head, ids)
    ce = token_cross_entropy(hidden, lm_head, ids)
    assert torch.equal(ce.detach(), no_grad)  # the buffer the no-grad call released is reused
    ce.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        ce.sum().backward()


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_attention_with_dropout_matches_sdpa(p):
    q, k, v = (torch.randn(2, 3, 6, 8, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 3, 6, 8)
    results = []
    for attend in (lambda: F.scaled_dot_product_attention(q, k, v, dropout_p=p),
                   lambda: attention_with_dropout(q, k, v, p)):
        torch.manual_seed(2)  # the same dropout draws
        out = attend()
        results.append([out.detach(), *torch.autograd.grad(out, (q, k, v), grad)])
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected)
