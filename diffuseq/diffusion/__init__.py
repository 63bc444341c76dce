"""The diffusion maths, with no network inside: noise schedules, the Gaussian process, respacing."""

from .process import GaussianDiffusion
from .respace import respaced_diffusion, space_timesteps
from .schedules import NOISE_SCHEDULES, get_named_beta_schedule

__all__ = ["NOISE_SCHEDULES", "GaussianDiffusion", "get_named_beta_schedule", "respaced_diffusion", "space_timesteps"]
