"""Files of the local Hugging Face cache, found without the ``huggingface_hub`` package or the network."""

from __future__ import annotations

import os
from pathlib import Path


def hub_cache() -> Path:
    """The hub cache folder (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    return Path(os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub"))


def cached_snapshots(repo: str) -> list[Path]:
    """The cached snapshot folders of a hub repository (e.g. ``bert-base-uncased``), sorted."""
    return sorted(hub_cache().glob(f"models--{repo.replace('/', '--')}/snapshots/*"))
