"""The Python API: load a checkpoint (ours or DiffuSeq's) and generate text, in a notebook or a script.

    from diffuseq import Seq2SeqDiffusion

    model = Seq2SeqDiffusion.from_checkpoint("diffusion_models/run/ema_0.9999_050000.pt")
    texts = model.generate(["how can i be a good geologist?"], respacing="adp_20", seeds=[10]).first
    per_seed = model.generate(sources, respacing="adp_20", seeds=[10, 11]).texts   # one list per seed
    steps = model.generate(sources, respacing="adp_20", return_x0=True).x0[0]     # every x_0 of the first seed
    v2 = model.generate(sources, sampler="dpm-solver-v2", solver_steps=10).first  # DiffuSeq-v2's DPM-Solver

The command-line decoder (``sample_seq2seq.py``) is a layer over this class.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .config import TrainConfig
from .config.decoding import DEFAULT_SEED
from .data import Seq2SeqData, encode_sources
from .data.vocab import Vocabulary, decode_text
from .errors import UserError
from .loading import load_checkpoint
from .metrics.clean import SpecialTokens, clean_recover
from .runtime import autocast_dtype, compile_model, keep_freed_memory_on
from .samplers import ExampleNoise, NearestEmbedding, ReverseSampler, SamplerConfig, create_sampler, denoise

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """What ``generate`` returns, per seed in the order given: the texts (one per source) and, with
    ``return_x0``, the x_0 prediction of every step (each ``[len(sources), seq_len, hidden_dim]``, as the
    step used it, clamped; empty lists without it)."""

    seeds: list[int]
    texts: list[list[str]]
    x0: list[list[torch.Tensor]]

    @property
    def first(self) -> list[str]:
        """The texts of the first seed (the only one by default)."""
        return self.texts[0]


def clean_text(text: str, vocab: Vocabulary) -> str:
    """Generated text without the vocabulary's start, end, separator and pad tokens, as ``diffuseq-eval``
    cleans it, with single spaces between words."""
    return " ".join(clean_recover(text, SpecialTokens(*vocab.markers)).split())


class Seq2SeqDiffusion:
    """A trained denoiser with its vocabulary and diffusion settings, ready to decode.

    ``dtype`` is the network's autocast (fp32, bf16, fp16; fp16 runs on a CPU too, slowly); the
    nearest-word distances of clamping are float32 whatever it is. ``compile`` runs the network
    through ``torch.compile``.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, vocab: Vocabulary, device: torch.device,
                 dtype: str = "fp32", checkpoint: Path | None = None, compile: bool = False) -> None:
        self.model, self.config, self.vocab, self.device = model, config, vocab, device
        self.checkpoint = checkpoint
        self.dtype = dtype
        self.network = compile_model(model) if compile else model
        self.clamp = NearestEmbedding(model.word_embedding.weight.detach().float())

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None,
                        dtype: str = "fp32", compile: bool = False) -> "Seq2SeqDiffusion":
        """Load ``modelNNNNNN.pt`` / ``ema_<rate>_NNNNNN.pt`` with the ``training_args.json`` and vocabulary
        of its folder; ``device`` defaults to CUDA when available; ``dtype`` is the network's autocast."""
        device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        config, vocab, model = load_checkpoint(Path(path), device)
        return cls(model, config, vocab, device, dtype, Path(path), compile)

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps the model was trained with."""
        return self.config.diffusion_steps

    @property
    def denoise_rate(self) -> float:
        """DiffuSeq-v2's absorbing rate of a DDPM decode: the training ``denoise_rate`` of a model trained with
        ``denoise``, else 0 (v2's decoder reads it from training_args.json too)."""
        return self.config.denoise_rate if self.config.denoise else 0.0

    def sampling(self, **settings: object) -> SamplerConfig:
        """The decoding settings over this model's schedule (and DiffuSeq-v2 absorbing rate, :attr:`denoise_rate`):
        :class:`diffuseq.samplers.SamplerConfig` with its defaults for what ``settings`` (``respacing``, ``eta``,
        ``clamp_step``, ``top_p``, ``clip_denoised``, ``sigma_small``, ``sampler``, ``solver_steps``) leaves out."""
        return SamplerConfig(self.num_timesteps, self.config.noise_schedule, denoise_rate=self.denoise_rate,
                             **settings)

    @torch.inference_mode()
    def decode_data(self, data: Seq2SeqData, sampler: ReverseSampler, seed: int, indices: range | None = None,
                    batch_size: int = 64, show_progress: bool = False,
                    trajectory: list[torch.Tensor] | None = None) -> list[dict[str, str]]:
        """Decode examples ``indices`` (default: all) of ``data`` with ``seed``: one record per example, in
        input order, as DiffuSeq writes them (``recover``, ``reference``, ``source``).

        Each example's noise comes from its own generator seeded by (seed, example index), so the
        text does not depend on ``batch_size`` or on which process decodes it. ``trajectory`` (if
        given) receives each step's x_0 prediction of all the examples, in order.
        """
        keep_freed_memory_on(self.device)
        indices = indices if indices is not None else range(len(data))
        starts = range(indices.start, indices.stop, batch_size)
        bar = None
        if show_progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=len(starts) * sampler.num_steps, desc=f"seed {seed}", unit="step", dynamic_ncols=True)
        dtype = autocast_dtype(self.dtype)
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()
        records, steps = [], []
        for start in starts:
            stop = min(start + batch_size, indices.stop)
            ids, mask = data.rows(slice(start, stop))
            ids, mask = ids.to(self.device), mask.to(self.device)
            x_start = self.model.get_embeds(ids)
            noise = ExampleNoise(seed, range(start, stop), tuple(x_start.shape[1:]), self.device)
            batch_steps: list[torch.Tensor] | None = [] if trajectory is not None else None
            with autocast:
                x0 = denoise(self.network, sampler, x_start, mask, noise, self.clamp,
                             on_step=bar.update if bar is not None else None, trajectory=batch_steps)
                tokens = self.model.get_logits(x0).argmax(dim=-1)
            if batch_steps is not None:
                steps.append(batch_steps)
            for row_ids, row_tokens, row_mask in zip(ids.tolist(), tokens.tolist(), mask.tolist()):
                src_len = len(row_mask) - sum(row_mask)
                records.append({"recover": decode_text(self.vocab, row_tokens[src_len:]),
                                "reference": decode_text(self.vocab, row_ids[src_len:]),
                                "source": decode_text(self.vocab, row_ids[:src_len])})
        if bar is not None:
            bar.close()
        if trajectory is not None and steps:
            trajectory.extend(torch.cat([batch[i] for batch in steps]).float().cpu() for i in range(len(steps[0])))
        return records

    def generate(self, sources: Sequence[str], sampling: SamplerConfig | None = None, *,
                 seeds: Sequence[int] = (DEFAULT_SEED,), batch_size: int = 64, return_x0: bool = False,
                 raw: bool = False, **settings: object) -> Generation:
        """Generate one text per source and seed: clean text (no ``[CLS]``/``[SEP]``/``[PAD]``), or with ``raw``
        the decoded tokens as DiffuSeq's ``recover`` field holds them.

        The decoding settings are ``sampling`` (over this model's schedule, e.g. from :meth:`sampling` or
        :meth:`DecodeConfig.sampling`) or, without it, keywords for it (see :meth:`sampling`; its defaults
        are ``sample_seq2seq.py``'s, as the seed is). With ``return_x0`` the result also holds every step's
        x_0 prediction. Sources are encoded as DiffuSeq encodes the source side; one longer than about half
        of ``seq_len`` is truncated (with a warning).
        """
        if sampling is None:
            sampling = self.sampling(**settings)
        elif settings:
            raise TypeError("generate takes the decoding settings as a SamplerConfig or as keywords, not both")
        process = (self.num_timesteps, self.config.noise_schedule, self.denoise_rate)
        if (sampling.num_train_timesteps, sampling.noise_schedule, sampling.denoise_rate) != process:
            raise UserError(f"the decoding settings are for T = {sampling.num_train_timesteps} "
                            f"({sampling.noise_schedule}, denoise_rate {sampling.denoise_rate}); this model has "
                            f"T = {self.num_timesteps} ({self.config.noise_schedule}, denoise_rate "
                            f"{self.denoise_rate}): build them with its sampling()")
        data = encode_sources(list(sources), self.vocab, self.config.seq_len)
        if data.truncation is not None and data.truncation.truncated:
            logger.warning("%d of %d sources are longer than this model's seq_len %d holds with a target as long: "
                           "their ends are dropped, as DiffuSeq drops them", data.truncation.truncated,
                           data.truncation.pairs, self.config.seq_len)
        sampler = create_sampler(sampling)
        texts, x0s = [], []
        for seed in seeds:
            trajectory: list[torch.Tensor] | None = [] if return_x0 else None
            records = self.decode_data(data, sampler, seed, batch_size=batch_size, trajectory=trajectory)
            texts.append([record["recover"] if raw else clean_text(record["recover"], self.vocab)
                          for record in records])
            x0s.append(trajectory or [])
        return Generation(list(seeds), texts, x0s)
