"""Decoding: the reverse process from noise to text, with respacing, clamping and per-example noise.

``DiffusionSampler`` follows the diffusers scheduler shape: built from a config
dict (saved beside the outputs), ``set_timesteps(respacing)`` chooses the
steps, ``step(...)`` makes one reverse step. ``denoise`` runs the loop on a
batch; ``decode_examples`` turns a split into text.

Every random draw of an example comes from its own generator, seeded by
(seed, example index), so an example decodes to the same text whatever the
batch size, the batching or the number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from . import dist_util, outputs
from .data import Seq2SeqData
from .data.vocab import Vocabulary
from .diffusion.process import GaussianDiffusion
from .diffusion.respace import respaced_diffusion, space_timesteps
from .errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class SamplerConfig:
    """Everything that defines the reverse process of a decode (DiffuSeq's flag names)."""

    num_train_timesteps: int = 2000
    noise_schedule: str = "sqrt"
    respacing: str = ""
    eta: float = -1.0
    clamp_step: int = 0
    clip_denoised: bool = False
    top_p: float = 0.0
    sigma_small: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SamplerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class DiffusionSampler:
    """DDPM (``eta < 0``) or DDIM (``eta >= 0``) reverse steps over a respaced process, as DiffuSeq's.

    * DDPM noise has DiffuSeq's fixed-large variance (``sigma_small``: the posterior variance),
      truncated to ``|noise| <= top_p`` when ``top_p > 0`` (DiffuSeq's ``--top_p``).
    * Clamping (``clamp_first`` in DiffuSeq's sample script): at respaced index i (counting down
      from N-1), the x_0 prediction is replaced by its nearest word embedding while
      ``i >= clamp_step``; so 0 clamps at every step.
    * ``clip_denoised`` then clips the x_0 prediction to [-1, 1].
    """

    def __init__(self, config: SamplerConfig) -> None:
        if config.clamp_step < 0:
            raise UserError(f"--clamp_step must be >= 0 (0 clamps at every step, K only while the respaced index "
                            f"is >= K), got {config.clamp_step}")
        if config.eta > 1:
            raise UserError(f"--eta must be -1 (DDPM) or in [0, 1] (DDIM), got {config.eta}")
        if not config.top_p >= 0:
            raise UserError(f"--top_p must be >= 0 (0: no noise truncation), got {config.top_p}")
        self.config = config
        self.base = GaussianDiffusion.from_schedule(config.noise_schedule, config.num_train_timesteps)
        self.set_timesteps(config.respacing)

    @classmethod
    def from_config(cls, values: dict) -> "DiffusionSampler":
        return cls(SamplerConfig.from_dict(values))

    def set_timesteps(self, respacing: str) -> None:
        """Keep the steps named by ``respacing`` (``""``, ``N``, ``a,b,c``, ``[a,b,c]``, ``ddimN``, ``adp_N``)."""
        kept = space_timesteps(self.config.num_train_timesteps, respacing)
        self.config.respacing = respacing
        self.process = respaced_diffusion(self.base, kept)
        self.timesteps = list(range(self.process.num_timesteps - 1, -1, -1))

    @property
    def num_steps(self) -> int:
        return self.process.num_timesteps

    @property
    def is_ddim(self) -> bool:
        return self.config.eta >= 0

    @property
    def noise_top_p(self) -> float:
        """The truncation of the step noise: DiffuSeq's ``--top_p`` for DDPM steps (its DDIM has none)."""
        return 0.0 if self.is_ddim else self.config.top_p

    def model_timesteps(self, index: int, batch: int, device: torch.device) -> torch.Tensor:
        """The float timesteps the network sees at respaced step ``index``."""
        return self.process.scale_timesteps(torch.full((batch,), index, dtype=torch.long, device=device))

    def clamps_at(self, index: int) -> bool:
        """Whether the x_0 prediction is clamped at respaced step ``index``."""
        return index >= self.config.clamp_step

    def denoised(self, pred_x0: torch.Tensor, index: int, clamp: "NearestEmbedding | None",
                 target: torch.Tensor) -> torch.Tensor:
        """The x_0 prediction as the step uses it: clamped on ``target`` positions, then clipped."""
        if clamp is not None and self.clamps_at(index):
            pred_x0[target] = clamp(pred_x0[target])
        if self.config.clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        return pred_x0

    def step(self, pred_x0: torch.Tensor, index: int, x_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_{t-1} from x_t and the (clamped) x_0 prediction at respaced step ``index``."""
        t = torch.full((x_t.size(0),), index, dtype=torch.long, device=x_t.device)
        if self.is_ddim:
            return self.process.ddim_step(x_t, t, pred_x0, noise, eta=self.config.eta)
        return self.process.ddpm_step(x_t, t, pred_x0, noise, sigma_small=self.config.sigma_small)


ARGMIN_BLOCK = 64  # vocabulary entries per block of the two-pass argmin


def blocked_argmin(scores: torch.Tensor, block: int = ARGMIN_BLOCK) -> torch.Tensor:
    """``scores.argmin(-1)`` of a [M, V] tensor with V a multiple of ``block``, in two vectorised passes.

    The minimum of each block of ``block`` columns first, then the first block
    holding the row's minimum, then the first minimum inside that block: the
    same index as ``torch.argmin`` (ties go to the first column), but about 4x
    faster on a CPU, whose argmin kernel is not vectorised.
    """
    rows, vocab = scores.shape
    blocks = scores.view(rows, vocab // block, block)
    best_block = blocks.amin(dim=-1).argmin(dim=-1)
    inside = blocks[torch.arange(rows, device=scores.device), best_block].argmin(dim=-1)
    return best_block * block + inside


class NearestEmbedding:
    """Replace vectors by their nearest vocabulary embedding (L2), without a [V x N x d] tensor.

    argmin_v ||x - e_v||^2 = argmin_v (||e_v||^2 - 2 x . e_v): a matmul and an
    argmin, ``ROWS`` vectors at a time so that their scores stay in the cache between
    the matmul and the two passes of the argmin. The vocabulary is padded to a
    multiple of ``ARGMIN_BLOCK`` with entries at infinite distance, never chosen.
    """

    ROWS = 128

    def __init__(self, embeddings: torch.Tensor) -> None:
        self.embeddings = embeddings
        vocab, dim = embeddings.shape
        padded = -(-vocab // ARGMIN_BLOCK) * ARGMIN_BLOCK
        sq_norms = torch.full((padded,), math.inf, device=embeddings.device)
        sq_norms[:vocab] = embeddings.float().pow(2).sum(-1)
        self.sq_norms = sq_norms.to(embeddings.dtype)
        scaled = embeddings.new_zeros(padded, dim)
        scaled[:vocab] = embeddings * -2  # exact: a power of two
        self.scaled_t = scaled.t().contiguous()

    def nearest_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Ids of the nearest embeddings of the vectors in ``x`` [..., d] (shape [...])."""
        flat = x.reshape(-1, x.size(-1)).to(self.embeddings.dtype)
        ids = torch.empty(flat.size(0), dtype=torch.long, device=flat.device)
        scores = flat.new_empty(min(self.ROWS, flat.size(0)), self.scaled_t.size(1))
        for start in range(0, flat.size(0), self.ROWS):
            rows = flat[start:start + self.ROWS]
            block = torch.mm(rows, self.scaled_t, out=scores[:rows.size(0)]).add_(self.sq_norms)
            ids[start:start + rows.size(0)] = blocked_argmin(block)
        return ids.view(x.shape[:-1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.embeddings[self.nearest_ids(x)].to(x.dtype)


class ExampleNoise:
    """Gaussian noise drawn from one generator per example, seeded by (seed, example index)."""

    def __init__(self, seed: int, indices: Iterable[int], shape: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.generators = [torch.Generator().manual_seed((seed * 1_000_003 + int(i)) % (2**63 - 1)) for i in indices]
        self.shape, self.device, self.dtype = shape, device, dtype

    def draw(self, top_p: float = 0.0) -> torch.Tensor:
        """The next draw of every example, stacked into [B, *shape].

        With ``top_p > 0``, entries with ``|z| > top_p`` are drawn again (from the same
        example's generator) until none is left, as DiffuSeq's ``p_sample``.
        """
        draws = []
        for gen in self.generators:
            z = torch.randn(self.shape, generator=gen)
            if top_p > 0:
                outside = z.abs() > top_p
                while outside.any():
                    z[outside] = torch.randn(int(outside.sum()), generator=gen)
                    outside = z.abs() > top_p
            draws.append(z)
        return torch.stack(draws).to(self.device, self.dtype)


def denoise(model: nn.Module, sampler: DiffusionSampler, x_start: torch.Tensor, mask: torch.Tensor,
            noise: ExampleNoise, clamp: NearestEmbedding | None, timings: dict[str, float] | None = None,
            on_step: Callable[[], object] | None = None) -> torch.Tensor:
    """Run the reverse process on a batch; source positions (``mask == 0``) stay ``x_start``.

    Returns x_0 after the last step. ``timings`` (if given) accumulates the seconds
    spent in the network and in clamping; ``on_step`` (if given) is called after each step.
    """
    target = mask.bool()
    is_target = target.unsqueeze(-1)
    x = torch.where(is_target, noise.draw(), x_start)
    for index in sampler.timesteps:
        started = time.perf_counter()
        pred_x0 = model(x, sampler.model_timesteps(index, x.size(0), x.device), target)
        if timings is not None:
            _sync(x.device)
            timings["network"] = timings.get("network", 0.0) + time.perf_counter() - started
            started = time.perf_counter()
        pred_x0 = sampler.denoised(pred_x0, index, clamp, target)
        if timings is not None:
            _sync(x.device)
            timings["clamp"] = timings.get("clamp", 0.0) + time.perf_counter() - started
        step_noise = noise.draw(sampler.noise_top_p) if index > 0 else torch.zeros_like(x)
        x = sampler.step(pred_x0.to(x.dtype), index, x, step_noise)
        x = torch.where(is_target, x, x_start)
        if on_step is not None:
            on_step()
    return x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_step_flag(step: int | None, num_train_timesteps: int, respacing: str, eta: float) -> tuple[str, float]:
    """Reconcile ``--step`` with the model's T and ``--decode_respacing``; return (respacing, eta).

    ``--step T`` (or none) keeps the respacing. ``--step S < T`` without a respacing is
    DiffuSeq's DDIM with S steps (eta 0 unless ``--eta`` is given), over S evenly spaced steps
    ending at t = 0: DiffuSeq's own loop (stride T // S from T - 1) never reaches t = 0.
    Anything else conflicts and is an error.
    """
    if step is None or step == num_train_timesteps:
        return respacing, eta
    if step > num_train_timesteps or step < 1:
        raise UserError(f"--step {step} is outside the model's 1..{num_train_timesteps} diffusion steps")
    if respacing:
        raise UserError(f"--step {step} conflicts with --decode_respacing {respacing!r}: the model has "
                        f"T = {num_train_timesteps}; pass --step {num_train_timesteps} with a respacing, "
                        f"or --step S alone for DiffuSeq's S-step DDIM")
    eta = max(eta, 0.0)
    logger.info("--step %d < T = %d: DDIM (eta %g) over %d evenly spaced steps ending at t = 0, as DiffuSeq "
                "(whose own stride loop never reaches t = 0)", step, num_train_timesteps, eta, step)
    return str(step), eta


def decode_text(vocab: Vocabulary, ids: list[int]) -> str:
    """DiffuSeq's ``decode_token``: trailing ``[PAD]`` ids removed, the rest decoded (inner pads kept)."""
    end = len(ids)
    while end and ids[end - 1] == vocab.pad_id:
        end -= 1
    return vocab.decode(ids[:end])


@torch.inference_mode()
def decode_range(model: nn.Module, sampler: DiffusionSampler, vocab: Vocabulary, data: Seq2SeqData,
                 indices: range, seed: int, batch_size: int, device: torch.device,
                 autocast_dtype: torch.dtype | None, clamp: NearestEmbedding | None,
                 show_progress: bool = False) -> list[dict[str, str]]:
    """Decode the examples ``indices`` of ``data`` with ``seed``; records in input order."""
    starts = range(indices.start, indices.stop, batch_size)
    bar = None
    if show_progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(starts) * sampler.num_steps, desc=f"seed {seed}", unit="step", dynamic_ncols=True)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext())
    records = []
    for start in starts:
        stop = min(start + batch_size, indices.stop)
        ids = data.input_ids[start:stop].to(device)
        mask = data.input_mask[start:stop].to(device)
        x_start = model.get_embeds(ids)
        noise = ExampleNoise(seed, range(start, stop), tuple(x_start.shape[1:]), device)
        with autocast:
            x0 = denoise(model, sampler, x_start, mask, noise, clamp, on_step=bar.update if bar is not None else None)
            tokens = model.get_logits(x0).argmax(dim=-1)
        for row_ids, row_tokens, row_mask in zip(ids.tolist(), tokens.tolist(), mask.tolist()):
            src_len = len(row_mask) - sum(row_mask)
            records.append({"recover": decode_text(vocab, row_tokens[src_len:]),
                            "reference": decode_text(vocab, row_ids[src_len:]),
                            "source": decode_text(vocab, row_ids[:src_len])})
    if bar is not None:
        bar.close()
    return records


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


def decode_to_files(model: nn.Module, sampler: DiffusionSampler, vocab: Vocabulary, data: Seq2SeqData,
                    seeds: list[int], out_dir: Path, name: str, batch_size: int, autocast_dtype: torch.dtype | None,
                    clamp: NearestEmbedding | None, run_info: dict) -> Path:
    """Decode ``data`` once per seed into ``out_dir/seed<S>_<name>.json``, described by ``decode_<name>.meta.json``.

    Under a distributed launch each rank decodes a contiguous slice of the inputs and rank 0
    writes the lines in input order. ``run_info`` (the checkpoint's identity and the settings)
    goes into the meta file (see :mod:`diffuseq.outputs`), with each seed file's SHA-256 and
    wall time. Returns the meta file's path.
    """
    device = next(model.parameters()).device
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
            records = decode_range(model, sampler, vocab, data, mine, seed, batch_size, device, autocast_dtype,
                                   clamp, show_progress=rank == 0)
            gathered = dist_util.all_gather_objects(records)
            seconds = time.perf_counter() - started
            if rank == 0:
                text = "".join(json.dumps(rec) + "\n" for part in gathered for rec in part)
                out_file = outputs.add_seed(out_dir, name, meta, seed, text, seconds, n)
                logger.info("seed %d: %d lines in %.1f s -> %s", seed, n, seconds, out_file)
        if rank == 0:
            outputs.finish_meta(out_dir, name, meta)
    return outputs.meta_path(out_dir, name)
