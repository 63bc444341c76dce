"""The DiffuSeq denoiser: a BERT encoder over [position + up-projected x_t + time] embeddings.

Parameter names and shapes are exactly DiffuSeq's (``TransformerNetModel``), so its checkpoints
load with ``load_state_dict``. With ``self_cond`` (our addition; Chen et al. 2022, as in
SeqDiffuSeq and Difformer) the denoiser also reads a previous x_0 estimate through one more
linear map, ``self_cond_proj``, added to the input embeddings; without it the layout is DiffuSeq's.
With ``learned_mean_embed`` (DiffuSeq-v2) it holds ``mean_embed``, the learned soft absorbing state that the
diffusion (not the network's forward) uses; its state-dict key is v2's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .encoder import LAYER_NORM_EPS, BertEncoder, EncoderConfig
from .kernels import Dropout, Linear


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f), sin(t f)] with f = exp(-ln(max_period) * arange(half) / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TransformerNetModel(nn.Module):
    """DiffuSeq's denoiser: predicts x_0 from (x_t, t); ``lm_head`` is tied to ``word_embedding``."""

    def __init__(self, vocab_size: int, hidden_dim: int = 128, hidden_t_dim: int = 128, dropout: float = 0.1,
                 encoder: EncoderConfig | None = None, self_cond: bool = False,
                 learned_mean_embed: bool = False) -> None:
        super().__init__()
        cfg = encoder or EncoderConfig()
        self.encoder_config = cfg
        self.hidden_dim = hidden_dim
        self.hidden_t_dim = hidden_t_dim
        self.self_cond = self_cond
        hidden = cfg.hidden_size
        self.word_embedding = nn.Embedding(vocab_size, hidden_dim)
        self.lm_head = Linear(hidden_dim, vocab_size)
        self.lm_head.weight = self.word_embedding.weight
        self.time_embed = nn.Sequential(Linear(hidden_t_dim, 4 * hidden_t_dim), nn.SiLU(),
                                        Linear(4 * hidden_t_dim, hidden))
        if hidden_dim != hidden:
            self.input_up_proj = nn.Sequential(Linear(hidden_dim, hidden), nn.Tanh(), Linear(hidden, hidden))
        if self_cond:
            self.self_cond_proj = Linear(hidden_dim, hidden)
        self.input_transformers = BertEncoder(cfg, dropout)
        self.register_buffer("position_ids", torch.arange(cfg.max_positions).expand((1, -1)))
        self.position_embeddings = nn.Embedding(cfg.max_positions, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(dropout)
        if hidden_dim != hidden:
            self.output_down_proj = nn.Sequential(Linear(hidden, hidden), nn.Tanh(), Linear(hidden, hidden_dim))
        # DiffuSeq-v2's absorbing state [hidden_dim], N(0, 1/hidden_dim); created last, so the other weights of a
        # seeded model are those of a model without it
        self.register_parameter("mean_embed", nn.Parameter(torch.empty(hidden_dim).normal_(0.0, hidden_dim ** -0.5))
                                if learned_mean_embed else None)

    @property
    def vocab_size(self) -> int:
        return self.word_embedding.num_embeddings

    def get_embeds(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings of token ids (x_0's mean)."""
        return self.word_embedding(input_ids)

    def get_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Token logits of embedding-space vectors."""
        return self.lm_head(hidden)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, rows: torch.Tensor | None = None,
                x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        """Predict x_0 from x_t [B, N, hidden_dim] and the rescaled float timesteps [B].

        ``x0_prev`` (shape of x) is the previous x_0 estimate of a self-conditioned model
        (``None``: zeros, the "no estimate" input); a model without self-conditioning ignores it.

        ``rows`` (bool [B, N]), when given, names the positions whose prediction
        is needed (the target part when decoding). Every position still feeds the
        attention of every layer, but the last layer's projections and FFN and the
        output projection run on the named rows only; the other rows of the result
        are zeros.
        """
        emb_t = self.time_embed(timestep_embedding(timesteps, self.hidden_t_dim))
        emb_x = self.input_up_proj(x) if hasattr(self, "input_up_proj") else x
        seq_len = x.size(1)
        h = self.position_embeddings(self.position_ids[:, :seq_len]) + emb_x + emb_t.unsqueeze(1)
        if self.self_cond:  # no estimate (zeros) adds the projection's bias only
            h = h + (self.self_cond_proj.bias if x0_prev is None else self.self_cond_proj(x0_prev))
        h = self.input_transformers(self.dropout(self.LayerNorm(h)), rows)
        out = self.output_down_proj(h) if hasattr(self, "output_down_proj") else h
        if rows is None:
            return out
        full = out.new_zeros(*x.shape[:2], out.size(-1))
        full[rows] = out
        return full
