"""Reverse samplers (DDPM, DDIM, DPM-Solver++, DiffuSeq-v2's DPM-Solver), each an object with ``set_timesteps`` /
``timesteps`` / ``step`` built from a frozen, saved config; clamping to the nearest word embedding; per-example
noise; the reverse chain of a batch.

A new sampler is a subclass of :class:`ReverseSampler` (its ``name`` and ``_update``) in a module of its own,
registered in ``SAMPLER_CLASSES`` below; ``--sampler`` offers it from there."""

from .base import ReverseSampler, SamplerConfig, SamplerOutput
from .chain import denoise
from .clamp import NearestEmbedding, blocked_argmin
from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .dpm_solver import DPMSolverPlusPlusSampler
from .dpm_solver_v2 import DPMSolverV2Sampler
from .noise import ExampleNoise

SAMPLER_CLASSES: dict[str, type[ReverseSampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler,
                                                     "dpm++": DPMSolverPlusPlusSampler,
                                                     "dpm-solver-v2": DPMSolverV2Sampler}
SAMPLERS = tuple(SAMPLER_CLASSES)


def create_sampler(config: SamplerConfig) -> ReverseSampler:
    """The sampler ``config`` names (see :meth:`SamplerConfig.resolve`)."""
    resolved = config.resolve()
    return SAMPLER_CLASSES[resolved.sampler](resolved)


def sampler_from_config(values: dict) -> ReverseSampler:
    """A sampler from its saved config dict."""
    return create_sampler(SamplerConfig.from_dict(values))


__all__ = ["SAMPLERS", "DDIMSampler", "DDPMSampler", "DPMSolverPlusPlusSampler", "DPMSolverV2Sampler", "ExampleNoise",
           "NearestEmbedding", "ReverseSampler", "SamplerConfig", "SamplerOutput", "blocked_argmin", "create_sampler",
           "denoise", "sampler_from_config"]
