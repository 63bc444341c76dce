"""The DiffuSeq denoiser: a BERT encoder over [position + up-projected x_t + time] embeddings.

Parameter names and shapes are exactly DiffuSeq's (``TransformerNetModel`` with a
Hugging Face ``BertEncoder``), so its checkpoints load with ``load_state_dict``.
The encoder is written here (same keys as ``BertEncoder``) so that the model
needs no ``transformers`` import and uses PyTorch's fused attention (except for
CPU training with dropout, see :func:`attention_with_dropout`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .kernels import packed_linear

MAX_POSITIONS = 512
LAYER_NORM_EPS = 1e-12


@dataclass(frozen=True)
class EncoderConfig:
    """Size of the BERT encoder stack (bert-base by default)."""

    num_layers: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    attention_dropout: float = 0.1
    max_positions: int = MAX_POSITIONS

    def __post_init__(self) -> None:
        if min(self.num_layers, self.hidden_size, self.num_heads, self.intermediate_size) < 1:
            raise UserError(f"model sizes must be positive: {asdict(self)}")
        if self.hidden_size % self.num_heads:
            raise UserError(f"--hidden_size {self.hidden_size} is not divisible by --num_heads {self.num_heads}")

    def to_bert_config(self, vocab_size: int, hidden_dropout: float, pad_token_id: int = 0) -> dict:
        """A Hugging Face BERT ``config.json`` of this size (what DiffuSeq's ``config_name`` loads)."""
        return {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
                "intermediate_size": self.intermediate_size, "hidden_act": "gelu",
                "hidden_dropout_prob": hidden_dropout, "attention_probs_dropout_prob": self.attention_dropout,
                "max_position_embeddings": self.max_positions, "layer_norm_eps": LAYER_NORM_EPS,
                "type_vocab_size": 2, "initializer_range": 0.02, "vocab_size": vocab_size,
                "pad_token_id": pad_token_id, "position_embedding_type": "absolute"}

    @classmethod
    def from_bert_config(cls, path: str | Path) -> "EncoderConfig":
        """Read the sizes from a BERT ``config.json`` (a file or a folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            cfg = json.loads(path.read_text())
            return cls(num_layers=int(cfg["num_hidden_layers"]), hidden_size=int(cfg["hidden_size"]),
                       num_heads=int(cfg["num_attention_heads"]), intermediate_size=int(cfg["intermediate_size"]),
                       attention_dropout=float(cfg.get("attention_probs_dropout_prob", 0.1)),
                       max_positions=int(cfg.get("max_position_embeddings", MAX_POSITIONS)))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"cannot read a BERT config from {path}: {err}") from None


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f), sin(t f)] with f = exp(-ln(max_period) * arange(half) / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class BertSelfAttention(nn.Module):
    """Multi-head self-attention without a mask (all positions attend to all)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_dropout

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        # the three projections as one matmul; q, k, v are [b, heads, n, d / heads] views of its result
        qkv = packed_linear(self, h, (self.query.weight, self.key.weight, self.value.weight, self.query.bias,
                                      self.key.bias, self.value.bias))
        q, k, v = qkv.view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.training and self.dropout_p > 0 and h.device.type == "cpu":
            out = attention_with_dropout(q, k, v, self.dropout_p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, n, d)


def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """dropout(softmax(q k^T / sqrt(d))) v over [batch, heads, n, d] tensors.

    What ``scaled_dot_product_attention`` computes on a CPU with dropout (its
    fused CPU kernel has none, so it falls back to the math backend), without
    that backend's overheads: its float32 upcast of bf16 inputs and its guard
    against fully masked rows.
    """
    b, heads, n, d = q.shape
    q, k, v = (x.reshape(b * heads, n, d) for x in (q, k, v))
    scores = torch.bmm(q, k.transpose(1, 2)).mul_(d ** -0.5)
    probs = F.dropout(torch.softmax(scores, dim=-1), p)
    return torch.bmm(probs, v).view(b, heads, n, d)


class BertSelfOutput(nn.Module):
    """Projection, dropout, residual and LayerNorm after attention or the FFN."""

    def __init__(self, in_size: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        projected = packed_linear(self.dense, h, (self.dense.weight, self.dense.bias))
        return self.LayerNorm(self.dropout(projected) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig, dropout: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg.hidden_size, cfg.hidden_size, dropout)

    def forward(self, h: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N, d] -> [B, N, d]; with ``rows`` (bool [B, N]) only the selected positions, packed: [M, d]."""
        context = self.self(h)
        if rows is not None:
            context, h = context[rows], h[rows]
        return self.output(context, h)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return packed_linear(self.dense, h, (self.dense.weight, self.dense.bias), activation="gelu")


class BertLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig, dropout: float) -> None:
        super().__init__()
        self.attention = BertAttention(cfg, dropout)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg.intermediate_size, cfg.hidden_size, dropout)

    def forward(self, h: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        h = self.attention(h, rows)
        return self.output(self.intermediate(h), h)


class BertEncoder(nn.Module):
    """A stack of post-LN BERT layers with Hugging Face's parameter names (``layer.{i}...``)."""

    def __init__(self, cfg: EncoderConfig, dropout: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg, dropout) for _ in range(cfg.num_layers))

    def forward(self, h: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """All positions through every layer; with ``rows``, the last layer returns only those, packed."""
        for layer in self.layer[:-1]:
            h = layer(h)
        return self.layer[-1](h, rows)


class TransformerNetModel(nn.Module):
    """DiffuSeq's denoiser: predicts x_0 from (x_t, t); ``lm_head`` is tied to ``word_embedding``."""

    def __init__(self, vocab_size: int, hidden_dim: int = 128, hidden_t_dim: int = 128, dropout: float = 0.1,
                 encoder: EncoderConfig | None = None) -> None:
        super().__init__()
        cfg = encoder or EncoderConfig()
        self.encoder_config = cfg
        self.hidden_dim = hidden_dim
        self.hidden_t_dim = hidden_t_dim
        hidden = cfg.hidden_size
        self.word_embedding = nn.Embedding(vocab_size, hidden_dim)
        self.lm_head = nn.Linear(hidden_dim, vocab_size)
        self.lm_head.weight = self.word_embedding.weight
        self.time_embed = nn.Sequential(nn.Linear(hidden_t_dim, 4 * hidden_t_dim), nn.SiLU(),
                                        nn.Linear(4 * hidden_t_dim, hidden))
        if hidden_dim != hidden:
            self.input_up_proj = nn.Sequential(nn.Linear(hidden_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.input_transformers = BertEncoder(cfg, dropout)
        self.register_buffer("position_ids", torch.arange(cfg.max_positions).expand((1, -1)))
        self.position_embeddings = nn.Embedding(cfg.max_positions, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        if hidden_dim != hidden:
            self.output_down_proj = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, hidden_dim))

    @property
    def vocab_size(self) -> int:
        return self.word_embedding.num_embeddings

    def get_embeds(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings of token ids (x_0's mean)."""
        return self.word_embedding(input_ids)

    def get_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Token logits of embedding-space vectors."""
        return self.lm_head(hidden)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Predict x_0 from x_t [B, N, hidden_dim] and the rescaled float timesteps [B].

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
        h = self.input_transformers(self.dropout(self.LayerNorm(h)), rows)
        out = self.output_down_proj(h) if hasattr(self, "output_down_proj") else h
        if rows is None:
            return out
        full = out.new_zeros(*x.shape[:2], out.size(-1))
        full[rows] = out
        return full
