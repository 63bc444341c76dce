"""A denoiser from its training configuration: building one, and loading a checkpoint with the
``training_args.json``, vocabulary and encoder config beside it.

Above :mod:`diffuseq.config` and :mod:`diffuseq.model`: the model package knows checkpoint files and state
dicts, not the training configuration.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import TrainConfig
from .data.vocab import Vocabulary, load_vocab_from
from .errors import UserError
from .model import EncoderConfig, TransformerNetModel
from .model.checkpoints import load_model_weights, parse_step, safe_load


def create_model(cfg: TrainConfig, vocab_size: int, encoder: EncoderConfig | None = None) -> TransformerNetModel:
    """The denoiser described by ``cfg`` (with ``encoder``, else ``cfg``'s encoder size)."""
    return TransformerNetModel(vocab_size, hidden_dim=cfg.hidden_dim, hidden_t_dim=cfg.hidden_t_dim,
                               dropout=cfg.dropout, encoder=encoder or cfg.encoder_config(), self_cond=cfg.self_cond,
                               learned_mean_embed=cfg.learned_mean_embed)


def load_checkpoint(model_path: Path, device: torch.device) -> tuple[TrainConfig, Vocabulary, nn.Module]:
    """The training config, vocabulary and model of a checkpoint file (ours or DiffuSeq's)."""
    parse_step(model_path)
    if not model_path.is_file():
        raise UserError(f"`model_path` {model_path} does not exist")
    folder = model_path.parent
    cfg = TrainConfig.load(folder / "training_args.json")
    if any((folder / name).is_file() for name in ("vocab.txt", "vocab.json")):
        vocab = load_vocab_from(folder)
    elif cfg.vocab not in ("bert", "train") and Path(cfg.vocab).exists():
        vocab = load_vocab_from(Path(cfg.vocab))
    else:
        raise UserError(f"{folder} holds no vocabulary (vocab.txt or vocab.json) and the training one "
                        f"({cfg.vocab!r}) is not available")
    if cfg.vocab_size and cfg.vocab_size != vocab.size:
        raise UserError(f"the vocabulary in {folder} has {vocab.size} entries but training_args.json says "
                        f"vocab_size {cfg.vocab_size}")
    model = create_model(cfg, vocab.size, cfg.encoder_config(folder))
    state = safe_load(model_path)
    if isinstance(state, dict) and "word_embedding.weight" in state \
            and state["word_embedding.weight"].shape[0] != vocab.size:
        raise UserError(f"the vocabulary ({vocab.size} entries) does not match the checkpoint "
                        f"({state['word_embedding.weight'].shape[0]} embeddings)")
    load_model_weights(model, state, model_path)
    model.to(device).eval().requires_grad_(False)
    return cfg, vocab, model
