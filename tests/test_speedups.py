"""The fast paths of training and decoding against the plain PyTorch computations they replace."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT
from torch import nn

from diffuseq.samplers import NearestEmbedding, blocked_argmin
from diffuseq.model import EncoderConfig, TransformerNetModel, attention_with_dropout
from diffuseq.model.kernels import Linear, PackedLinear, dropout, onednn_linear_available
from diffuseq.training import cross_entropy as losses
from diffuseq.training.cross_entropy import token_cross_entropy


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


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """dropout(softmax(q k^T / sqrt(d))) v in plain torch, the dropout mask drawn here: kept where a uniform draw
    (one per attention weight, in order) is at least p, the kept weights scaled by 1 / (1 - p)."""
    probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
    keep = torch.rand(probs.shape) >= p
    return torch.where(keep, probs / (1 - p), torch.zeros(())) @ v


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_attention_with_dropout_matches_sdpa_and_its_formula(p):
    q, k, v = (torch.randn(2, 3, 6, 8, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 3, 6, 8)
    results = []
    for attend in (_reference_attention, attention_with_dropout):
        torch.manual_seed(2)  # the same uniform draws
        out = attend(q, k, v, p)
        results.append([out.detach(), *torch.autograd.grad(out, (q, k, v), grad)])
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected)
    if p == 0:
        torch.testing.assert_close(results[1][0], F.scaled_dot_product_attention(q, k, v).detach())


def test_dropout_keeps_where_a_uniform_draw_is_at_least_p_and_scales():
    torch.manual_seed(0)
    x = torch.randn(64, 1000, requires_grad=True)
    grad = torch.randn(64, 1000)
    torch.manual_seed(5)
    out = dropout(x, 0.3, True)
    torch.manual_seed(5)
    keep = torch.rand(64, 1000) >= 0.3  # the draw it makes, by hand
    torch.testing.assert_close(out, torch.where(keep, x / 0.7, 0.0), rtol=1e-6, atol=0)
    (x_grad,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(x_grad, torch.where(keep, grad / 0.7, 0.0), rtol=1e-6, atol=0)
    assert abs((out == 0).float().mean().item() - 0.3) < 0.005  # 64,000 draws: sd 0.0018
    assert torch.equal(dropout(x, 0.3, False), x)  # evaluation: the identity, as F.dropout
    half = x.detach().bfloat16()
    torch.manual_seed(5)
    by_us = dropout(half, 0.3, True)
    torch.manual_seed(5)
    assert torch.equal(by_us, F.dropout(half, 0.3, True))  # other dtypes: F.dropout itself


def test_onednn_linear_matches_f_linear_forward_and_backward():
    torch.manual_seed(0)
    layer = Linear(48, 24)
    x = torch.randn(3, 7, 48, requires_grad=True)
    grad = torch.randn(3, 7, 24)
    results = []
    for forward in (layer, lambda h: F.linear(h, layer.weight, layer.bias)):
        out = forward(x)
        results.append([out, *torch.autograd.grad(out, (x, layer.weight, layer.bias), grad)])
    if onednn_linear_available():
        assert "OneDNN" in type(layer(x).grad_fn).__name__
    for ours, plain in zip(*results):
        torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)


def test_onednn_can_be_turned_off_from_the_environment():
    code = ("import torch; from diffuseq.model.kernels import Linear; "
            "print(type(Linear(4, 2)(torch.ones(3, 4, requires_grad=True)).grad_fn).__name__)")
    names = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                            env={**os.environ, "DIFFUSEQ_ONEDNN": flag}).stdout.strip() for flag in ("1", "0")]
    assert names[1] == "AddmmBackward0"
    assert names[0] == ("_OneDNNLinearBackward" if onednn_linear_available() else "AddmmBackward0")


def test_packed_weights_are_reused_until_a_parameter_is_written():
    torch.manual_seed(0)
    layer, other = Linear(16, 8), Linear(16, 8)
    x = torch.randn(4, 5, 16)

    def packed_forward() -> torch.Tensor | None:
        with torch.no_grad():
            out = layer(x)
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias).detach(), rtol=1e-5, atol=1e-5)
        return layer.packed.weight

    first = packed_forward()
    assert (first is not None) == onednn_linear_available()
    assert packed_forward() is first  # unchanged parameters: the same pack
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).square().sum().backward()
    optimizer.step()  # writes the parameters in place: the next product repacks
    second = packed_forward()
    assert second is None or second is not first
    layer.load_state_dict(other.state_dict())
    assert packed_forward() is None or not torch.equal(layer.packed.weight.to_dense(), second.to_dense())
    assert copy.deepcopy(layer).packed.weight is None and isinstance(copy.deepcopy(layer).packed, PackedLinear)


def test_the_denoiser_repacks_after_a_training_step():
    torch.manual_seed(0)
    model = TransformerNetModel(40, 16, 16, 0.0, EncoderConfig(2, 32, 4, 64))
    x, t = torch.randn(3, 10, 16), torch.tensor([5.0, 500.0, 900.0])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(2):
        with torch.no_grad():
            model.eval()(x, t)  # packs every projection
        model.train()(x, t).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    fresh = TransformerNetModel(40, 16, 16, 0.0, EncoderConfig(2, 32, 4, 64))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x, t), fresh.eval()(x, t))


def test_nearest_embedding_is_the_same_through_onednn_and_mm():
    torch.manual_seed(0)
    emb, x = torch.randn(1000, 32), torch.randn(300, 32)  # 1000 is no multiple of the argmin block
    fast, plain = NearestEmbedding(emb), NearestEmbedding(emb)
    plain.packed = None
    assert fast.packed is not None or not onednn_linear_available()
    ids = fast.nearest_ids(x)
    assert torch.equal(ids, plain.nearest_ids(x))
    assert torch.equal(ids, torch.cdist(x, emb).argmin(-1))


def test_blocked_argmin_is_torch_argmin_with_ties():
    torch.manual_seed(0)
    scores = torch.randint(0, 5, (300, 128)).float()  # many ties: the first minimum must win
    torch.testing.assert_close(blocked_argmin(scores, 64), scores.argmin(-1))
    scores = torch.randn(50, 192)
    scores[7, 100] = scores[7, 5] = -100.0
    assert blocked_argmin(scores, 64)[7] == 5
    torch.testing.assert_close(blocked_argmin(scores, 64), scores.argmin(-1))


def test_forward_on_named_rows_equals_the_full_forward_there():
    torch.manual_seed(0)
    model = TransformerNetModel(40, 16, 16, 0.1, EncoderConfig(2, 32, 4, 64)).eval()
    x, t = torch.randn(3, 10, 16), torch.tensor([5.0, 500.0, 900.0])
    rows = torch.rand(3, 10) < 0.6
    with torch.no_grad():
        full, partial = model(x, t), model(x, t, rows)
    torch.testing.assert_close(partial[rows], full[rows])
    assert torch.count_nonzero(partial[~rows]) == 0


ALLOCATION_LOOP = """
import resource, torch
from diffuseq.runtime import keep_freed_memory
if {apply}:
    assert keep_freed_memory() and keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.ones(10 * 2**20).add_(torch.ones(2**21).sum())
before = faults()
for _ in range(20):
    torch.ones(10 * 2**20).add_(torch.ones(2**21).sum())  # 40 MB and 8 MB, written and freed
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_keep_freed_memory_stops_page_faults_on_repeated_allocations():
    def faults(apply: bool) -> int:
        code = ALLOCATION_LOOP.format(root=str(ROOT), apply=apply)
        return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    # the 40 MB block is 10,240 pages: mapped afresh in each of the 20 rounds by default (glibc maps
    # blocks above 32 MB), reused once kept (the heap may still grow once or twice)
    default, kept = faults(False), faults(True)
    assert default > 20 * 10_000
    assert kept < 3 * 10_240 + 20 * 500
