"""The decoding configuration: one dataclass for every decode setting, its command line, the copy saved in
each decode's meta file (``DecodeConfig.load`` reads it back), and the one mapping of its flags to the
reverse process (``DecodeConfig.sampling``, with DiffuSeq's ``--step`` rule)."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .cli import build_parser, option, take_local_rank
from ..data.pairs import SPLITS
from ..errors import UserError
from ..runtime import PRECISIONS
from ..samplers import SAMPLERS, SamplerConfig

logger = logging.getLogger(__name__)

DEFAULT_SEED = 105  # DiffuSeq's decoding seed (--seed2), also the API's
# Bridge-Gap's decoding flags for its rounding experiments: accepted at their defaults only
BRIDGE_GAP_ONLY = {"top_k": 0, "top_l": 0.0, "tau": 1.0, "noised_l": 0.0, "scale_end": "", "clamp_skip": -1, "p_d": ""}
_BRIDGE_GAP_HELP = "Bridge-Gap's rounding experiment; only its default is supported"


@dataclass
class DecodeConfig:
    """Everything a decode depends on; DiffuSeq's and Bridge-Gap's flag names and defaults."""

    model_path: str = option("", "modelNNNNNN.pt or ema_<rate>_NNNNNN.pt (its folder holds training_args.json)")
    step: int | None = option(None, "the model's T (as in the paper's command); S < T alone means DiffuSeq's "
                                    "S-step DDIM")
    decode_respacing: str = option("", "'', N, a,b,c, [a,b,c], ddimN, x2_N or adp_N")
    sampler: str = option("", "reverse process (default: ddim when --eta >= 0, else ddpm); dpm-solver-v2: "
                              "DiffuSeq-v2's DPM-Solver decode", choices=("", *SAMPLERS))
    solver_steps: int | None = option(None, "dpm-solver-v2: its number of steps (network evaluations) on its "
                                            "time-uniform grid, DiffuSeq-v2's --step (default 10); with "
                                            "--decode_respacing its grid is the kept steps instead")
    eta: float = option(-1.0, "-1: DDPM; in [0, 1]: DDIM with this eta")
    clamp_step: int = option(0, "clamp x_0 to the nearest embedding while the respaced step index i >= K (i counts "
                                "down from N-1 to 0): 0 clamps at every step")
    top_p: float = option(0.0, "DiffuSeq's noise truncation: DDPM step noise redrawn until |z| <= top_p (0: off)")
    clip_denoised: bool = option(False, "clip the x_0 prediction to [-1, 1] (DiffuSeq's flag)")
    sigma_small: bool = option(False, "DDPM noise with the posterior variance instead of DiffuSeq's fixed-large one")
    batch_size: int = option(16, "examples per batch (the text does not depend on it)")
    seed2: int = option(DEFAULT_SEED, "decoding seed (DiffuSeq's default 105)")
    seeds: str = option("", "comma-separated seeds (overrides --seed2); the model is loaded once")
    split: str = option("valid", "the data split to decode (DiffuSeq's default: valid)", choices=SPLITS)
    out_dir: str = option("generation_outputs", "outputs go to OUT_DIR/<checkpoint folder>/<checkpoint>.samples/")
    data_dir: str = option("", "override the training data folder")
    max_examples: int | None = option(None, "decode only the first N inputs")
    data_cache: str = option("", "folder of the tokenized data cache (default: <data_dir>/.diffuseq_cache, or "
                                 "~/.cache/diffuseq/ when the data folder is read-only); 'none': tokenize in memory")
    dtype: str = option("fp32", "autocast dtype of the network (fp16 runs on a CPU too, slowly); nearest-word "
                                "distances are float32 whatever it is", choices=PRECISIONS)
    tf32: bool = option(True, "on CUDA with --dtype fp32: the network's matmuls in TF32 (as torch 1.9, which the "
                              "paper used); false: full float32. No effect on a CPU")
    compile: bool = option(False, "torch.compile the network (the first batch takes longer while it compiles)")
    input: str = option("", "a text file of source lines to decode instead of a split (see --output)")
    output: str = option("", "with --input: the file of generated lines (several seeds: one file per seed, "
                                "<name>.seed<S><suffix>); default: standard output")
    raw_tokens: bool = option(False, "with --input: write the decoded tokens as they are ([CLS] ... [SEP], as the "
                                     "jsonl's recover field) instead of clean text")
    evaluate: bool = option(False, "score the outputs after decoding (BLEU, ROUGE-L, dist-1, length, diversity) "
                                   "into decode_<name>.eval.json")
    top_k: int = option(0, _BRIDGE_GAP_HELP)
    top_l: float = option(0.0, _BRIDGE_GAP_HELP)
    tau: float = option(1.0, _BRIDGE_GAP_HELP)
    noised_l: float = option(0.0, _BRIDGE_GAP_HELP)
    scale_end: str = option("", _BRIDGE_GAP_HELP)
    clamp_skip: int = option(-1, _BRIDGE_GAP_HELP)
    p_d: str = option("", _BRIDGE_GAP_HELP)

    def validate(self) -> None:
        """Reject settings that cannot work, with one clear message."""
        if not self.model_path:
            raise UserError("`model_path` is required (a modelNNNNNN.pt or ema_<rate>_NNNNNN.pt)")
        for name, default in BRIDGE_GAP_ONLY.items():
            if getattr(self, name) != default:
                raise UserError(f"`{name}` {getattr(self, name)!r} is not supported: it drives Bridge-Gap's "
                                f"experimental sampling among nearest embeddings, not used in the paper's results; "
                                f"leave it at {default!r}")
        if self.batch_size < 1:
            raise UserError("`batch_size` must be positive")
        if self.max_examples is not None and self.max_examples < 1:
            raise UserError(f"`max_examples` must be positive, got {self.max_examples}")
        if self.raw_tokens and not self.input:
            raise UserError("`raw_tokens` goes with `input` (the jsonl files of a split keep DiffuSeq's raw recover "
                            "field)")
        if self.output and not self.input:
            raise UserError("`output` goes with `input` (a file of source lines)")
        if self.input and self.evaluate:
            raise UserError("`evaluate` needs references: decode a split, not `input`")
        # --sampler ddim alone is DDIM with eta 0: named (file names, meta) as a decode given --eta 0
        self.eta = SamplerConfig(respacing=self.decode_respacing, eta=self.eta, clamp_step=self.clamp_step,
                                 top_p=self.top_p, sampler=self.sampler, solver_steps=self.solver_steps).resolve().eta
        self.seed_list()

    def sampling(self, num_train_timesteps: int, noise_schedule: str, denoise_rate: float = 0.0) -> SamplerConfig:
        """The reverse process these flags name for a model of ``num_train_timesteps`` steps (T),
        ``noise_schedule`` and DiffuSeq-v2 absorbing rate ``denoise_rate`` (the checkpoint's, see
        :attr:`Seq2SeqDiffusion.denoise_rate`): ``--step`` reconciled with T (:func:`check_step_flag`), the
        sampler resolved."""
        respacing, eta = check_step_flag(self.step, num_train_timesteps, self.decode_respacing, self.eta,
                                         self.sampler)
        return SamplerConfig(num_train_timesteps, noise_schedule, respacing, eta, self.clamp_step,
                             self.clip_denoised, self.top_p, self.sigma_small, self.sampler, self.solver_steps,
                             denoise_rate).resolve()

    def seed_list(self) -> list[int]:
        """``--seeds`` as integers (distinct, in 0..2**32-1 as numpy's seeds), else ``[--seed2]``."""
        if not self.seeds:
            seeds = [self.seed2]
        else:
            try:
                seeds = [int(s) for s in self.seeds.split(",")]
            except ValueError:
                raise UserError(f"`seeds` must be comma-separated integers, e.g. 10,11,12; got {self.seeds!r}") \
                    from None
            if len(set(seeds)) < len(seeds):
                raise UserError(f"`seeds` names a seed twice: {self.seeds!r}")
        for seed in seeds:
            if not 0 <= seed < 2**32:
                raise UserError(f"decoding seeds must be in 0..{2**32 - 1}, got {seed}")
        return seeds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DecodeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, meta_file: str | Path) -> "DecodeConfig":
        """The configuration saved in a decode's meta file."""
        try:
            return cls.from_dict(json.loads(Path(meta_file).read_text())["config"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{meta_file} holds no decode configuration ({err})") from None


def check_step_flag(step: int | None, num_train_timesteps: int, respacing: str, eta: float,
                    sampler: str = "") -> tuple[str, float]:
    """Reconcile ``--step`` with the model's T, ``--decode_respacing`` and ``--sampler``; return (respacing, eta).

    ``--step T`` (or none) keeps the respacing. ``--step S < T`` without a respacing is
    DiffuSeq's DDIM with S steps (eta 0 unless ``--eta`` is given), over S evenly spaced steps
    ending at t = 0: DiffuSeq's own loop (stride T // S from T - 1) never reaches t = 0.
    Anything else conflicts and is an error, as is ``--step S < T`` with a sampler other than DDIM.
    """
    if step is None or step == num_train_timesteps:
        return respacing, eta
    if step > num_train_timesteps or step < 1:
        raise UserError(f"`step` {step} is outside the model's 1..{num_train_timesteps} diffusion steps")
    if sampler not in ("", "ddim"):
        steps_flag = "`solver_steps` or `decode_respacing`" if sampler == "dpm-solver-v2" else "`decode_respacing`"
        raise UserError(f"`step` {step} < T = {num_train_timesteps} is DiffuSeq's {step}-step DDIM, not `sampler` "
                        f"{sampler}: pass `step` {num_train_timesteps} (or none) and the steps as {steps_flag}")
    if respacing:
        raise UserError(f"`step` {step} conflicts with `decode_respacing` {respacing!r}: the model has "
                        f"T = {num_train_timesteps}; pass `step` {num_train_timesteps} with a respacing, "
                        f"or `step` S alone for DiffuSeq's S-step DDIM")
    eta = max(eta, 0.0)
    logger.info("--step %d < T = %d: DDIM (eta %g) over %d evenly spaced steps ending at t = 0, as DiffuSeq "
                "(whose own stride loop never reaches t = 0)", step, num_train_timesteps, eta, step)
    return str(step), eta


def parse_decode_args(argv: Sequence[str]) -> DecodeConfig:
    """Parse ``sample_seq2seq.py``'s command line into a validated config."""
    parser = build_parser(DecodeConfig, "Decode with a trained checkpoint: one jsonl file per seed of "
                                        "{\"recover\", \"reference\", \"source\"}.")
    cfg = DecodeConfig.from_dict(vars(parser.parse_args(take_local_rank(argv))))
    cfg.validate()
    return cfg
