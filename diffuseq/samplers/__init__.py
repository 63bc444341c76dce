"""Reverse samplers (DDPM, DDIM, DPM-Solver++), each an object with ``set_timesteps`` / ``step`` and a
saved config; clamping to the nearest word embedding; per-example noise; the reverse chain of a batch."""

from .base import ReverseSampler, SamplerConfig
from .chain import denoise
from .clamp import NearestEmbedding, blocked_argmin
from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .dpm_solver import DPMSolverPlusPlusSampler
from .noise import ExampleNoise

SAMPLER_CLASSES: dict[str, type[ReverseSampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler,
                                                     "dpm++": DPMSolverPlusPlusSampler}
SAMPLERS = tuple(SAMPLER_CLASSES)


def create_sampler(config: SamplerConfig) -> ReverseSampler:
    """The sampler ``config`` names (``sampler``, or DiffuSeq's rule: DDIM when ``eta >= 0``)."""
    return SAMPLER_CLASSES[config.resolved_sampler()](config)


def sampler_from_config(values: dict) -> ReverseSampler:
    """A sampler from its saved config dict."""
    return create_sampler(SamplerConfig.from_dict(values))


__all__ = ["SAMPLERS", "DDIMSampler", "DDPMSampler", "DPMSolverPlusPlusSampler", "ExampleNoise", "NearestEmbedding",
           "ReverseSampler", "SamplerConfig", "blocked_argmin", "create_sampler", "denoise", "sampler_from_config"]
