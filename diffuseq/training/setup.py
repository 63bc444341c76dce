"""Setting up a training run: before it writes anything, where it goes, what it starts from, and with
which settings; then its first files, and ``train`` itself.

``plan_run`` reads (never writes) the flags, the checkpoint folder and the checkpoint to start
from: ``run_folder`` (where the run goes), ``start_point`` (the checkpoint it starts from and whether
it continues exactly), ``adopted_settings`` (its settings, a new config) and ``vocabulary_folder``
(where its vocabulary already is). The settings are:

* a new folder: the flags;
* continuing a run in its own folder (``--resume_checkpoint auto``, a checkpoint of that folder,
  or the same command started again): the folder's ``training_args.json``; a flag given with
  another value is an error (only the schedule of the run, e.g. ``--learning_steps``, may change);
* post-training from another run's checkpoint: its ``training_args.json`` fixes the architecture,
  the diffusion process and the vocabulary; a flag that contradicts them is an error.

Every conflict is a ``UserError`` naming both values, raised before any file is written.
``resolved_settings`` then gives the settings as ``training_args.json`` records them; the Trainer
gets those.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import dist_util
from ..config import BERT_BASE_NAMES, TrainConfig
from ..data import check_split, read_jsonl_pairs, split_path
from ..data.vocab import Vocabulary, WordPieceVocab, build_vocab, load_vocab_from, train_wordpiece
from ..errors import UserError
from ..model import EncoderConfig
from ..model import checkpoints as ckpt
from ..model.plm_init import bert_weights_folder
from .loop import Trainer

logger = logging.getLogger(__name__)

# May differ when a run continues in its folder: how long it runs and what it logs (the folder's values
# unless given again), and where it logs to and starts from (the command's).
SCHEDULE = ("learning_steps", "save_interval", "log_interval", "eval_interval", "max_bad_steps", "notes")
MUTABLE = (*SCHEDULE, "wandb", "resume_checkpoint", "checkpoint_path", "tf32", "compile", "data_cache")
# Fixed by the checkpoint a post-training starts from.
ARCHITECTURE = ("seq_len", "hidden_dim", "hidden_t_dim", "diffusion_steps", "noise_schedule", "vocab", "vocab_size",
                "config_name", "self_cond", "learned_mean_embed", "denoise", "denoise_rate")
ENCODER_FLAGS = ("config_name", "num_layers", "num_heads", "hidden_size", "intermediate_size")


@dataclass
class RunPlan:
    """What ``train`` will do: the folder, the checkpoint to start from, and how."""

    cfg: TrainConfig  # the settings: the flags, with those adopted from the folder's run or the source checkpoint
    folder: Path
    resume: Path | None
    exact: bool  # continue the run of ``folder`` exactly (optimizer, data position, RNGs)
    vocab_folder: Path | None  # where the vocabulary already is (the run's folder or the source's)


def _value(cfg: TrainConfig, key: str, folder: Path | None) -> Any:
    """A setting in a comparable form: paths resolved, defaults resolved."""
    if key == "vocab":
        return str(Path(cfg.vocab).resolve()) if cfg.vocab not in ("bert", "train") else cfg.vocab
    if key == "config_name":
        return cfg.encoder_config(folder)
    if key == "data_dir":
        return str(Path(cfg.data_dir).resolve())
    if key == "lr_schedule":
        return cfg.resolved_lr_schedule()
    return getattr(cfg, key)


def _describe(key: str, value: Any) -> str:
    if key == "config_name":
        return (f"{value.num_layers} layers / {value.hidden_size} / {value.num_heads} heads / "
                f"{value.intermediate_size}")
    return repr(value)


def _adopted_fields(cfg: TrainConfig, saved: TrainConfig, key: str, source: Path, folder: Path,
                    what: str) -> dict[str, Any]:
    """The fields that taking ``key`` from ``saved`` (read from ``source``) sets; a given flag with another value
    is an error."""
    if key == "vocab_size":  # only --vocab train reads it, as an upper bound (DiffuSeq's tokenizer sets it)
        if key in cfg.given and saved.vocab == "train" and saved.vocab_size > cfg.vocab_size:
            raise UserError(f"`vocab_size` {cfg.vocab_size} but {source} has a vocabulary of {saved.vocab_size} "
                            f"({what})")
        return {key: saved.vocab_size}
    given = key in cfg.given or (key == "config_name" and any(k in cfg.given for k in ENCODER_FLAGS))
    if given:
        mine, theirs = _value(cfg, key, None), _value(saved, key, folder)
        if mine != theirs:
            flag = f"`{key}` gives" if key != "config_name" else "the encoder size flags give"
            raise UserError(f"{flag} {_describe(key, mine)} but {source} says {_describe(key, theirs)} ({what})")
    if key != "config_name":
        return {key: getattr(saved, key)}
    encoder = saved.encoder_config(folder)
    stale = saved.config_name not in BERT_BASE_NAMES and not Path(saved.config_name).exists()
    return {"config_name": str(folder / "config.json") if stale else saved.config_name,  # a folder that moved
            "num_layers": encoder.num_layers, "num_heads": encoder.num_heads,
            "hidden_size": encoder.hidden_size, "intermediate_size": encoder.intermediate_size}


def _adopt(cfg: TrainConfig, saved: TrainConfig, keys: tuple[str, ...], source: Path, folder: Path,
           what: str) -> TrainConfig:
    """``cfg`` with ``keys`` taken from ``saved`` (read from ``source``); a given flag with another value is an
    error. One key after the other: a key is compared with what the keys before it set (the encoder sizes with
    those ``config_name`` set)."""
    for key in keys:
        cfg = dataclasses.replace(cfg, **_adopted_fields(cfg, saved, key, source, folder, what))
    return cfg


def _own_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint of the run in ``folder``, or None for a folder without checkpoints.

    Checkpoint files with no complete checkpoint among them (a truncated file, a crash while
    saving, a DiffuSeq folder without ``trainstateNNNNNN.pt``) are an error, not a fresh start;
    a newer incomplete checkpoint above a complete one is skipped with a warning.
    """
    if not folder.is_dir():
        return None
    own, newest = ckpt.latest_checkpoint(folder), ckpt.newest_step(folder)
    if newest is None or (own is not None and ckpt.parse_step(own) >= newest):
        return own
    if own is None:
        raise UserError(f"{folder} holds checkpoint files (newest: step {newest}) but no complete checkpoint "
                        f"(trainstateNNNNNN.pt and the sizes it records): continue from one file with "
                        f"`resume_checkpoint` FILE and a new `checkpoint_path`")
    logger.warning("%s: the checkpoint of step %d is incomplete (a file is missing or truncated); continuing from "
                   "step %d, the newest complete one", folder, newest, ckpt.parse_step(own))
    return own


def run_folder(cfg: TrainConfig, default_folder: str = "") -> Path:
    """Where the run goes: ``--checkpoint_path``, else ``default_folder``, else a new name; checked, not created."""
    if not cfg.checkpoint_path and not cfg.data_dir:
        raise UserError("give `data_dir` (a folder of train/valid/test.jsonl) for a new run, or `checkpoint_path` "
                        "of a run to continue (see `help`)")
    folder = Path(cfg.checkpoint_path or default_folder or cfg.default_checkpoint_path())
    if folder.exists() and not folder.is_dir():
        raise UserError(f"`checkpoint_path` {folder} is a file, not a folder")
    if folder.is_dir() and not (folder / "training_args.json").is_file() and any(folder.glob("*.pt")):
        raise UserError(f"{folder} holds checkpoint files but no training_args.json: pick a new `checkpoint_path`")
    return folder


def start_point(cfg: TrainConfig, folder: Path) -> tuple[Path | None, bool]:
    """Where the run starts from: the checkpoint (None: from scratch) and whether it continues the run of
    ``folder`` exactly."""
    explicit = cfg.resume_checkpoint not in ("", "auto")
    if explicit and Path(cfg.resume_checkpoint).resolve().parent == folder.resolve():
        own = None  # a checkpoint of this folder named explicitly: it alone decides
    else:
        own = _own_checkpoint(folder)
    if not explicit:
        if cfg.resume_checkpoint == "auto" and own is None:
            logger.info("--resume_checkpoint auto: no complete checkpoint in %s, starting from scratch", folder)
        return own, own is not None
    path = Path(cfg.resume_checkpoint)
    if path.is_dir():
        found = ckpt.latest_checkpoint(path)
        if found is None:
            raise UserError(f"`resume_checkpoint` {path}: the folder holds no complete checkpoint")
        path = found
    elif not path.is_file():
        raise UserError(f"`resume_checkpoint` {path} does not exist")
    ckpt.parse_step(path)
    if path.parent.resolve() == folder.resolve():
        return path, True
    if own is not None:  # the same post-training command started again: it continues where it stopped
        logger.info("%s already holds this run's checkpoint %s: continuing from it, not from %s", folder,
                    own.name, path)
        return own, True
    return path, False


def adopted_settings(cfg: TrainConfig, folder: Path, resume: Path | None, exact: bool) -> TrainConfig:
    """The run's settings: continuing the folder's run, its ``training_args.json`` (the schedule may change);
    post-training, the architecture of the source checkpoint's run; else the flags."""
    args_file = folder / "training_args.json"
    if args_file.is_file():  # the folder's own run: the same settings, or a new --checkpoint_path
        saved = TrainConfig.load(args_file)
        keys = tuple(k for k in saved.field_names() if k not in MUTABLE)
        cfg = _adopt(cfg, saved, keys, args_file, folder,
                     "this folder's run; continue it with the same settings or pick a new `checkpoint_path`")
        return dataclasses.replace(cfg, **{key: getattr(saved, key) for key in SCHEDULE if key not in cfg.given})
    if resume is None or exact:
        return cfg
    source_args = resume.parent / "training_args.json"
    if not source_args.is_file():
        raise UserError(f"{resume.parent} has no training_args.json: cannot tell the model's settings")
    return _adopt(cfg, TrainConfig.load(source_args), ARCHITECTURE, source_args, resume.parent,
                  "the checkpoint post-training starts from; leave the flag out to take its value")


def _check_runnable(cfg: TrainConfig, resume: Path | None) -> None:
    """The settled settings checked against what the run reads: the data, BERT's weights, the start step."""
    if not cfg.data_dir:
        raise UserError("give `data_dir` (a folder of train/valid/test.jsonl)")
    cfg.validate()
    if cfg.use_plm_init == "bert" and resume is None:
        bert_weights_folder(cfg.config_name)
    for split in ("train", "valid"):
        check_split(split_path(Path(cfg.data_dir), split), cfg.data_cache)
    if resume is not None and ckpt.parse_step(resume) >= cfg.learning_steps:
        raise UserError(f"{resume} is at step {ckpt.parse_step(resume)}, not below `learning_steps` "
                        f"{cfg.learning_steps}: nothing to train (raise `learning_steps`)")


def vocabulary_folder(folder: Path, resume: Path | None) -> Path | None:
    """The folder the run's vocabulary already lives in: the folder's own run's, else the source checkpoint's;
    None for a new run (its vocabulary is built)."""
    continuing = (folder / "training_args.json").is_file()
    candidates = ([folder] if continuing else []) + ([resume.parent] if resume is not None else [])
    for candidate in candidates:
        if (candidate / "vocab.txt").is_file() or (candidate / "vocab.json").is_file():
            return candidate
    if candidates:
        raise UserError(f"{(resume.parent if resume is not None else folder)} holds no vocabulary (vocab.txt or "
                        f"vocab.json)")
    return None


def plan_run(cfg: TrainConfig, default_folder: str = "") -> RunPlan:
    """Check everything a run needs and settle its settings; reads files, writes none.

    ``default_folder`` is the folder of a run given no ``--checkpoint_path`` (rank 0's name, the same on
    every rank); without it the name is made here.
    """
    folder = run_folder(cfg, default_folder)
    resume, exact = start_point(cfg, folder)
    settings = adopted_settings(cfg, folder, resume, exact)
    _check_runnable(settings, resume)
    return RunPlan(settings.normalised(), folder, resume, exact, vocabulary_folder(folder, resume))


def _run_vocab(plan: RunPlan) -> Vocabulary:
    """The run's vocabulary: from the folder it already lives in, or built (rank 0 learns, the others receive)."""
    cfg = plan.cfg
    if plan.vocab_folder is not None:
        vocab = load_vocab_from(plan.vocab_folder)
        if cfg.vocab == "train" and "vocab_size" in cfg.given and vocab.size > cfg.vocab_size:
            raise UserError(f"`vocab_size` {cfg.vocab_size} but the vocabulary in {plan.vocab_folder} has "
                            f"{vocab.size} entries")
        return vocab
    if cfg.vocab == "train":
        itos = None
        if dist_util.rank() == 0:
            texts = (text for pair in read_jsonl_pairs(split_path(Path(cfg.data_dir), "train")) for text in pair)
            itos = train_wordpiece(texts, cfg.vocab_size)
        return WordPieceVocab.from_tokens(dist_util.broadcast_object(itos))
    return build_vocab(cfg.vocab, (), cfg.vocab_size)


def resolved_settings(cfg: TrainConfig, folder: Path, vocab: Vocabulary, encoder: EncoderConfig) -> TrainConfig:
    """``cfg`` as ``training_args.json`` records it: the ``encoder`` size written out (its BERT ``config.json``
    goes in ``folder``, which ``config_name`` then names, so DiffuSeq's own tools build the same model offline),
    the vocabulary's actual size, the learning-rate schedule resolved, and paths absolute."""
    return dataclasses.replace(
        cfg, num_layers=encoder.num_layers, num_heads=encoder.num_heads, hidden_size=encoder.hidden_size,
        intermediate_size=encoder.intermediate_size, vocab_size=vocab.size,
        vocab=cfg.vocab if cfg.vocab in ("bert", "train") else str(Path(cfg.vocab).resolve()),
        config_name=cfg.config_name if cfg.use_plm_init == "bert" else str(folder.resolve()),
        checkpoint_path=str(folder), data_dir=str(Path(cfg.data_dir).resolve()), lr_schedule=cfg.resolved_lr_schedule())


def _write_run_files(plan: RunPlan, cfg: TrainConfig, vocab: Vocabulary, encoder: EncoderConfig) -> None:
    """The first writes of a run (rank 0): the folder, its vocabulary, ``config.json``, ``training_args.json``
    (of the resolved settings ``cfg``)."""
    folder = plan.folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create checkpoint folder {folder}: {err.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"checkpoint folder {folder} is not writable")
    if plan.vocab_folder is None or plan.vocab_folder.resolve() != folder.resolve():
        vocab.save(folder)
    ckpt.atomic_write_text(json.dumps(encoder.to_bert_config(vocab.size, cfg.dropout, vocab.pad_id), indent=2)
                           + "\n", folder / "config.json")
    ckpt.atomic_write_text(cfg.to_json(isinstance(vocab, WordPieceVocab)), folder / "training_args.json")


def setup_run(cfg: TrainConfig, device: torch.device) -> Trainer:
    """A ready Trainer: everything checked (flags, data, the checkpoint to start from and its
    settings) before the first file of the run is written, then the run's files written."""
    # the default folder's name holds the time: rank 0's, for every rank
    default_folder = "" if cfg.checkpoint_path else dist_util.broadcast_object(cfg.default_checkpoint_path())
    plan = plan_run(cfg, default_folder)
    vocab = _run_vocab(plan)
    encoder = plan.cfg.encoder_config(plan.folder)
    settings = resolved_settings(plan.cfg, plan.folder, vocab, encoder)
    trainer = Trainer(settings, plan.folder, vocab, device, encoder)
    if plan.resume is not None:
        trainer.load(plan.resume, exact=plan.exact)
    elif settings.use_plm_init == "bert":
        trainer.init_from_bert(bert_weights_folder(settings.config_name))
    if dist_util.rank() == 0:
        _write_run_files(plan, settings, vocab, encoder)
        logger.info("checkpoints go to %s (vocabulary of %d entries); learning rate %g, %s; %.2fM parameters, "
                    "%s; %d process(es), batch %d per process in microbatches of %d", plan.folder, vocab.size,
                    settings.lr, settings.lr_schedule, sum(p.numel() for p in trainer.params) / 1e6, encoder,
                    dist_util.world_size(), trainer.stream.local_batch, trainer.microbatch)
    dist_util.barrier()
    return trainer


def train(cfg: TrainConfig, restore_signal_handlers: bool = True) -> Trainer:
    """Run training in this process (one rank of a distributed run); return the trainer when it stops
    (``trainer.stopped_by``: the signal that stopped it, if any).

    After a stop by SIGINT / SIGTERM, repeats of the signal are ignored until the run's processes have
    shut down; ``restore_signal_handlers=False`` keeps ignoring them afterwards (a command that exits next).
    """
    device = dist_util.setup()
    trainer = None
    try:
        trainer = setup_run(cfg, device)
        trainer.run()
        return trainer
    finally:
        dist_util.cleanup()
        if trainer is not None and restore_signal_handlers:
            trainer.restore_signal_handlers()
