"""What every reverse sampler shares: its configuration, the respaced process, clamping and the step contract.

A sampler follows the diffusers scheduler shape: built from a config dict (saved beside the
outputs, ``to_dict`` / ``from_config``), ``set_timesteps(respacing)`` chooses the steps,
``timesteps`` lists the respaced indices from N-1 down to 0, and ``step(pred_x0, index, x_t,
noise)`` makes one reverse step from the network's x_0 prediction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..diffusion.process import GaussianDiffusion
from ..diffusion.respace import respaced_diffusion, space_timesteps
from ..errors import UserError
from .clamp import NearestEmbedding


@dataclass
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
    sampler: str = ""  # "" = DiffuSeq's rule: DDIM when eta >= 0, else DDPM

    def check(self) -> None:
        """Reject values no sampler accepts, and an ``eta`` that contradicts ``sampler`` (one-line ``UserError``)."""
        if not (self.eta == -1 or 0 <= self.eta <= 1):
            raise UserError(f"--eta must be -1 (DDPM) or in [0, 1] (DDIM), got {self.eta}")
        if self.sampler in ("ddpm", "dpm++") and self.eta >= 0:
            raise UserError(f"--sampler {self.sampler} takes no --eta (got {self.eta}); --eta in [0, 1] is DDIM's")
        if self.clamp_step < 0:
            raise UserError(f"--clamp_step must be >= 0 (0 clamps at every step, K only while the respaced index "
                            f"is >= K), got {self.clamp_step}")
        if not 0 <= self.top_p < float("inf"):
            raise UserError(f"--top_p must be a finite number >= 0 (0: no noise truncation), got {self.top_p}")

    def resolved_sampler(self) -> str:
        return self.sampler or ("ddim" if self.eta >= 0 else "ddpm")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SamplerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class ReverseSampler:
    """The reverse process over a respaced schedule; subclasses define ``step``.

    * Clamping (``clamp_first`` in DiffuSeq's sample script): at respaced index i (counting
      down from N-1) the x_0 prediction is replaced by its nearest word embedding while
      ``i >= clamp_step``; so 0 clamps at every step.
    * ``clip_denoised`` then clips the x_0 prediction to [-1, 1].
    """

    name = ""

    def __init__(self, config: SamplerConfig) -> None:
        config.sampler = self.name
        config.check()
        self.config = config
        self.base = GaussianDiffusion.from_schedule(config.noise_schedule, config.num_train_timesteps)
        self.set_timesteps(config.respacing)

    def set_timesteps(self, respacing: str) -> None:
        """Keep the steps named by ``respacing`` (``""``, ``N``, ``a,b,c``, ``[a,b,c]``, ``ddimN``, ``adp_N``)."""
        kept = space_timesteps(self.config.num_train_timesteps, respacing)
        self.config.respacing = respacing
        self.process = respaced_diffusion(self.base, kept)
        self.timesteps = list(range(self.process.num_timesteps - 1, -1, -1))
        self.reset()

    def reset(self) -> None:
        """Forget what earlier steps left behind (a new chain starts)."""

    @property
    def num_steps(self) -> int:
        return self.process.num_timesteps

    @property
    def noise_top_p(self) -> float:
        """The truncation of the step noise (DiffuSeq's ``--top_p``, DDPM only)."""
        return 0.0

    def uses_noise(self, index: int) -> bool:
        """Whether the step at respaced ``index`` adds noise (and so needs a draw)."""
        return index > 0

    def model_timesteps(self, index: int, batch: int, device: torch.device) -> torch.Tensor:
        """The float timesteps the network sees at respaced step ``index``."""
        return self.process.scale_timesteps(torch.full((batch,), index, dtype=torch.long, device=device))

    def clamps_at(self, index: int) -> bool:
        """Whether the x_0 prediction is clamped at respaced step ``index``."""
        return index >= self.config.clamp_step

    def denoised(self, pred_x0: torch.Tensor, index: int, clamp: NearestEmbedding | None,
                 target: torch.Tensor) -> torch.Tensor:
        """The x_0 prediction as the step uses it: clamped on ``target`` positions, then clipped."""
        if clamp is not None and self.clamps_at(index):
            pred_x0[target] = clamp(pred_x0[target])
        if self.config.clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        return pred_x0

    def step(self, pred_x0: torch.Tensor, index: int, x_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x at respaced step ``index - 1`` from x_t and the (clamped) x_0 prediction at ``index``."""
        raise NotImplementedError

    def _t(self, index: int, x_t: torch.Tensor) -> torch.Tensor:
        return torch.full((x_t.size(0),), index, dtype=torch.long, device=x_t.device)
