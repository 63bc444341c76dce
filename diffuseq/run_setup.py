"""Before a training run writes anything: where it goes, what it starts from, and with which settings.

``plan_run`` reads (never writes) the flags, the checkpoint folder and the checkpoint to start
from, and settles the run's settings:

* a new folder: the flags;
* continuing a run in its own folder (``--resume_checkpoint auto``, a checkpoint of that folder,
  or the same command started again): the folder's ``training_args.json``; a flag given with
  another value is an error (only the schedule of the run, e.g. ``--learning_steps``, may change);
* post-training from another run's checkpoint: its ``training_args.json`` fixes the architecture,
  the diffusion process and the vocabulary; a flag that contradicts them is an error.

Every conflict is a ``UserError`` naming both values, raised before any file is written.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .data import read_jsonl_pairs, split_path
from .errors import UserError
from .model import checkpoints as ckpt

logger = logging.getLogger(__name__)

# May differ when a run continues in its folder: how long it runs and what it logs.
MUTABLE = ("learning_steps", "save_interval", "log_interval", "eval_interval", "wandb", "max_bad_steps", "notes",
           "resume_checkpoint", "checkpoint_path")
# Fixed by the checkpoint a post-training starts from.
ARCHITECTURE = ("seq_len", "hidden_dim", "hidden_t_dim", "diffusion_steps", "noise_schedule", "vocab", "vocab_size",
                "config_name")
ENCODER_FLAGS = ("config_name", "num_layers", "num_heads", "hidden_size", "intermediate_size")


@dataclass
class RunPlan:
    """What ``train`` will do: the folder, the checkpoint to start from, and how."""

    cfg: TrainConfig
    folder: Path
    resume: Path | None
    exact: bool  # continue the run of ``folder`` exactly (optimizer, data position, RNGs)
    vocab_folder: Path | None  # where the vocabulary already is (the run's folder or the source's)
    new_folder: bool


def _value(cfg: TrainConfig, key: str, folder: Path | None) -> Any:
    """A setting in a comparable form: paths resolved, defaults resolved, the vocabulary's origin."""
    if key == "vocab":
        value = cfg.vocab_source or cfg.vocab
        return str(Path(value).resolve()) if value not in ("bert", "train") else value
    if key == "config_name":
        return cfg.encoder_config(folder)
    if key == "data_dir":
        return str(Path(cfg.data_dir).resolve())
    if key == "lr_schedule":
        return cfg.resolved_lr_schedule()
    return getattr(cfg, key)


def _flag_name(key: str) -> str:
    """``--key``, with the paper's spelling first where it has one (``--diff_steps/--diffusion_steps``)."""
    aliases = {f.name: f.metadata.get("aliases", ()) for f in dataclasses.fields(TrainConfig)}.get(key, ())
    return "/".join([*aliases, f"--{key}"])


def _describe(key: str, value: Any) -> str:
    if key == "config_name":
        return (f"{value.num_layers} layers / {value.hidden_size} / {value.num_heads} heads / "
                f"{value.intermediate_size}")
    return repr(value)


def _adopt(cfg: TrainConfig, saved: TrainConfig, keys: tuple[str, ...], source: Path, folder: Path,
           what: str) -> None:
    """Take ``keys`` from ``saved`` (read from ``source``); a given flag with another value is an error."""
    for key in keys:
        if key == "vocab_size":  # only --vocab train reads it, as an upper bound (DiffuSeq's tokenizer sets it)
            if key in cfg.given and _value(saved, "vocab", folder) == "train" and saved.vocab_size > cfg.vocab_size:
                raise UserError(f"--vocab_size {cfg.vocab_size} but {source} has a vocabulary of {saved.vocab_size} "
                                f"({what})")
            cfg.vocab_size = saved.vocab_size
            continue
        given = key in cfg.given or (key == "config_name" and any(k in cfg.given for k in ENCODER_FLAGS))
        if given:
            mine, theirs = _value(cfg, key, None), _value(saved, key, folder)
            if mine != theirs:
                flag = _flag_name(key) + " gives" if key != "config_name" else "the encoder size flags give"
                raise UserError(f"{flag} {_describe(key, mine)} but {source} says {_describe(key, theirs)} ({what})")
        if key == "config_name":
            encoder = saved.encoder_config(folder)
            cfg.config_name = saved.config_name
            cfg.num_layers, cfg.num_heads = encoder.num_layers, encoder.num_heads
            cfg.hidden_size, cfg.intermediate_size = encoder.hidden_size, encoder.intermediate_size
            cfg.config_folder = str(folder)
        elif key == "vocab":
            cfg.vocab, cfg.vocab_source = saved.vocab, saved.vocab_source
        else:
            setattr(cfg, key, getattr(saved, key))


def _resolve_resume(cfg: TrainConfig, folder: Path) -> tuple[Path | None, bool]:
    """The checkpoint to start from and whether it continues the run of ``folder``."""
    own = ckpt.latest_checkpoint(folder) if folder.is_dir() else None
    if cfg.resume_checkpoint in ("", "auto"):
        if cfg.resume_checkpoint == "auto" and own is None:
            logger.info("--resume_checkpoint auto: no complete checkpoint in %s, starting from scratch", folder)
        return own, own is not None
    path = Path(cfg.resume_checkpoint)
    if path.is_dir():
        found = ckpt.latest_checkpoint(path)
        if found is None:
            raise UserError(f"--resume_checkpoint {path}: the folder holds no complete checkpoint")
        path = found
    elif not path.is_file():
        raise UserError(f"--resume_checkpoint {path} does not exist")
    ckpt.parse_step(path)
    if path.parent.resolve() == folder.resolve():
        return path, True
    if own is not None:  # the same post-training command started again: it continues where it stopped
        logger.info("%s already holds this run's checkpoint %s: continuing from it, not from %s", folder,
                    own.name, path)
        return own, True
    return path, False


def plan_run(cfg: TrainConfig) -> RunPlan:
    """Check everything a run needs and settle its settings; reads files, writes none."""
    if not cfg.checkpoint_path and not cfg.data_dir:
        raise UserError("give --data_dir (a folder of train/valid/test.jsonl) for a new run, or --checkpoint_path "
                        "of a run to continue (see --help)")
    folder = Path(cfg.checkpoint_path or cfg.default_checkpoint_path())
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--checkpoint_path {folder} is a file, not a folder")
    args_file = folder / "training_args.json"
    if folder.is_dir() and not args_file.is_file() and any(folder.glob("*.pt")):
        raise UserError(f"{folder} holds checkpoint files but no training_args.json: pick a new --checkpoint_path")
    resume, exact = _resolve_resume(cfg, folder)
    if args_file.is_file():  # the folder's own run: the same settings, or a new --checkpoint_path
        saved = TrainConfig.load(args_file)
        keys = tuple(k for k in saved.field_names() if k not in MUTABLE and k != "vocab_source")
        _adopt(cfg, saved, keys, args_file, folder,
               "this folder's run; continue it with the same settings or pick a new --checkpoint_path")
    elif resume is not None and not exact:
        source_args = resume.parent / "training_args.json"
        if not source_args.is_file():
            raise UserError(f"{resume.parent} has no training_args.json: cannot tell the model's settings")
        source = TrainConfig.load(source_args)
        _adopt(cfg, source, ARCHITECTURE, source_args, resume.parent,
               "the checkpoint post-training starts from; leave the flag out to take its value")
    if not cfg.data_dir:
        raise UserError("give --data_dir (a folder of train/valid/test.jsonl)")
    cfg.validate()
    for split in ("train", "valid"):
        read_jsonl_pairs(split_path(Path(cfg.data_dir), split))
    if resume is not None and ckpt.parse_step(resume) >= cfg.learning_steps:
        raise UserError(f"{resume} is at step {ckpt.parse_step(resume)}, not below --learning_steps "
                        f"{cfg.learning_steps}: nothing to train (raise --learning_steps)")
    vocab_folder = None
    for candidate in ([folder] if args_file.is_file() else []) + ([resume.parent] if resume is not None else []):
        if (candidate / "vocab.txt").is_file() or (candidate / "vocab.json").is_file():
            vocab_folder = candidate
            break
    if vocab_folder is None and (args_file.is_file() or resume is not None):
        raise UserError(f"{(resume.parent if resume is not None else folder)} holds no vocabulary (vocab.txt or "
                        f"vocab.json)")
    return RunPlan(cfg, folder, resume, exact, vocab_folder, not folder.exists())
