"""diffuseq-bridge: DiffuSeq diffusion models for sequence-to-sequence text generation, with the Distance
Penalty post-training and Adaptive Decay Sampling of Tang et al. (2023).

    from diffuseq import Seq2SeqDiffusion
    model = Seq2SeqDiffusion.from_checkpoint("diffusion_models/run/ema_0.9999_050000.pt")
    model.generate(["how can i be a good geologist?"], respacing="adp_20", seed=10)
"""

from .api import Generation, Seq2SeqDiffusion
from .config import DecodeConfig, TrainConfig

__all__ = ["DecodeConfig", "Generation", "Seq2SeqDiffusion", "TrainConfig"]
