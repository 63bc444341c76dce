"""What every reverse sampler shares: its configuration, the respaced process, clamping and the step contract.

A sampler follows the diffusers scheduler shape: built once from a frozen :class:`SamplerConfig`
(saved beside the outputs, ``to_dict`` / ``from_dict``), ``set_timesteps`` chooses the steps,
``timesteps`` lists what the network is given at each step, in order, and ``step(model_output,
t, sample, noise=..., mask=..., clamp=...)`` makes one reverse step from the network's x_0
prediction, drawing its own noise, and returns the next sample with the x_0 it used.

DiffuSeq-v2 (a model with a learned absorbing state, ``mean_embed``): the chain of a sampler with
``mean_start`` starts from noise + that state on the target positions, and with the config's
``denoise_rate`` a sampler that ``absorbs`` (DDPM) turns tokens of each step's sample into it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..diffusion.process import GaussianDiffusion
from ..diffusion.respace import respaced_diffusion, space_timesteps
from ..errors import UserError
from .clamp import NearestEmbedding
from .noise import ExampleNoise


@dataclass(frozen=True)
class SamplerConfig:
    """Everything that defines the reverse process of a decode (DiffuSeq's flag names)."""

    num_train_timesteps: int = 2000
    noise_schedule: str = "sqrt"
    respacing: str = ""
    eta: float = -1.0
    clamp_step: int = 0
    clip_denoised: bool = False
    top_p: float = 0.0
    sigma_small: bool = False
    sampler: str = ""  # "" = DiffuSeq's rule (see ``resolve``)
    solver_steps: int | None = None  # dpm-solver-v2's steps on its time-uniform grid (None: its default)
    denoise_rate: float = 0.0  # DiffuSeq-v2's absorbing rate in DDPM steps, from the checkpoint (0: none)

    def check(self) -> None:
        """Reject values no sampler accepts, and an ``eta`` or ``solver_steps`` that contradicts ``sampler``
        (one-line ``UserError``)."""
        if not (self.eta == -1 or 0 <= self.eta <= 1):
            raise UserError(f"`eta` must be -1 (DDPM) or in [0, 1] (DDIM), got {self.eta}")
        if self.sampler not in ("", "ddim") and self.eta >= 0:
            raise UserError(f"`sampler` {self.sampler} takes no `eta` (got {self.eta}); `eta` in [0, 1] is DDIM's")
        if self.clamp_step < 0:
            raise UserError(f"`clamp_step` must be >= 0 (0 clamps at every step, K only while the respaced index "
                            f"is >= K), got {self.clamp_step}")
        if not 0 <= self.top_p < float("inf"):
            raise UserError(f"`top_p` must be a finite number >= 0 (0: no noise truncation), got {self.top_p}")
        if not 0 <= self.denoise_rate <= 1:
            raise UserError(f"`denoise_rate` must be in [0, 1], got {self.denoise_rate}")
        if self.solver_steps is not None:
            self._check_solver_steps()

    def _check_solver_steps(self) -> None:
        if self.sampler != "dpm-solver-v2":
            raise UserError(f"`solver_steps` is the number of steps of `sampler` dpm-solver-v2; `sampler` "
                            f"{self.sampler or 'ddpm/ddim'} takes its steps from its respacing")
        if self.solver_steps < 2:
            raise UserError(f"`solver_steps` must be >= 2 (the multistep solver starts with two evaluations), "
                            f"got {self.solver_steps}")
        if self.respacing:
            raise UserError(f"`solver_steps` {self.solver_steps} conflicts with the respacing {self.respacing!r}: "
                            f"dpm-solver-v2 steps on the kept steps of a respacing or on `solver_steps` "
                            f"time-uniform steps, not both")

    def resolve(self) -> "SamplerConfig":
        """This config, checked, with its sampler named: DiffuSeq's rule, DDIM when ``eta >= 0`` and else DDPM,
        where ``sampler`` is empty; DDIM without an eta (-1) is DDIM with eta 0."""
        self.check()
        sampler = self.sampler or ("ddim" if self.eta >= 0 else "ddpm")
        eta = 0.0 if sampler == "ddim" and self.eta == -1 else self.eta
        return dataclasses.replace(self, sampler=sampler, eta=eta)

    def to_dict(self) -> dict:
        """The fields as a dict; DiffuSeq-v2's (``solver_steps``, ``denoise_rate``) only where they are set, so that
        the saved settings of any other decode stay what they were before those existed."""
        unset = {f.name: f.default for f in dataclasses.fields(self) if f.name in ("solver_steps", "denoise_rate")}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in unset or v != unset[k]}

    @classmethod
    def from_dict(cls, values: dict) -> "SamplerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class SamplerOutput:
    """One reverse step: the next sample, and the x_0 prediction the step used (clamped, clipped)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class ReverseSampler:
    """The reverse process over a respaced schedule; subclasses define ``_update``.

    * Clamping (``clamp_first`` in DiffuSeq's sample script): at respaced index i (counting
      down from N-1) the x_0 prediction is replaced by its nearest word embedding while
      ``i >= clamp_step``; so 0 clamps at every step.
    * ``clip_denoised`` then clips the x_0 prediction to [-1, 1].
    * DiffuSeq-v2: ``mean_start`` (the chain of a model with an absorbing state starts from noise + that
      state); ``absorbs``: the step turns tokens into the absorbing state (``_absorb``) when the config's
      ``denoise_rate`` is not 0; a sampler without it saves a ``denoise_rate`` of 0.
    """

    name = ""
    mean_start = True
    absorbs = False

    def __init__(self, config: SamplerConfig) -> None:
        config = dataclasses.replace(config, sampler=self.name)
        if not self.absorbs:
            config = dataclasses.replace(config, denoise_rate=0.0)
        self.config = config.resolve()
        self.base = GaussianDiffusion.from_schedule(self.config.noise_schedule, self.config.num_train_timesteps)
        self.set_timesteps()

    def set_timesteps(self, respacing: str | None = None) -> None:
        """Keep the steps named by ``respacing`` (``""``, ``N``, ``a,b,c``, ``[a,b,c]``, ``ddimN``, ``adp_N``;
        default: the config's, which then names the new ones)."""
        if respacing is not None:
            self.config = dataclasses.replace(self.config, respacing=respacing)
        kept = space_timesteps(self.config.num_train_timesteps, self.config.respacing)
        self.process = respaced_diffusion(self.base, kept)
        indices = torch.arange(self.num_steps - 1, -1, -1)
        # what the network sees at respaced index i: the original step, rescaled to [0, 1000); float32
        self.timesteps = self.process.scale_timesteps(indices)
        self._index = {t: i for t, i in zip(self.timesteps.tolist(), indices.tolist())}

    @property
    def num_steps(self) -> int:
        return self.process.num_timesteps

    def step(self, model_output: torch.Tensor, t: float | torch.Tensor, sample: torch.Tensor,
             noise: ExampleNoise | None = None, mask: torch.Tensor | None = None,
             clamp: NearestEmbedding | None = None, absorbing: torch.Tensor | None = None) -> SamplerOutput:
        """The sample at the step after ``t`` (an entry of ``timesteps``) from ``sample`` and the network's x_0
        prediction ``model_output`` at ``t``, which is changed in place: with ``clamp``, its positions in ``mask``
        (a [batch, seq] bool tensor, the target positions) go to their nearest word embedding while the
        ``clamp_step`` rule says so; then it is clipped with ``clip_denoised``. Noise, where the step adds some,
        comes from ``noise``, one draw per example. ``absorbing`` is the model's absorbing state (DiffuSeq-v2's
        ``mean_embed``, [hidden_dim]), if it has one: with ``denoise_rate``, tokens of the sample become it."""
        index = self._index[float(t)]
        pred_x0 = model_output
        if clamp is not None and index >= self.config.clamp_step:
            pred_x0[mask] = clamp(pred_x0[mask])
        if self.config.clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        prev_sample = self._update(pred_x0.to(sample.dtype), index, sample, noise)
        if absorbing is not None and self.config.denoise_rate > 0:
            prev_sample = self._absorb(prev_sample, index, absorbing, noise)
        return SamplerOutput(prev_sample, pred_x0)

    def _update(self, pred_x0: torch.Tensor, index: int, x_t: torch.Tensor,
                noise: ExampleNoise | None) -> torch.Tensor:
        """x at respaced step ``index - 1`` from x_t and the (clamped) x_0 prediction at ``index``."""
        raise NotImplementedError

    def _absorb(self, sample: torch.Tensor, index: int, absorbing: torch.Tensor,
                noise: ExampleNoise) -> torch.Tensor:
        """``sample`` (the step's output at ``index``) with some tokens replaced by ``absorbing``, drawing from
        ``noise`` after the step's own draws; defined by the samplers that ``absorbs``."""
        raise NotImplementedError

    def _t(self, index: int, x_t: torch.Tensor) -> torch.Tensor:
        return torch.full((x_t.size(0),), index, dtype=torch.long, device=x_t.device)
