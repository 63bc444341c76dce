"""Training losses: DiffuSeq's base loss and the Distance Penalty of Tang et al. (2023).

Every function returns per-example terms (shape [B]); the caller weights them
by the timestep sampler's importance weights and averages.

Base loss (DiffuSeq): ``loss = mse + rounding + tT`` with
* ``mse``: mean((x0 - f(x_t, t))^2) over positions and dims (target x0_mean at t = 0),
* ``tT``: mean(q_mean(x0, T-1)^2), which keeps the embeddings from growing,
* ``rounding``: cross-entropy of lm_head(x0) against the tokens, over all positions,
and ``nll`` (logged only): cross-entropy of lm_head(f(x_t, t)) on the target part.

Distance Penalty post-training: a neighbour step t' is drawn per example
(:mod:`diffuseq.neighbours`); f is evaluated at t and t' in one forward pass of a
batch twice as large, and
``loss = (mse_t + mse_t' + 2 rounding + 2 tT + penalty) / 2`` with
``penalty = -simi_lambda * distance(f(x_t', t'), f(x_t, t))`` where a neighbour exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .gaussian_diffusion import GaussianDiffusion
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


def token_cross_entropy(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example cross-entropy, averaged over all positions or over ``mask == 1`` positions."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten(), reduction="none").view(ids.shape)
    if mask is None:
        return ce.mean(dim=-1)
    mask = mask.to(ce.dtype)
    return (ce * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


@dataclass
class DistancePenalty:
    """The post-training penalty: which distance, its weight and how the neighbour step is chosen."""

    kind: str
    simi_lambda: float
    neighbours: NeighbourSampler

    @classmethod
    def create(cls, kind: str, simi_lambda: float, diffusion: GaussianDiffusion, simi_step: int = 10,
               simi_noise: float = 0.05) -> "DistancePenalty":
        """Validate the settings and precompute the neighbour windows of ``diffusion`` once."""
        if kind not in PENALTIES:
            raise UserError(f"unknown --simi_penalty {kind!r}; choose one of: {', '.join(PENALTIES)} (or '' for none)")
        if simi_lambda > 0:
            raise UserError(f"--simi_lambda must be negative or zero (the penalty is -simi_lambda * distance); "
                            f"got {simi_lambda} (the paper uses -2)")
        return cls(kind, simi_lambda, NeighbourSampler(kind, diffusion.alphas_cumprod, simi_step, simi_noise))

    def distance(self, pred: torch.Tensor, pred_nb: torch.Tensor, t: torch.Tensor, t_nb: torch.Tensor,
                 lm_head: nn.Module) -> torch.Tensor:
        """Per-example distance between the predictions at t and at its neighbour t'."""
        if self.kind == "cosine":
            return (1 - F.cosine_similarity(pred, pred_nb, dim=-1)).mean(dim=-1)
        if self.kind == "kl":
            logits, logits_nb = lm_head(pred).float(), lm_head(pred_nb).float()
            nb_is_teacher = (t_nb < t).view(-1, 1, 1)
            teacher = torch.where(nb_is_teacher, logits_nb, logits).detach()
            student = torch.where(nb_is_teacher, logits, logits_nb)
            kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="none")
            return kl.sum(-1).mean(-1)
        return mean_flat((pred_nb - pred) ** 2)


def _prepare_x0(net: nn.Module, diffusion: GaussianDiffusion, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0_mean = emb(ids) and x0 = x0_mean + sqrt(1 - alpha_bar_0) * eps'."""
    x0_mean = net.get_embeds(ids)
    x0 = x0_mean + float(diffusion.sqrt_one_minus_alphas_cumprod[0]) * torch.randn_like(x0_mean)
    return x0_mean, x0


def _rounding_and_tT(net: nn.Module, diffusion: GaussianDiffusion, x0: torch.Tensor,
                     ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    last = torch.full((x0.size(0),), diffusion.num_timesteps - 1, device=x0.device, dtype=torch.long)
    t_t = mean_flat(diffusion.q_mean(x0, last) ** 2)
    rounding = token_cross_entropy(net.get_logits(x0), ids)
    return rounding, t_t


def predict_pair(model: nn.Module, x_a: torch.Tensor, ts_a: torch.Tensor, x_b: torch.Tensor, ts_b: torch.Tensor,
                 batched: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x_a, t_a) and f(x_b, t_b): one forward of the concatenated batch, or two forwards."""
    if not batched:
        return model(x_a, ts_a), model(x_b, ts_b)
    return model(torch.cat([x_a, x_b]), torch.cat([ts_a, ts_b])).chunk(2)


def diffuseq_losses(model: nn.Module, diffusion: GaussianDiffusion, ids: torch.Tensor, mask: torch.Tensor,
                    t: torch.Tensor, with_nll: bool = False) -> dict[str, torch.Tensor]:
    """DiffuSeq's loss terms per example: ``loss``, ``mse``, ``rounding``, ``tT`` (and ``nll``)."""
    net = unwrap(model)
    x0_mean, x0 = _prepare_x0(net, diffusion, ids)
    x_t = diffusion.q_sample(x0, t, torch.randn_like(x0), mask)
    pred = model(x_t, diffusion.scale_timesteps(t))
    mse = torch.where(t == 0, mean_flat((x0_mean - pred) ** 2), mean_flat((x0 - pred) ** 2))
    rounding, t_t = _rounding_and_tT(net, diffusion, x0, ids)
    terms = {"loss": mse + rounding + t_t, "mse": mse, "rounding": rounding, "tT": t_t}
    if with_nll:
        with torch.no_grad():
            terms["nll"] = token_cross_entropy(net.get_logits(pred), ids, mask)
    return terms


def distance_penalty_losses(model: nn.Module, diffusion: GaussianDiffusion, penalty: DistancePenalty,
                            ids: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, with_nll: bool = False,
                            batched: bool = True) -> dict[str, torch.Tensor]:
    """Post-training terms per example: ``loss``, ``mse`` (at t), ``mse_nb`` (at t'), ``penalty``, ...

    The mse target is x0_mean for both predictions; the penalty is zero where
    the neighbour sampler found no neighbour.
    """
    net = unwrap(model)
    x0_mean, x0 = _prepare_x0(net, diffusion, ids)
    t_nb, active = penalty.neighbours.sample(t)
    x_t = diffusion.q_sample(x0, t, torch.randn_like(x0), mask)
    x_nb = diffusion.q_sample(x0, t_nb, torch.randn_like(x0), mask)
    pred, pred_nb = predict_pair(model, x_t, diffusion.scale_timesteps(t), x_nb, diffusion.scale_timesteps(t_nb),
                                 batched=batched)
    mse = mean_flat((x0_mean - pred) ** 2)
    mse_nb = mean_flat((x0_mean - pred_nb) ** 2)
    distance = penalty.distance(pred, pred_nb, t, t_nb, net.lm_head)
    pen = -penalty.simi_lambda * distance * active.to(distance.dtype)
    rounding, t_t = _rounding_and_tT(net, diffusion, x0, ids)
    terms = {"loss": (mse + mse_nb + 2 * rounding + 2 * t_t + pen) / 2, "mse": mse, "mse_nb": mse_nb,
             "penalty": pen, "distance": distance.detach(), "rounding": rounding, "tT": t_t}
    if with_nll:
        with torch.no_grad():
            terms["nll"] = token_cross_entropy(net.get_logits(pred), ids, mask)
    return terms
