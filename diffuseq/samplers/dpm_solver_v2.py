"""DiffuSeq-v2's DPM-Solver decode (``sample_seq2seq_dpmSolver.py`` with its modified ``dpm_solver_pytorch.py``),
computed as their code computes it, in float32.

Schedule: DPM-Solver's discrete ``NoiseScheduleVP``: log alpha_n = 0.5 sum_{k <= n} log(1 - beta_k) (float64, then
float32) at the continuous times t_n = (n + 1) / T, interpolated linearly in between (and extrapolated outside);
sigma_t = sqrt(1 - alpha_t^2), lambda_t = log alpha_t - log sigma_t.

Grid: ``solver_steps`` S (their ``--step``, default 10) time-uniform steps, ``linspace(1, 1/T, S + 1)``; or, with a
``respacing``, its kept steps: step n at their time (n + 1) / T, where the interpolated schedule is the discrete one,
from the noisiest down (K kept steps: K - 1 solver steps; e.g. ``10`` is about ``solver_steps`` 9). The network is
called at each grid time but the last, with their model time t * 1000 (half a step later than training's
n * 1000 / T): S evaluations.

Each step from s to t: the network's output goes through their model wrapper's noise prediction and back,
eps = (x - alpha_s out) / sigma_s, x0 = (x - sigma_s eps) / alpha_s (float32: not exactly ``out`` where alpha_s
is small), source positions kept; then their modification of multistep DPM-Solver++ (order 2,
``lower_order_final``) *replaces the state x by that x0* before the update, with h = lambda_t - lambda_s and
phi = expm1(-h):

    first order (the first step, and the last when S < 10):  x_t = (sigma_t / sigma_s) x0 - alpha_t phi x0
    second order (2M):  x_t = (sigma_t / sigma_s) x0 - alpha_t phi x0 - 0.5 alpha_t phi (h / h_0) (x0 - x0_prev)

with h_0 the previous step's h. The chain ends at t = 1/T (sigma > 0: not denoised to zero). No noise, no
clamping, no ``mean_embed`` (the chain starts from N(0, I) on the target positions), no absorbing: their decoder
has none of these. It is not an integrator of the diffusion ODE (the state is not x_t); ``dpm++`` is.
"""

from __future__ import annotations

import dataclasses

import torch

from ..diffusion.respace import space_timesteps
from ..errors import UserError
from .base import ReverseSampler, SamplerOutput
from .clamp import NearestEmbedding
from .noise import ExampleNoise

DEFAULT_SOLVER_STEPS = 10  # their run_decode_solver.py's --step


@dataclasses.dataclass(frozen=True)
class Marginals:
    """The schedule at one grid time, each a 0-d float32 tensor (computed as their [1]-shaped ones; 0-d, they
    combine with a sample on any device)."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    lambda_: torch.Tensor


class DPMSolverV2Sampler(ReverseSampler):
    """DiffuSeq-v2's modified DPM-Solver++(2M) (see the module docstring): ``grid`` holds the continuous times
    (float32, from 1 down), ``marginals`` the schedule at each, ``timesteps`` their model times (grid * 1000,
    all but the last). The previous step's x_0 is the multistep state, forgotten at the first step."""

    name = "dpm-solver-v2"
    mean_start = False
    _previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (x_0, lambda) of the last step

    def set_timesteps(self, respacing: str | None = None) -> None:
        """The grid: ``respacing``'s kept steps (default: the config's, which then names the new ones), or without
        one ``solver_steps`` time-uniform steps."""
        if respacing is not None:
            self.config = dataclasses.replace(self.config, respacing=respacing,
                                              solver_steps=None if respacing else self.config.solver_steps)
        num_train = self.config.num_train_timesteps
        betas = torch.from_numpy(self.base.betas)
        self._log_alphas = (0.5 * torch.log(1 - betas).cumsum(dim=0)).float()
        self._knots = torch.linspace(0.0, 1.0, num_train + 1)[1:]
        if self.config.respacing:
            kept = sorted(space_timesteps(num_train, self.config.respacing), reverse=True)
            if len(kept) < 3:
                raise UserError(f"respacing {self.config.respacing!r} keeps {len(kept)} steps; dpm-solver-v2 needs "
                                f"at least 3 (two solver steps)")
            self.grid = self._knots[kept]
        else:
            self.config = dataclasses.replace(self.config,
                                              solver_steps=self.config.solver_steps or DEFAULT_SOLVER_STEPS)
            self.grid = torch.linspace(1.0, 1.0 / num_train, self.config.solver_steps + 1)
        self.marginals = [self._at(t.reshape(1)) for t in self.grid]
        self.timesteps = self.grid[:-1] * 1000.0
        self._index = {t: k for k, t in enumerate(self.timesteps.tolist())}

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Their ``interpolate_fn`` of log alpha at t ([1]): the segment of the knots around t (the first or
        last one outside them; at a knot, the one that starts there), in their order of operations."""
        knots, values = self._knots, self._log_alphas
        lo = torch.searchsorted(knots, t, right=True).clamp(1, len(knots) - 1) - 1
        return values[lo] + (t - knots[lo]) * (values[lo + 1] - values[lo]) / (knots[lo + 1] - knots[lo])

    def _at(self, t: torch.Tensor) -> Marginals:
        """The schedule at t ([1]), as their ``marginal_alpha``, ``marginal_std`` and ``marginal_lambda``."""
        log_alpha = self._log_alpha(t)
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(1.0 - torch.exp(2.0 * log_alpha))
        lambda_ = log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
        return Marginals(alpha.reshape(()), sigma.reshape(()), lambda_.reshape(()))

    def step(self, model_output: torch.Tensor, t: float | torch.Tensor, sample: torch.Tensor,
             noise: ExampleNoise | None = None, mask: torch.Tensor | None = None,
             clamp: NearestEmbedding | None = None, absorbing: torch.Tensor | None = None) -> SamplerOutput:
        """The solver's state at the next grid time from ``sample`` (the network's input at ``t``) and its
        output; ``mask`` (bool [batch, seq], default all) marks the positions it predicts, the others keep
        ``sample``. ``noise``, ``clamp`` and ``absorbing`` are not used: their solver has none."""
        k = self._index[float(t)]
        if k == 0:  # a chain starts
            self._previous = None
        now, nxt = self.marginals[k], self.marginals[k + 1]
        x = sample.float()
        eps = (x - now.alpha * model_output.float()) / now.sigma  # their model wrapper: x_0 -> noise
        x0 = (x - now.sigma * eps) / now.alpha  # and DPM-Solver++'s data prediction: noise -> x_0
        if mask is not None:
            x0 = torch.where(mask.unsqueeze(-1), x0, x)
        h = nxt.lambda_ - now.lambda_
        phi = torch.expm1(-h)
        steps = self.num_steps
        order = 1 if self._previous is None or (steps < 10 and k == steps - 1) else 2
        if order == 1:
            x_next = nxt.sigma / now.sigma * x0 - nxt.alpha * phi * x0
        else:
            previous, lambda_previous = self._previous
            r0 = (now.lambda_ - lambda_previous) / h
            d1 = (1.0 / r0) * (x0 - previous)
            x_next = (nxt.sigma / now.sigma) * x0 - (nxt.alpha * phi) * x0 - 0.5 * (nxt.alpha * phi) * d1
        self._previous = (x0, now.lambda_)
        return SamplerOutput(x_next.to(sample.dtype), x0)
