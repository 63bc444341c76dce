"""Training losses: DiffuSeq's base loss and the Distance Penalty of Tang et al. (2023).

Every function returns per-example terms (shape [B]); the caller weights them
by the timestep distribution's importance weights and averages.

Base loss (DiffuSeq): ``loss = mse + rounding + tT`` with
* ``mse``: mean((x0 - f(x_t, t))^2) over positions and dims (target x0_mean at t = 0),
* ``tT``: mean(q_mean(x0, T-1)^2), which keeps the embeddings from growing,
* ``rounding``: cross-entropy of lm_head(x0) against the tokens, over all positions,
and ``nll`` (logged only): cross-entropy of lm_head(f(x_t, t)) on the target part.

Distance Penalty post-training (Bridge-Gap's ``training_losses_seq2seq``): a neighbour
step t' is drawn per example (:mod:`diffuseq.diffusion.penalty`); f is evaluated at t and t' in
one forward pass of a batch twice as large, and
``loss = (mse_t + mse_t' + 2 rounding + 2 tT + penalty) / 2`` with the penalty of
:class:`DistancePenalty` where a neighbour exists.

DiffuSeq-v2 (a denoiser with ``mean_embed`` m, ``--learned_mean_embed``): x_t is centred on m on the
target positions, and with ``--denoise`` each target token is m itself with probability
``denoise_rate sqrt(1 - ab_t)`` (:meth:`GaussianDiffusion.q_sample`); the loss gains ``reg``,
``reg_rate ||m||_2`` for every example (``tT`` ignores m, as v2's). With the Distance Penalty the
neighbour's x_t' is drawn the same way (its own absorbing draw) and ``reg`` is added once.

Self-conditioning (``--self_cond``, our addition): for a random half of the examples the
denoiser first estimates x_0 without an estimate (no gradient), and that estimate, on the
target positions, is its extra input for the prediction the loss is taken on; the other
half gets zeros, as at the first decoding step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..diffusion.penalty import DistancePenalty, NeighbourRule, mean_flat
from ..diffusion.process import GaussianDiffusion
from .cross_entropy import CrossEntropyWorkspace, token_cross_entropy


def unwrap(model: nn.Module) -> nn.Module:
    """The denoiser inside a DistributedDataParallel (or compiled) wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


@dataclass
class LossDraws:
    """Every random draw of one loss evaluation, in this order: the x_0 noise; with a penalty the neighbour steps
    (and where the penalty applies); the x_t noise; with DiffuSeq-v2's discrete noise the uniforms of its absorbing
    draw ([B, N]: a token is absorbed where its uniform is below the probability); with a penalty the x_t' noise and
    (v2) its absorbing uniforms; with self-conditioning which examples get an estimate.

    ``sample`` draws them from ``generator`` (default: the device's default generator, the
    training stream); a test can supply its own draws to compare with another implementation
    draw for draw.
    """

    x0_noise: torch.Tensor
    xt_noise: torch.Tensor
    t_nb: torch.Tensor | None = None
    active: torch.Tensor | None = None
    nb_noise: torch.Tensor | None = None
    self_cond: torch.Tensor | None = None  # bool [B]: which examples get their own estimate
    absorb_uniform: torch.Tensor | None = None  # [B, N]: DiffuSeq-v2's absorbing draw at t
    nb_absorb_uniform: torch.Tensor | None = None  # [B, N]: the same at t'

    @classmethod
    def sample(cls, x0_mean: torch.Tensor, t: torch.Tensor, neighbours: NeighbourRule | None = None,
               self_cond: bool = False, generator: torch.Generator | None = None,
               absorbing: bool = False) -> "LossDraws":
        """The draws of one evaluation from ``generator``; ``absorbing``: with DiffuSeq-v2's discrete noise."""
        def noise() -> torch.Tensor:
            return torch.randn(x0_mean.shape, dtype=x0_mean.dtype, device=x0_mean.device, generator=generator)

        def uniform() -> torch.Tensor | None:
            return (torch.rand(x0_mean.shape[:2], device=x0_mean.device, generator=generator) if absorbing
                    else None)

        x0_noise = noise()
        if neighbours is None:
            draws = cls(x0_noise, noise(), absorb_uniform=uniform())
        else:  # the order of Bridge-Gap's draws: x_0 noise, neighbours, x_t noise, x_t' noise
            t_nb, active = neighbours.draw(t, generator)
            draws = cls(x0_noise, noise(), t_nb, active, absorb_uniform=uniform())
            draws.nb_noise, draws.nb_absorb_uniform = noise(), uniform()
        if self_cond:
            draws.self_cond = torch.rand(t.shape, device=t.device, generator=generator) < 0.5
        return draws


def self_cond_input(model: nn.Module, x_t: torch.Tensor, ts: torch.Tensor, mask: torch.Tensor,
                    use: torch.Tensor | None) -> torch.Tensor | None:
    """The previous-estimate input in training: the denoiser's own detached x_0 estimate on the
    target positions of the examples ``use`` names, zeros elsewhere (``None`` without self-conditioning).

    The estimate runs only on the chosen examples, without gradient, and outside any
    DistributedDataParallel wrapper (it synchronises nothing).
    """
    if use is None:
        return None
    prev = torch.zeros_like(x_t)
    chosen = use.nonzero().squeeze(1)
    if chosen.numel():
        with torch.no_grad():
            estimate = unwrap(model)(x_t[chosen], ts[chosen])
        prev[chosen] = torch.where(mask[chosen].bool().unsqueeze(-1), estimate.to(prev.dtype), 0.0)
    return prev


def _rounding_and_tT(net: nn.Module, diffusion: GaussianDiffusion, x0: torch.Tensor, ids: torch.Tensor,
                     workspace: CrossEntropyWorkspace | None) -> tuple[torch.Tensor, torch.Tensor]:
    last = torch.full((x0.size(0),), diffusion.num_timesteps - 1, device=x0.device, dtype=torch.long)
    t_t = mean_flat(diffusion.q_mean(x0, last) ** 2)
    rounding = token_cross_entropy(x0, net.lm_head, ids, workspace=workspace)
    return rounding, t_t


def _noised(diffusion: GaussianDiffusion, net: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
           mask: torch.Tensor, denoise_rate: float | None, uniform: torch.Tensor | None) -> torch.Tensor:
    """x_t of training: DiffuSeq's, or (a denoiser with ``mean_embed``) DiffuSeq-v2's centred on it, where with a
    ``denoise_rate`` the tokens whose ``uniform`` is below ``denoise_rate sqrt(1 - ab_t)`` are absorbed."""
    absorb = None if denoise_rate is None else uniform < diffusion.absorb_probs(t, denoise_rate)
    return diffusion.q_sample(x0, t, noise, mask, getattr(net, "mean_embed", None), absorb)


def _add_mean_embed_reg(terms: dict[str, torch.Tensor], net: nn.Module, reg_rate: float) -> None:
    """A denoiser with ``mean_embed``: DiffuSeq-v2's ``reg = reg_rate ||mean_embed||_2`` (L2 norm, not squared),
    the same for every example, as a term and added to ``loss``."""
    mean = getattr(net, "mean_embed", None)
    if mean is not None:
        terms["reg"] = (reg_rate * mean.norm(p=2)).expand_as(terms["loss"])
        terms["loss"] = terms["loss"] + terms["reg"]


def predict(model: nn.Module, x_t: torch.Tensor, ts: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """f(x_t, t), with the previous estimate ``prev`` when the denoiser is self-conditioned."""
    return model(x_t, ts) if prev is None else model(x_t, ts, x0_prev=prev)


def predict_pair(model: nn.Module, x_a: torch.Tensor, ts_a: torch.Tensor, x_b: torch.Tensor, ts_b: torch.Tensor,
                 batched: bool = True, prev_a: torch.Tensor | None = None,
                 prev_b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x_a, t_a) and f(x_b, t_b) (with their previous estimates, if self-conditioned): one
    forward of the concatenated batch, or two forwards."""
    if not batched:
        return predict(model, x_a, ts_a, prev_a), predict(model, x_b, ts_b, prev_b)
    prev = None if prev_a is None else torch.cat([prev_a, prev_b])
    return predict(model, torch.cat([x_a, x_b]), torch.cat([ts_a, ts_b]), prev).chunk(2)


def diffuseq_losses(model: nn.Module, diffusion: GaussianDiffusion, ids: torch.Tensor, mask: torch.Tensor,
                    t: torch.Tensor, with_nll: bool = False, draws: LossDraws | None = None,
                    workspace: CrossEntropyWorkspace | None = None, generator: torch.Generator | None = None,
                    denoise_rate: float | None = None, reg_rate: float = 0.0) -> dict[str, torch.Tensor]:
    """DiffuSeq's loss terms per example: ``loss``, ``mse``, ``rounding``, ``tT`` (and ``nll``; ``reg`` for a
    denoiser with ``mean_embed``); the random ``draws`` are sampled from ``generator`` when not given.
    ``denoise_rate``: DiffuSeq-v2's discrete noise (None: off)."""
    net = unwrap(model)
    x0_mean = net.get_embeds(ids)
    draws = draws or LossDraws.sample(x0_mean, t, self_cond=getattr(net, "self_cond", False), generator=generator,
                                      absorbing=denoise_rate is not None)
    x0 = x0_mean + float(diffusion.sqrt_one_minus_alphas_cumprod[0]) * draws.x0_noise
    x_t = _noised(diffusion, net, x0, t, draws.xt_noise, mask, denoise_rate, draws.absorb_uniform)
    ts = diffusion.scale_timesteps(t)
    pred = predict(model, x_t, ts, self_cond_input(model, x_t, ts, mask, draws.self_cond))
    mse = torch.where(t == 0, mean_flat((x0_mean - pred) ** 2), mean_flat((x0 - pred) ** 2))
    rounding, t_t = _rounding_and_tT(net, diffusion, x0, ids, workspace)
    terms = {"loss": mse + rounding + t_t, "mse": mse, "rounding": rounding, "tT": t_t}
    _add_mean_embed_reg(terms, net, reg_rate)
    if with_nll:
        with torch.no_grad():
            terms["nll"] = token_cross_entropy(pred, net.lm_head, ids, mask)
    return terms


def distance_penalty_losses(model: nn.Module, diffusion: GaussianDiffusion, penalty: DistancePenalty,
                            ids: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, with_nll: bool = False,
                            batched: bool = True, draws: LossDraws | None = None,
                            workspace: CrossEntropyWorkspace | None = None, generator: torch.Generator | None = None,
                            denoise_rate: float | None = None, reg_rate: float = 0.0) -> dict[str, torch.Tensor]:
    """Post-training terms per example: ``loss``, ``mse`` (at t), ``mse_nb`` (at t'), ``penalty``, ...

    ``loss = (mse_t + mse_t' + 2 rounding + 2 tT + penalty) / 2``: the mse target is x0_mean
    for both predictions, and the penalty is zero where the neighbour draw found no neighbour.
    A DiffuSeq-v2 denoiser's x_t and x_t' are both v2's (each with its own absorbing draw), and
    ``loss`` gains its ``reg`` once (the half of the two base losses' ``2 reg``).
    """
    net = unwrap(model)
    x0_mean = net.get_embeds(ids)
    draws = draws or LossDraws.sample(x0_mean, t, penalty.neighbours, self_cond=getattr(net, "self_cond", False),
                                      generator=generator, absorbing=denoise_rate is not None)
    x0 = x0_mean + float(diffusion.sqrt_one_minus_alphas_cumprod[0]) * draws.x0_noise
    t_nb = draws.t_nb
    x_t = _noised(diffusion, net, x0, t, draws.xt_noise, mask, denoise_rate, draws.absorb_uniform)
    x_nb = _noised(diffusion, net, x0, t_nb, draws.nb_noise, mask, denoise_rate, draws.nb_absorb_uniform)
    ts, ts_nb = diffusion.scale_timesteps(t), diffusion.scale_timesteps(t_nb)
    pred, pred_nb = predict_pair(model, x_t, ts, x_nb, ts_nb, batched=batched,
                                 prev_a=self_cond_input(model, x_t, ts, mask, draws.self_cond),
                                 prev_b=self_cond_input(model, x_nb, ts_nb, mask, draws.self_cond))
    mse = mean_flat((x0_mean - pred) ** 2)
    mse_nb = mean_flat((x0_mean - pred_nb) ** 2)
    pen = penalty.penalty(pred, pred_nb, net.lm_head) * draws.active.to(mse.dtype)
    rounding, t_t = _rounding_and_tT(net, diffusion, x0, ids, workspace)
    terms = {"loss": (mse + mse_nb + 2 * rounding + 2 * t_t + pen) / 2, "mse": mse, "mse_nb": mse_nb,
             "penalty": pen, "rounding": rounding, "tT": t_t}
    _add_mean_embed_reg(terms, net, reg_rate)
    if with_nll:
        with torch.no_grad():
            terms["nll"] = token_cross_entropy(pred, net.lm_head, ids, mask)
    return terms
