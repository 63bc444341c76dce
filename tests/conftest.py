"""Test settings: offline, no Weights & Biases (the package is installed: pip install -e ".[test]")."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
