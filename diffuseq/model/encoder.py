"""The BERT encoder stack of DiffuSeq's denoiser, written here with Hugging Face's parameter names.

Keys and shapes are those of ``transformers``' ``BertEncoder`` (``layer.{i}.attention.self.query``,
...), so DiffuSeq's state dicts load with ``load_state_dict``; no ``transformers`` import is
needed, and the attention is PyTorch's fused one (see :func:`attention_with_dropout` for CPU
training with dropout).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .kernels import Dropout, PackedLinear, dropout

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
            raise UserError(f"`hidden_size` {self.hidden_size} is not divisible by `num_heads` {self.num_heads}")

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


class BertSelfAttention(nn.Module):
    """Multi-head self-attention without a mask (all positions attend to all)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_dropout
        self.qkv = PackedLinear()  # the three projections as one product

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        # the three projections as one matmul; q, k, v are [b, heads, n, d / heads] views of its result
        qkv = self.qkv(h, (self.query.weight, self.key.weight, self.value.weight, self.query.bias,
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
    probs = dropout(torch.softmax(scores, dim=-1), p, True)
    return torch.bmm(probs, v).view(b, heads, n, d)


class BertSelfOutput(nn.Module):
    """Projection, dropout, residual and LayerNorm after attention or the FFN."""

    def __init__(self, in_size: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(dropout)
        self.projection = PackedLinear()  # computes ``dense``

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        projected = self.projection(h, (self.dense.weight, self.dense.bias))
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
        self.projection = PackedLinear()  # computes ``dense``, then GELU

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.projection(h, (self.dense.weight, self.dense.bias), activation="gelu")


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


