"""Training losses: DiffuSeq's base loss and the Distance Penalty of Tang et al. (2023).

Every function returns per-example terms (shape [B]); the caller weights them
by the timestep sampler's importance weights and averages.

Base loss (DiffuSeq): ``loss = mse + rounding + tT`` with
* ``mse``: mean((x0 - f(x_t, t))^2) over positions and dims (target x0_mean at t = 0),
* ``tT``: mean(q_mean(x0, T-1)^2), which keeps the embeddings from growing,
* ``rounding``: cross-entropy of lm_head(x0) against the tokens, over all positions,
and ``nll`` (logged only): cross-entropy of lm_head(f(x_t, t)) on the target part.

Distance Penalty post-training (Bridge-Gap's ``training_losses_seq2seq``): a neighbour
step t' is drawn per example (:mod:`diffuseq.neighbours`); f is evaluated at t and t' in
one forward pass of a batch twice as large, and
``loss = (mse_t + mse_t' + 2 rounding + 2 tT + penalty) / 2`` with the penalty of
:class:`DistancePenalty` where a neighbour exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .diffusion.process import GaussianDiffusion
from .errors import UserError
from .neighbours import NeighbourSampler

PENALTIES = ("l2", "l2_noise", "l2_noise_random", "cosine", "kl")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first."""
    return x.mean(dim=tuple(range(1, x.dim())))


def unwrap(model: nn.Module) -> nn.Module:
    """The denoiser inside a DistributedDataParallel (or compiled) wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


CE_BLOCK_ELEMENTS = 2**21  # logits per block of rows (8 MB in float32): small enough to stay in cache
# log of the smallest normal float32: exp() below it gives denormals (very slow on CPUs) or zeros
LOG_TINY = math.log(torch.finfo(torch.float32).tiny)
GRAD_SCALE = 2.0**64  # keeps the backward's products of tiny probabilities out of the denormal range
_spare_log_probs: list[torch.Tensor] = []


def _log_prob_buffer(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """A float32 [rows, vocab] tensor: the one the last backward released when it fits, else a new one."""
    if _spare_log_probs and _spare_log_probs[0].shape == (rows, vocab) and _spare_log_probs[0].device == device:
        return _spare_log_probs.pop()
    _spare_log_probs.clear()
    return torch.empty(rows, vocab, dtype=torch.float32, device=device)


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of ``hidden @ weight.T + bias`` against ``ids``, computed block by block.

    The float32 log-probabilities kept for backward live in one buffer that is
    reused from call to call (a fresh one of this size would be mapped and
    zeroed by the OS every step), filled and turned into the logits' gradient
    a cache-sized block of rows at a time. Logits further below their row's
    maximum than ``LOG_TINY + log(vocab)`` are raised to that floor before the
    log-softmax, so that no probability is a denormal; this moves the
    log-sum-exp and the gradient by less than float32 resolves, and the target's
    own logit is never raised. Matmuls run in ``dtype`` (the autocast dtype, as
    ``nn.Linear`` would), the log-softmax in float32, as
    ``F.cross_entropy(logits.float())``. Backward may run only once.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ids: torch.Tensor,
                dtype: torch.dtype, keep: bool) -> torch.Tensor:
        x, w, b = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
        vocab = w.size(0)
        floor = LOG_TINY + math.log(vocab) + 1
        log_probs = _log_prob_buffer(ids.numel(), vocab, hidden.device)
        ce = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)
        step = max(1, CE_BLOCK_ELEMENTS // vocab)
        scratch = None if dtype == torch.float32 else torch.empty(step, vocab, dtype=dtype, device=hidden.device)
        for start in range(0, ids.numel(), step):
            block = slice(start, start + step)
            idx = ids[block, None]
            logits = log_probs[block]
            if scratch is None:
                torch.addmm(b, x[block], w.t(), out=logits)
            else:
                logits.copy_(torch.addmm(b, x[block], w.t(), out=scratch[:logits.size(0)]))
            target = logits.gather(1, idx)
            torch.maximum(logits, logits.amax(1, keepdim=True) + floor, out=logits)
            raised = logits.gather(1, idx) - target  # what the floor added to the target logit (mostly 0)
            torch.log_softmax(logits, 1, out=logits)
            ce[block] = (raised - logits.gather(1, idx)).squeeze(1)
        if keep:
            ctx.save_for_backward(x, w, ids)
            ctx.log_probs = log_probs
            ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype)
        else:
            _spare_log_probs[:] = [log_probs]
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
        # The incoming per-row gradient g is scaled by 2^64 before it meets the probabilities and the
        # sums are scaled back once at the end: a power of two changes no rounding, but the products of
        # tiny probabilities and g * x (~1e-34 * 1e-5) stay normal floats instead of denormals, which
        # some CPUs (Intel's) process tens of times slower.
        scaled_g = grad_ce * GRAD_SCALE
        for start in range(0, ids.numel(), step):
            block = slice(start, start + step)
            # d ce / d logits = softmax - one_hot(ids), built in place of the log-probabilities
            grad = log_probs[block].exp_()
            grad[torch.arange(grad.size(0), device=grad.device), ids[block]] -= 1
            g = scaled_g[block, None]
            grad_b.addmv_(grad.t(), g.squeeze(1))
            if scratch is None:  # g scales the small factors: g * (G @ W) and G.T @ (g * x)
                torch.mul(grad @ w, grad_ce[block, None], out=grad_x[block])
                grad_w.addmm_(grad.t(), x[block] * g)
            else:  # g scales G as it is rounded to the matmul dtype, as in F.cross_entropy's backward
                grad = torch.mul(grad, g, out=scratch[:grad.size(0)])
                torch.mm(grad, w, out=grad_x[block])
                grad_w.add_(grad.t() @ x[block])
        if scratch is not None:
            grad_x.mul_(1 / GRAD_SCALE)
        grad_w.mul_(1 / GRAD_SCALE)
        grad_b.mul_(1 / GRAD_SCALE)
        _spare_log_probs[:] = [log_probs]
        return grad_x.to(hidden_dtype), grad_w.to(weight_dtype), grad_b.to(bias_dtype), None, None, None


def token_cross_entropy(hidden: torch.Tensor, lm_head: nn.Linear, ids: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example cross-entropy of ``lm_head(hidden)``, averaged over all positions or over ``mask == 1``."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else lm_head.weight.dtype
    inputs = (hidden.flatten(0, 1), lm_head.weight, lm_head.bias)
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    with torch.autocast(device, enabled=False):
        ce = _LinearCrossEntropy.apply(*inputs, ids.flatten(), dtype, keep).view(ids.shape)
    if mask is None:
        return ce.mean(dim=-1)
    mask = mask.to(ce.dtype)
    return (ce * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


@dataclass
class LossDraws:
    """Every random draw of one loss evaluation: the x_0 noise, the x_t noise and, with a penalty,
    the neighbour steps (and where the penalty applies) and the x_t' noise.

    ``sample`` draws them from the default generator; a test can supply its own to compare
    with another implementation draw for draw.
    """

    x0_noise: torch.Tensor
    xt_noise: torch.Tensor
    t_nb: torch.Tensor | None = None
    active: torch.Tensor | None = None
    nb_noise: torch.Tensor | None = None

    @classmethod
    def sample(cls, x0_mean: torch.Tensor, t: torch.Tensor, neighbours: NeighbourSampler | None = None) -> "LossDraws":
        x0_noise = torch.randn_like(x0_mean)
        if neighbours is None:
            return cls(x0_noise, torch.randn_like(x0_mean))
        t_nb, active = neighbours.sample(t)
        return cls(x0_noise, torch.randn_like(x0_mean), t_nb, active, torch.randn_like(x0_mean))


@dataclass
class DistancePenalty:
    """The post-training penalty: which distance, its weight and how the neighbour step is chosen.

    As in Bridge-Gap's ``training_losses_seq2seq`` (and ``..._kl``), per example:
    * ``l2*``: ``-simi_lambda * mean((f(x_t', t') - f(x_t, t))^2)`` (simi_lambda <= 0);
    * ``cosine``: with c the cosine similarity per position, ``simi_lambda * mean(1 + c)`` for
      simi_lambda > 0, else ``-simi_lambda * mean(1 - c)``;
    * ``kl``: ``simi_lambda * mean over positions and vocabulary of p_t' (log p_t' - log p_t)``,
      the teacher t' = t - simi_step predicting without gradient (simi_lambda >= 0).
    """

    kind: str
    simi_lambda: float
    neighbours: NeighbourSampler

    @classmethod
    def create(cls, kind: str, simi_lambda: float, diffusion: GaussianDiffusion, simi_step: int = 10,
               simi_noise: float = 0.05) -> "DistancePenalty":
        """Validate the settings and precompute the neighbour windows of ``diffusion`` once."""
        if kind not in PENALTIES:
            raise UserError(f"unknown --simi_penalty {kind!r}; choose one of: {', '.join(PENALTIES)} (or '' for none)")
        if kind.startswith("l2") and simi_lambda > 0:
            raise UserError(f"--simi_lambda must be negative or zero for {kind} (the penalty is -simi_lambda * "
                            f"distance); got {simi_lambda} (the paper uses -2)")
        if kind == "kl" and simi_lambda < 0:
            raise UserError(f"--simi_lambda must be positive or zero for kl (the penalty is simi_lambda * KL); "
                            f"got {simi_lambda}")
        if simi_step >= diffusion.num_timesteps and kind in ("l2", "cosine", "kl"):
            raise UserError(f"--simi_step {simi_step} must be below the model's T = {diffusion.num_timesteps}")
        return cls(kind, simi_lambda, NeighbourSampler(kind, diffusion.alphas_cumprod, simi_step, simi_noise))

    def penalty(self, pred: torch.Tensor, pred_nb: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Per-example weighted penalty between the predictions at t and at the neighbour t'."""
        if self.kind == "cosine":
            cos = F.cosine_similarity(pred_nb, pred, dim=-1)
            if self.simi_lambda > 0:
                return mean_flat(1 + cos) * self.simi_lambda
            return -mean_flat(1 - cos) * self.simi_lambda
        if self.kind == "kl":
            with torch.no_grad():
                logits_teacher = lm_head(pred_nb)
            log_pred = F.log_softmax(lm_head(pred), dim=-1)
            log_target = F.log_softmax(logits_teacher, dim=-1)
            return mean_flat(F.softmax(logits_teacher, dim=-1) * (log_target - log_pred)) * self.simi_lambda
        return -mean_flat((pred_nb - pred) ** 2) * self.simi_lambda


def _rounding_and_tT(net: nn.Module, diffusion: GaussianDiffusion, x0: torch.Tensor,
                     ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    last = torch.full((x0.size(0),), diffusion.num_timesteps - 1, device=x0.device, dtype=torch.long)
    t_t = mean_flat(diffusion.q_mean(x0, last) ** 2)
    rounding = token_cross_entropy(x0, net.lm_head, ids)
    return rounding, t_t


def predict_pair(model: nn.Module, x_a: torch.Tensor, ts_a: torch.Tensor, x_b: torch.Tensor, ts_b: torch.Tensor,
                 batched: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x_a, t_a) and f(x_b, t_b): one forward of the concatenated batch, or two forwards."""
    if not batched:
        return model(x_a, ts_a), model(x_b, ts_b)
    return model(torch.cat([x_a, x_b]), torch.cat([ts_a, ts_b])).chunk(2)


def diffuseq_losses(model: nn.Module, diffusion: GaussianDiffusion, ids: torch.Tensor, mask: torch.Tensor,
                    t: torch.Tensor, with_nll: bool = False,
                    draws: LossDraws | None = None) -> dict[str, torch.Tensor]:
    """DiffuSeq's loss terms per example: ``loss``, ``mse``, ``rounding``, ``tT`` (and ``nll``)."""
    net = unwrap(model)
    x0_mean = net.get_embeds(ids)
    draws = draws or LossDraws.sample(x0_mean, t)
    x0 = x0_mean + float(diffusion.sqrt_one_minus_alphas_cumprod[0]) * draws.x0_noise
    x_t = diffusion.q_sample(x0, t, draws.xt_noise, mask)
    pred = model(x_t, diffusion.scale_timesteps(t))
    mse = torch.where(t == 0, mean_flat((x0_mean - pred) ** 2), mean_flat((x0 - pred) ** 2))
    rounding, t_t = _rounding_and_tT(net, diffusion, x0, ids)
    terms = {"loss": mse + rounding + t_t, "mse": mse, "rounding": rounding, "tT": t_t}
    if with_nll:
        with torch.no_grad():
            terms["nll"] = token_cross_entropy(pred, net.lm_head, ids, mask)
    return terms


def distance_penalty_losses(model: nn.Module, diffusion: GaussianDiffusion, penalty: DistancePenalty,
                            ids: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, with_nll: bool = False,
                            batched: bool = True, draws: LossDraws | None = None) -> dict[str, torch.Tensor]:
    """Post-training terms per example: ``loss``, ``mse`` (at t), ``mse_nb`` (at t'), ``penalty``, ...

    ``loss = (mse_t + mse_t' + 2 rounding + 2 tT + penalty) / 2``: the mse target is x0_mean
    for both predictions, and the penalty is zero where the neighbour draw found no neighbour.
    """
    net = unwrap(model)
    x0_mean = net.get_embeds(ids)
    draws = draws or LossDraws.sample(x0_mean, t, penalty.neighbours)
    x0 = x0_mean + float(diffusion.sqrt_one_minus_alphas_cumprod[0]) * draws.x0_noise
    t_nb = draws.t_nb
    x_t = diffusion.q_sample(x0, t, draws.xt_noise, mask)
    x_nb = diffusion.q_sample(x0, t_nb, draws.nb_noise, mask)
    pred, pred_nb = predict_pair(model, x_t, diffusion.scale_timesteps(t), x_nb, diffusion.scale_timesteps(t_nb),
                                 batched=batched)
    mse = mean_flat((x0_mean - pred) ** 2)
    mse_nb = mean_flat((x0_mean - pred_nb) ** 2)
    pen = penalty.penalty(pred, pred_nb, net.lm_head) * draws.active.to(mse.dtype)
    rounding, t_t = _rounding_and_tT(net, diffusion, x0, ids)
    terms = {"loss": (mse + mse_nb + 2 * rounding + 2 * t_t + pen) / 2, "mse": mse, "mse_nb": mse_nb,
             "penalty": pen, "rounding": rounding, "tT": t_t}
    if with_nll:
        with torch.no_grad():
            terms["nll"] = token_cross_entropy(pred, net.lm_head, ids, mask)
    return terms
