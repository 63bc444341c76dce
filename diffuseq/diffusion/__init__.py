"""The diffusion maths, with no network inside: noise schedules, the Gaussian process, respacing, the
timestep distributions of training and the Distance Penalty's neighbour rules and distances."""

from .penalty import PENALTIES, DistancePenalty
from .process import GaussianDiffusion
from .respace import respaced_diffusion, space_timesteps
from .schedules import NOISE_SCHEDULES, get_named_beta_schedule
from .timesteps import TIMESTEP_DISTRIBUTIONS, TimestepDistribution, create_timestep_distribution

__all__ = ["NOISE_SCHEDULES", "PENALTIES", "TIMESTEP_DISTRIBUTIONS", "DistancePenalty", "GaussianDiffusion",
           "TimestepDistribution", "create_timestep_distribution", "get_named_beta_schedule", "respaced_diffusion",
           "space_timesteps"]
