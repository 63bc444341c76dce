"""DiffuSeq's ``--use_plm_init bert``: start the denoiser from pre-trained BERT weights, read locally.

DiffuSeq replaces the word embeddings, the position embeddings, the embedding LayerNorm and the
encoder stack by those of ``BertModel.from_pretrained(config_name)`` (the time embedding and the
projections stay random; ``lm_head`` stays tied to the word embeddings). Here the weights come
from a local folder (``--config_name PATH``) or from bert-base-uncased in the local Hugging Face
cache; nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..hf_cache import cached_snapshots
from . import checkpoints as ckpt

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_EMBEDDINGS = {"word_embeddings.weight": "word_embedding.weight",
               "position_embeddings.weight": "position_embeddings.weight",
               "LayerNorm.weight": "LayerNorm.weight", "LayerNorm.bias": "LayerNorm.bias"}


def _hub_snapshot(name: str) -> Path | None:
    for snapshot in cached_snapshots(name):
        if any((snapshot / f).is_file() for f in WEIGHT_FILES):
            return snapshot
    return None


def bert_weights_folder(config_name: str) -> Path:
    """The folder holding the BERT weights named by ``--config_name`` (a local path or the local HF cache)."""
    path = Path(config_name)
    folder = path if path.is_dir() else path.parent if path.is_file() else _hub_snapshot(config_name)
    if folder is None or not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"`use_plm_init` bert needs BERT weights ({' or '.join(WEIGHT_FILES)}) in a local folder: "
                        f"{config_name!r} is not one and is not in the local Hugging Face cache; pass "
                        f"`config_name` PATH to a downloaded bert-base-uncased folder")
    return folder


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError("reading model.safetensors needs the safetensors package: pip install safetensors") from None
        return load_file(str(folder / "model.safetensors"))
    state = ckpt.safe_load(folder / "pytorch_model.bin")
    if not isinstance(state, dict):
        raise UserError(f"{folder / 'pytorch_model.bin'} is not a state dict")
    return state


def bert_state_for_denoiser(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a BERT checkpoint that DiffuSeq copies, under the denoiser's key names."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^bert\.", "", key).replace("LayerNorm.gamma", "LayerNorm.weight") \
            .replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith("embeddings.") and key[len("embeddings."):] in _EMBEDDINGS:
            out[_EMBEDDINGS[key[len("embeddings."):]]] = value
        elif key.startswith("encoder.layer."):
            out["input_transformers." + key[len("encoder."):]] = value
    return out


def load_bert_weights(model: nn.Module, folder: Path) -> None:
    """Copy BERT's embeddings and encoder from ``folder`` into ``model``, with one clear error on a mismatch."""
    mapped = bert_state_for_denoiser(_read_weights(folder))
    own = model.state_dict()
    missing = [k for k in own if (k.startswith("input_transformers.") or k in _EMBEDDINGS.values()) and k not in mapped]
    if missing:
        raise UserError(f"the BERT weights in {folder} lack {missing[0]} (and {len(missing) - 1} more)")
    for key, value in mapped.items():
        if key in own and own[key].shape != value.shape:
            hint = (" (`use_plm_init` bert needs `hidden_dim` equal to BERT's hidden size and the BERT vocabulary)"
                    if key == "word_embedding.weight" else "")
            raise UserError(f"the BERT weights in {folder} do not fit this model{hint}: {key} "
                            f"{tuple(value.shape)} vs {tuple(own[key].shape)}")
    with torch.no_grad():
        for key, value in mapped.items():
            if key in own:
                own[key].copy_(value)
