"""Decoding a split into files: DiffuSeq's output layout and Bridge-Gap's file names, and the one
decode -> evaluate pipeline (:func:`run_decode`)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dist_util, outputs
from .api import Seq2SeqDiffusion
from .config import DecodeConfig
from .data import Seq2SeqData, load_split
from .errors import UserError
from .fileio import atomic_write_text
from .outputs import score_files
from .model import checkpoints as ckpt
from .samplers import ReverseSampler, SamplerConfig, create_sampler

logger = logging.getLogger(__name__)


def samples_dir(out_dir: Path, model_path: Path) -> Path:
    """DiffuSeq's output folder: ``<out_dir>/<checkpoint folder name>/<checkpoint file name>.samples``."""
    return Path(out_dir) / model_path.parent.resolve().name / f"{model_path.name}.samples"


def output_name(step: int, eta: float, respacing: str, split: str, top_p: float, extras: dict[str, object]) -> str:
    """Bridge-Gap's name of a decode (after ``seed<S>_``), with a tag for each setting of ours not at its default.

    Bridge-Gap writes ``seed<S>_step<step>_eta<eta>_respace_<spacing>_<split>_topp<top_p>_tau1.0_topl0.0_topk0_
    noisedl0.0_scend_clamp_skip-1_pd_.json`` (its rounding options at their defaults, the only values
    accepted here).
    """
    name = (f"step{step}_eta{float(eta)}_respace_{respacing}_{split}_topp{float(top_p)}_tau1.0_topl0.0_topk0"
            f"_noisedl0.0_scend_clamp_skip-1_pd_")
    for key, value in extras.items():
        name += f"_{key}{'' if value is True else value}"
    return name


def decode_to_files(api: Seq2SeqDiffusion, sampler: ReverseSampler, data: Seq2SeqData, seeds: list[int],
                    out_dir: Path, name: str, batch_size: int, run_info: dict) -> Path:
    """Decode ``data`` once per seed into ``out_dir/seed<S>_<name>.json``, described by ``decode_<name>.meta.json``.

    Under a distributed launch each rank decodes a contiguous slice of the inputs and rank 0
    writes the lines in input order. ``run_info`` (the checkpoint's identity and the settings)
    goes into the meta file (see :mod:`diffuseq.outputs`), with each seed file's SHA-256 and
    wall time. Returns the meta file's path.
    """
    device = api.device
    n, world, rank = len(data), dist_util.world_size(), dist_util.rank()
    per_rank = math.ceil(n / world)
    mine = range(rank * per_rank, min(n, (rank + 1) * per_rank))
    info = {**run_info, "settings": {**run_info.get("settings", {}), "sampler": sampler.config.to_dict()},
            "examples": n, "processes": world, "denoising_steps": sampler.num_steps, "batch_size": batch_size,
            "device": str(device)}
    with contextlib.ExitStack() as stack:
        meta, error = None, None
        if rank == 0:
            try:
                stack.enter_context(outputs.decode_lock(out_dir, name))
                meta = outputs.start_meta(out_dir, name, info)
            except UserError as err:
                error = str(err)
        error = dist_util.broadcast_object(error)
        if error:
            raise UserError(error)
        for seed in seeds:
            started = time.perf_counter()
            records = api.decode_data(data, sampler, seed, mine, batch_size, show_progress=rank == 0)
            gathered = dist_util.all_gather_objects(records)
            seconds = time.perf_counter() - started
            if rank == 0:
                text = "".join(json.dumps(rec) + "\n" for part in gathered for rec in part)
                out_file = outputs.add_seed(out_dir, name, meta, seed, text, seconds, n)
                logger.info("seed %d: %d lines in %.1f s -> %s", seed, n, seconds, out_file)
        if rank == 0:
            outputs.finish_meta(out_dir, name, meta)
    return outputs.meta_path(out_dir, name)


@dataclass
class DecodeRun:
    """What :func:`run_decode` made: the outputs' folder and name, the meta file, and the scores if asked."""

    out_dir: Path
    name: str
    meta: Path
    scores: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # the evaluation's notes (e.g. pairs cut to seq_len)


def plan_output(config: DecodeConfig, sampling: SamplerConfig) -> tuple[Path, str]:
    """The folder and the name (after ``seed<S>_``) of a decode's files: the flags as given, the eta of
    ``sampling`` (the sampler's settings) where ``--step`` changed it, and dpm-solver-v2's steps where it has them."""
    extras = {"sampler": config.sampler if config.sampler not in ("", "ddpm", "ddim") else None,
              "solversteps": sampling.solver_steps,
              "clampstep": config.clamp_step or None, "clip": config.clip_denoised or None,
              "sigmasmall": config.sigma_small or None, "ddimeta": sampling.eta if sampling.eta != config.eta else None,
              "dtype": config.dtype if config.dtype != "fp32" else None, "first": config.max_examples}
    name = output_name(config.step if config.step is not None else sampling.num_train_timesteps, config.eta,
                       config.decode_respacing, config.split, config.top_p,
                       {k: v for k, v in extras.items() if v is not None})
    return samples_dir(Path(config.out_dir), Path(config.model_path)), name


def run_decode(config: DecodeConfig, api: Seq2SeqDiffusion | None = None) -> DecodeRun:
    """The decode -> evaluate pipeline of ``sample_seq2seq.py``, ``scripts/reproduce.py`` and the demo.

    Decodes ``config.split`` once per seed into DiffuSeq's layout (see :func:`decode_to_files`),
    then, with ``config.evaluate``, scores the files into ``decode_<name>.eval.json`` and prints their table
    on stdout, as ``diffuseq-eval`` does. The meta records how many pairs were cut to ``seq_len``. ``api``
    is the loaded checkpoint (loaded from ``config.model_path`` when not given).
    """
    out_root = Path(config.out_dir)
    if out_root.exists() and not out_root.is_dir():
        raise UserError(f"`out_dir` {out_root} is a file, not a folder")
    api = api or Seq2SeqDiffusion.from_checkpoint(config.model_path, dist_util.current_device(), config.dtype,
                                                  config.compile)
    sampler = create_sampler(config.sampling(api.num_timesteps, api.config.noise_schedule, api.denoise_rate))
    data_dir = Path(config.data_dir or api.config.data_dir)
    data = load_split(data_dir, config.split, api.vocab, api.config.seq_len, config.max_examples,
                      cache=config.data_cache)
    out_dir, name = plan_output(config, sampler.config)
    if dist_util.rank() == 0:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create output folder {out_dir}: {err.strerror}") from None
        grid = sampler.config.respacing or ("time-uniform" if sampler.config.solver_steps else "all")
        logger.info("decoding %d %s examples with %d denoising steps (respacing %r, %s, %s) on %d process(es) -> %s",
                    len(data), config.split, sampler.num_steps, grid, sampler.name.upper(), config.dtype,
                    dist_util.world_size(), out_dir)
    settings = {"split": config.split, "data_dir": str(data_dir.resolve()), "max_examples": config.max_examples,
                "dtype": config.dtype}
    info: dict[str, Any] = {"checkpoint": ckpt.file_identity(Path(config.model_path)), "settings": settings,
                            "config": config.to_dict()}
    if data.truncation is not None:  # what the data was, not a setting: kept out of the decode's identity
        info["data"] = {"truncation": data.truncation.to_dict()}
    meta = decode_to_files(api, sampler, data, config.seed_list(), out_dir, name, config.batch_size, info)
    if dist_util.rank() == 0 and data.truncation is not None and data.truncation.truncated:
        logger.warning(data.truncation.describe(f"{data_dir / config.split}.jsonl"))
    run = DecodeRun(out_dir, name, meta)
    if config.evaluate and dist_util.rank() == 0:
        files = sorted(out_dir / entry["file"] for entry in json.loads(meta.read_text())["seeds"].values())
        result = score_files(files, corpus_bleu=False)
        run.scores, run.notes = result.payload, result.notes
        atomic_write_text(json.dumps(run.scores, indent=2) + "\n", out_dir / f"decode_{name}.eval.json")
    return run
