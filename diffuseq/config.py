"""The training configuration: one dataclass, its command line, and ``training_args.json``.

Field names are DiffuSeq's (``diffusion_steps``, ``batch_size``, ...), so a
DiffuSeq ``training_args.json`` loads as it is; the paper's command-line
spellings (``--diff_steps``, ``--bsz``) are accepted as aliases.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError
from .model import EncoderConfig

BERT_BASE_NAMES = ("bert-base-uncased", "bert-base-cased", "bert-base")


def _opt(default: Any, help: str, *aliases: str, choices: Sequence[str] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "aliases": aliases, "choices": choices})


@dataclass
class TrainConfig:
    """Every training argument; serialised to ``training_args.json`` in the checkpoint folder."""

    # data and vocabulary
    dataset: str = _opt("", "dataset name (used in the default checkpoint folder name)")
    data_dir: str = _opt("", "folder with train.jsonl / valid.jsonl / test.jsonl")
    vocab: str = _opt("bert", "'bert' (bert-base-uncased from the local HF cache), 'train' (build a WordPiece "
                              "vocabulary from the training split) or a path to a vocab file / tokenizer folder")
    vocab_size: int = _opt(8000, "size of the vocabulary built by --vocab train (the actual size is saved)")
    seq_len: int = _opt(128, "length of src [SEP] trg sequences, padding included")
    # diffusion
    diffusion_steps: int = _opt(2000, "number of diffusion steps T", "--diff_steps")
    noise_schedule: str = _opt("sqrt", "noise schedule", choices=("sqrt", "linear", "cosine"))
    schedule_sampler: str = _opt("lossaware", "timestep sampler", choices=("uniform", "lossaware"))
    # model
    hidden_dim: int = _opt(128, "word embedding size (the space diffusion runs in)")
    hidden_t_dim: int = _opt(128, "sinusoidal timestep embedding size")
    config_name: str = _opt("bert-base-uncased", "encoder size: bert-base-uncased or a BERT config.json (or folder)")
    num_layers: int | None = _opt(None, "override the encoder's number of layers")
    num_heads: int | None = _opt(None, "override the encoder's number of attention heads")
    hidden_size: int | None = _opt(None, "override the encoder's hidden size")
    intermediate_size: int | None = _opt(None, "override the encoder's feed-forward size")
    dropout: float = _opt(0.1, "dropout of the embeddings and encoder layers")
    # optimisation
    lr: float = _opt(1e-4, "peak learning rate (decays linearly to 0 over --learning_steps)")
    batch_size: int = _opt(2048, "global batch size, split across processes and microbatches", "--bsz")
    microbatch: int = _opt(64, "examples per forward/backward pass within a process (-1: the whole batch)")
    learning_steps: int = _opt(320000, "total optimizer steps")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    gradient_clipping: float = _opt(-1.0, "clip the gradient norm to this value (<= 0: off)")
    ema_rate: str = _opt("0.9999", "comma-separated EMA rates")
    use_fp16: bool = _opt(False, "mixed precision: fp16 autocast on CUDA (bf16 on a CPU)")
    precision: str = _opt("fp32", "autocast precision (fp32 = off)", choices=("fp32", "bf16", "fp16"))
    seed: int = _opt(101, "random seed")
    max_bad_steps: int = _opt(10, "stop after this many consecutive steps with a non-finite loss or gradient")
    # distance penalty post-training (Tang et al. 2023)
    simi_penalty: str = _opt("", "distance penalty ('' = off)",
                             choices=("", "l2", "l2_noise", "l2_noise_random", "cosine", "kl"))
    simi_lambda: float = _opt(-2.0, "penalty weight (negative; the penalty is -simi_lambda * distance)")
    simi_step: int = _opt(10, "neighbour offset t +- simi_step for l2 / cosine / kl")
    simi_noise: float = _opt(0.05, "noise-level window for l2_noise / l2_noise_random")
    # bookkeeping
    checkpoint_path: str = _opt("", "output folder (default: a name from the main flags under diffusion_models/)")
    resume_checkpoint: str = _opt("", "modelNNNNNN.pt / ema_<rate>_NNNNNN.pt to start from, or 'auto' for the "
                                      "newest complete checkpoint in --checkpoint_path")
    save_interval: int = _opt(50000, "save a checkpoint every this many steps (and at the end)")
    log_interval: int = _opt(20, "log the losses every this many steps")
    eval_interval: int = _opt(1000, "compute the validation loss every this many steps (<= 0: never)")
    notes: str = _opt("", "free text, part of the default folder name")
    wandb: bool = _opt(False, "log to Weights & Biases (also when WANDB_MODE is set)")
    # fixed DiffuSeq settings, kept so its tools read our training_args.json
    timestep_respacing: str = ""
    learn_sigma: bool = False
    predict_xstart: bool = True
    rescale_timesteps: bool = True
    sigma_small: bool = False
    emb_scale_factor: float = 1.0
    use_plm_init: str = "no"

    # -- derived values -----------------------------------------------------

    def validate(self) -> None:
        """Reject settings that cannot work, with one clear message."""
        if self.diffusion_steps < 2:
            raise UserError(f"--diff_steps must be at least 2, got {self.diffusion_steps}")
        if self.noise_schedule not in ("sqrt", "linear", "cosine"):
            raise UserError(f"unknown --noise_schedule {self.noise_schedule!r}; choose sqrt, linear or cosine")
        if self.schedule_sampler not in ("uniform", "lossaware"):
            raise UserError(f"unknown --schedule_sampler {self.schedule_sampler!r}; choose uniform or lossaware")
        for name in ("batch_size", "learning_steps", "save_interval", "log_interval", "hidden_dim", "hidden_t_dim"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        self.ema_rates()
        self.encoder_config()

    def ema_rates(self) -> list[str]:
        rates = [r.strip() for r in str(self.ema_rate).split(",") if r.strip()]
        for rate in rates:
            try:
                ok = 0.0 <= float(rate) < 1.0
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"--ema_rate must be comma-separated numbers in [0, 1), got {self.ema_rate!r}")
        return rates

    def encoder_config(self) -> EncoderConfig:
        """The BERT encoder size: ``config_name`` with any explicit overrides."""
        if self.config_name in BERT_BASE_NAMES or not self.config_name:
            base = EncoderConfig()
        elif Path(self.config_name).exists():
            base = EncoderConfig.from_bert_config(self.config_name)
        else:
            raise UserError(f"--config_name {self.config_name!r} is neither bert-base-uncased nor a BERT config.json")
        overrides = {name: getattr(self, name) for name in ("num_layers", "num_heads", "hidden_size",
                                                            "intermediate_size") if getattr(self, name) is not None}
        return dataclasses.replace(base, **overrides)

    def default_checkpoint_path(self) -> str:
        """DiffuSeq's folder naming under ``diffusion_models/``."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return (f"diffusion_models/diffuseq_{self.dataset or 'data'}_h{self.hidden_dim}_lr{self.lr}"
                f"_t{self.diffusion_steps}_{self.noise_schedule}_{self.schedule_sampler}_seed{self.seed}"
                f"_{self.notes}{stamp}")

    # -- serialisation ------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A config from a ``training_args.json`` dict (ours or DiffuSeq's); unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = dict(values)
        if "diff_steps" in values and "diffusion_steps" not in values:
            values["diffusion_steps"] = values["diff_steps"]
        if "bsz" in values and "batch_size" not in values:
            values["batch_size"] = values["bsz"]
        if values.get("ema_rate") is not None:
            values["ema_rate"] = str(values["ema_rate"])
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read ``training_args.json``."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} does not exist (the checkpoint folder must hold the training_args.json "
                            f"written by training)")
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {path}: {err}") from None
        if not isinstance(values, dict):
            raise UserError(f"{path} is not a JSON object")
        return cls.from_dict(values)


class CliArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors through ``UserError`` (one line, no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def _str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y"):
        return True
    if text.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def build_parser(cls: type = TrainConfig, description: str = "") -> argparse.ArgumentParser:
    """A parser with one option per field that carries help (aliases and choices from the metadata)."""
    parser = CliArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        names = [f"--{f.name}", *meta.get("aliases", ())]
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            parser.add_argument(*names, dest=f.name, type=_str2bool, nargs="?", const=True, default=f.default,
                                help=meta["help"])
        else:
            conv = {"int": int, "float": float, "str": str, "int | None": int}[kind]
            parser.add_argument(*names, dest=f.name, type=conv, default=f.default, help=meta["help"],
                                choices=meta.get("choices"))
    return parser


def parse_train_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse ``run_train.py``'s command line into a validated config."""
    parser = build_parser(description="Train (or post-train) a DiffuSeq diffusion model.")
    cfg = TrainConfig.from_dict(vars(parser.parse_args(argv)))
    cfg.validate()
    return cfg
