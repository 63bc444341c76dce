"""The denoiser (DiffuSeq's TransformerNetModel), its encoder, its checkpoints and CPU fast paths."""

from .denoiser import TransformerNetModel, timestep_embedding
from .encoder import EncoderConfig, attention_with_dropout

__all__ = ["EncoderConfig", "TransformerNetModel", "attention_with_dropout", "timestep_embedding"]
