"""diffuseq-bridge: DiffuSeq diffusion models for sequence-to-sequence text generation, with the Distance
Penalty post-training and Adaptive Decay Sampling of Tang et al. (2023).

    from diffuseq import Seq2SeqDiffusion
    model = Seq2SeqDiffusion.from_checkpoint("diffusion_models/run/ema_0.9999_050000.pt")
    model.generate(["how can i be a good geologist?"], respacing="adp_20", seeds=[10]).first

The names below are imported on first use (PEP 562): ``import diffuseq`` alone, or a torch-free part such as
:mod:`diffuseq.fileio` or :mod:`diffuseq.metrics`, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Generation, Seq2SeqDiffusion
    from .config import DecodeConfig, TrainConfig

_LAZY = {"DecodeConfig": ".config", "Generation": ".api", "Seq2SeqDiffusion": ".api", "TrainConfig": ".config"}

__all__ = ["DecodeConfig", "Generation", "Seq2SeqDiffusion", "TrainConfig"]


def __getattr__(name: str) -> Any:
    """``diffuseq.Seq2SeqDiffusion`` and the other public names, imported from their module on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
