"""Shared test helpers: tiny datasets and tiny training configurations."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from diffuseq.config import parse_train_args
from diffuseq.data.vocab import WordVocab
from diffuseq.model import EncoderConfig
from diffuseq.training.loop import Trainer

ROOT = Path(__file__).resolve().parent.parent
WORDS = "the cat sat on a mat dog ran to big red house small blue car green tree old man sea".split()


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"src": s, "trg": t}) + "\n" for s, t in pairs))


def make_toy_dataset(folder: Path, n_train: int = 64, n_valid: int = 16, n_test: int = 16, seed: int = 0) -> Path:
    """A word-order task: the source is the target's words shuffled."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        pairs = []
        for _ in range(n):
            trg = rng.sample(WORDS, rng.randint(3, 5))
            src = trg[:]
            rng.shuffle(src)
            pairs.append((" ".join(src), " ".join(trg)))
        write_pairs(folder / f"{split}.jsonl", pairs)
    return folder


def tiny_args(data_dir: Path, checkpoint: Path, **overrides: object) -> list[str]:
    """run_train.py flags for a model that trains in seconds on a CPU."""
    flags: dict[str, object] = dict(
        data_dir=data_dir, checkpoint_path=checkpoint, vocab="train", vocab_size=200, seq_len=16, num_layers=2,
        hidden_size=32, num_heads=2, intermediate_size=64, hidden_dim=16, hidden_t_dim=16, diff_steps=100, bsz=16,
        microbatch=8, learning_steps=20, save_interval=10, log_interval=5, eval_interval=10, lr=1e-3, seed=3)
    flags.update(overrides)
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def run_script(script: str, args: list[str], launcher: list[str] | None = None, timeout: int = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one of the repository's scripts in a fresh interpreter."""
    cmd = (launcher or [sys.executable]) + [str(ROOT / script)] + args
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
                **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A non-zero exit with a short 'error:' message, at most two lines on stderr and no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


class HalfModel(nn.Module):
    """A toy denoiser: f(x, t) = x / 2, with a 3-word, 2-dim embedding tied to lm_head."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embedding = nn.Embedding(3, 2)
        self.lm_head = nn.Linear(2, 3)
        self.lm_head.weight = self.word_embedding.weight
        with torch.no_grad():
            self.word_embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
            self.lm_head.bias.zero_()

    def get_embeds(self, ids):
        return self.word_embedding(ids)

    def get_logits(self, h):
        return self.lm_head(h)

    def forward(self, x, t):
        return x / 2


def tiny_encoder(bert_config: dict) -> EncoderConfig:
    """The encoder size of a golden fixture's BERT config."""
    return EncoderConfig(num_layers=bert_config["num_hidden_layers"], hidden_size=bert_config["hidden_size"],
                         num_heads=bert_config["num_attention_heads"],
                         intermediate_size=bert_config["intermediate_size"],
                         attention_dropout=bert_config["attention_probs_dropout_prob"],
                         max_positions=bert_config["max_position_embeddings"])


def golden_trainer(tmp_path: Path, settings: dict, bert_config: dict, **flags: object) -> Trainer:
    """A Trainer of a golden fixture's training settings: a 26-word vocabulary, the fixture's BERT config,
    hidden_dim 16, seq_len 12, no dropout (their fp16 is a no-op on a CPU: fp32); ``flags`` add or override."""
    words = [chr(ord("a") + i) for i in range(26)]
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        write_pairs(data / f"{split}.jsonl", [(" ".join(words[i:i + 3]), " ".join(words[i + 3:i + 6]))
                                             for i in range(16)])
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    (tmp_path / "bert.json").write_text(json.dumps(bert_config))
    folder = tmp_path / "run"
    folder.mkdir()
    flags = {"data_dir": data, "checkpoint_path": folder, "vocab": tmp_path / "words.txt", "seq_len": 12,
             "config_name": tmp_path / "bert.json", "hidden_dim": 16, "hidden_t_dim": 16, "dropout": 0.0,
             "diff_steps": settings["diffusion_steps"], "bsz": settings["batch_size"],
             "microbatch": settings["microbatch"], "learning_steps": settings["learning_steps"], "lr": settings["lr"],
             "ema_rate": settings["ema_rate"], "weight_decay": settings["weight_decay"],
             "gradient_clipping": settings["gradient_clipping"], "schedule_sampler": settings["schedule_sampler"],
             "seed": 1, "eval_interval": 0, **flags}
    cfg = parse_train_args([item for key, value in flags.items() for item in (f"--{key}", str(value))])
    return Trainer(cfg, folder, WordVocab.from_word_list(tmp_path / "words.txt"), torch.device("cpu"))
