"""Setting up a training run: before it writes anything, where it goes, what it starts from, and with
which settings; then its first files, and ``train`` itself.

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
                "config_name", "self_cond")
ENCODER_FLAGS = ("config_name", "num_layers", "num_heads", "hidden_size", "intermediate_size")


@dataclass
class RunPlan:
    """What ``train`` will do: the folder, the checkpoint to start from, and how."""

    cfg: TrainConfig
    folder: Path
    resume: Path | None
    exact: bool  # continue the run of ``folder`` exactly (optimizer, data position, RNGs)
    vocab_folder: Path | None  # where the vocabulary already is (the run's folder or the source's)


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
            stale = saved.config_name not in BERT_BASE_NAMES and not Path(saved.config_name).exists()
            cfg.config_name = str(folder / "config.json") if stale else saved.config_name  # a folder that moved
            cfg.num_layers, cfg.num_heads = encoder.num_layers, encoder.num_heads
            cfg.hidden_size, cfg.intermediate_size = encoder.hidden_size, encoder.intermediate_size
        elif key == "vocab":
            cfg.vocab, cfg.vocab_source = saved.vocab, saved.vocab_source
        else:
            setattr(cfg, key, getattr(saved, key))


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
                        f"--resume_checkpoint FILE and a new --checkpoint_path")
    logger.warning("%s: the checkpoint of step %d is incomplete (a file is missing or truncated); continuing from "
                   "step %d, the newest complete one", folder, newest, ckpt.parse_step(own))
    return own


def _resolve_resume(cfg: TrainConfig, folder: Path) -> tuple[Path | None, bool]:
    """The checkpoint to start from and whether it continues the run of ``folder``."""
    explicit = cfg.resume_checkpoint not in ("", "auto")
    if explicit and Path(cfg.resume_checkpoint).resolve().parent == folder.resolve():
        own = None  # a checkpoint of this folder named explicitly: it alone decides
    else:
        own = _own_checkpoint(folder)
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


def plan_run(cfg: TrainConfig, default_folder: str = "") -> RunPlan:
    """Check everything a run needs and settle its settings; reads files, writes none.

    ``default_folder`` is the folder of a run given no ``--checkpoint_path`` (rank 0's name, the same on
    every rank); without it the name is made here.
    """
    if not cfg.checkpoint_path and not cfg.data_dir:
        raise UserError("give --data_dir (a folder of train/valid/test.jsonl) for a new run, or --checkpoint_path "
                        "of a run to continue (see --help)")
    folder = Path(cfg.checkpoint_path or default_folder or cfg.default_checkpoint_path())
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
        for key in SCHEDULE:
            if key not in cfg.given:
                setattr(cfg, key, getattr(saved, key))
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
    if cfg.use_plm_init == "bert" and resume is None:
        bert_weights_folder(cfg.config_name)
    for split in ("train", "valid"):
        check_split(split_path(Path(cfg.data_dir), split), cfg.data_cache)
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
    return RunPlan(cfg, folder, resume, exact, vocab_folder)


def _run_vocab(plan: RunPlan) -> Vocabulary:
    """The run's vocabulary: from the folder it already lives in, or built (rank 0 learns, the others receive)."""
    cfg = plan.cfg
    if plan.vocab_folder is not None:
        vocab = load_vocab_from(plan.vocab_folder)
        if cfg.vocab_source == "train" and "vocab_size" in cfg.given and vocab.size > cfg.vocab_size:
            raise UserError(f"--vocab_size {cfg.vocab_size} but the vocabulary in {plan.vocab_folder} has "
                            f"{vocab.size} entries")
        return vocab
    if cfg.vocab == "train":
        itos = None
        if dist_util.rank() == 0:
            texts = (text for pair in read_jsonl_pairs(split_path(Path(cfg.data_dir), "train")) for text in pair)
            itos = train_wordpiece(texts, cfg.vocab_size)
        return WordPieceVocab.from_tokens(dist_util.broadcast_object(itos))
    return build_vocab(cfg.vocab, (), cfg.vocab_size)


def _record_settings(cfg: TrainConfig, checkpoint_dir: Path, vocab: Vocabulary) -> EncoderConfig:
    """Resolve ``cfg`` into what ``training_args.json`` records, in DiffuSeq's meaning of each key.

    The encoder size is written out (and into a BERT ``config.json`` in the folder, which
    ``config_name`` then names, so DiffuSeq's own tools build the same model offline); ``vocab``
    is ``bert`` for a WordPiece vocabulary (DiffuSeq reads it from ``config_name``'s folder),
    with the flag given kept in ``vocab_source``; paths are absolute.
    """
    encoder = cfg.encoder_config(checkpoint_dir)
    cfg.num_layers, cfg.num_heads = encoder.num_layers, encoder.num_heads
    cfg.hidden_size, cfg.intermediate_size = encoder.hidden_size, encoder.intermediate_size
    cfg.vocab_size = vocab.size
    cfg.vocab_source = cfg.vocab_source or cfg.vocab
    if cfg.vocab_source not in ("bert", "train"):
        cfg.vocab_source = str(Path(cfg.vocab_source).resolve())
    cfg.vocab = "bert" if isinstance(vocab, WordPieceVocab) else cfg.vocab_source
    if cfg.use_plm_init != "bert":
        cfg.config_name = str(checkpoint_dir.resolve())
    cfg.checkpoint_path = str(checkpoint_dir)
    cfg.data_dir = str(Path(cfg.data_dir).resolve())
    cfg.lr_schedule = cfg.resolved_lr_schedule()
    return encoder


def _write_run_files(plan: RunPlan, vocab: Vocabulary, encoder: EncoderConfig) -> None:
    """The first writes of a run (rank 0): the folder, its vocabulary, ``config.json``, ``training_args.json``."""
    cfg, folder = plan.cfg, plan.folder
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
    ckpt.atomic_write_text(cfg.to_json(), folder / "training_args.json")


def setup_run(cfg: TrainConfig, device: torch.device) -> Trainer:
    """A ready Trainer: everything checked (flags, data, the checkpoint to start from and its
    settings) before the first file of the run is written, then the run's files written."""
    # the default folder's name holds the time: rank 0's, for every rank
    default_folder = "" if cfg.checkpoint_path else dist_util.broadcast_object(cfg.default_checkpoint_path())
    plan = plan_run(cfg, default_folder)
    vocab = _run_vocab(plan)
    encoder = _record_settings(cfg, plan.folder, vocab)
    trainer = Trainer(cfg, plan.folder, vocab, device, encoder)
    if plan.resume is not None:
        trainer.load(plan.resume, exact=plan.exact)
    elif cfg.use_plm_init == "bert":
        trainer.init_from_bert(bert_weights_folder(cfg.config_name))
    if dist_util.rank() == 0:
        _write_run_files(plan, vocab, encoder)
        logger.info("checkpoints go to %s (vocabulary of %d entries); learning rate %g, %s; %.2fM parameters, "
                    "%s; %d process(es), batch %d per process in microbatches of %d", plan.folder, vocab.size,
                    cfg.lr, cfg.lr_schedule, sum(p.numel() for p in trainer.params) / 1e6, encoder,
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
