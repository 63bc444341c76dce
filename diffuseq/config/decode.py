"""The decoding configuration: one dataclass for every decode setting, its command line, and the copy
saved in each decode's meta file (``DecodeConfig.load`` reads it back)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .cli import build_parser, option, take_local_rank
from ..data.pairs import SPLITS
from ..errors import UserError
from ..samplers import SAMPLERS, SamplerConfig

DTYPES = ("fp32", "bf16", "fp16")
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
    sampler: str = option("", "reverse process (default: ddim when --eta >= 0, else ddpm)", choices=("", *SAMPLERS))
    eta: float = option(-1.0, "-1: DDPM; in [0, 1]: DDIM with this eta")
    clamp_step: int = option(0, "clamp x_0 to the nearest embedding while the respaced step index i >= K (i counts "
                                "down from N-1 to 0): 0 clamps at every step")
    top_p: float = option(0.0, "DiffuSeq's noise truncation: DDPM step noise redrawn until |z| <= top_p (0: off)")
    clip_denoised: bool = option(False, "clip the x_0 prediction to [-1, 1] (DiffuSeq's flag)")
    sigma_small: bool = option(False, "DDPM noise with the posterior variance instead of DiffuSeq's fixed-large one")
    batch_size: int = option(16, "examples per batch (the text does not depend on it)")
    seed2: int = option(105, "decoding seed (DiffuSeq's default 105)")
    seeds: str = option("", "comma-separated seeds (overrides --seed2); the model is loaded once")
    split: str = option("valid", "the data split to decode (DiffuSeq's default: valid)", choices=SPLITS)
    out_dir: str = option("generation_outputs", "outputs go to OUT_DIR/<checkpoint folder>/<checkpoint>.samples/")
    data_dir: str = option("", "override the training data folder")
    max_examples: int | None = option(None, "decode only the first N inputs")
    data_cache: str = option("", "folder of the tokenized data cache (default: <data_dir>/.diffuseq_cache, or "
                                 "~/.cache/diffuseq/ when the data folder is read-only); 'none': tokenize in memory")
    dtype: str = option("fp32", "autocast dtype of the network (fp16 runs on a CPU too, slowly); nearest-word "
                                "distances are float32 whatever it is", choices=DTYPES)
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
            raise UserError("--model_path is required (a modelNNNNNN.pt or ema_<rate>_NNNNNN.pt)")
        for name, default in BRIDGE_GAP_ONLY.items():
            if getattr(self, name) != default:
                raise UserError(f"--{name} {getattr(self, name)!r} is not supported: it drives Bridge-Gap's "
                                f"experimental sampling among nearest embeddings, not used in the paper's results; "
                                f"leave it at {default!r}")
        if self.batch_size < 1:
            raise UserError("--batch_size must be positive")
        if self.max_examples is not None and self.max_examples < 1:
            raise UserError(f"--max_examples must be positive, got {self.max_examples}")
        if self.raw_tokens and not self.input:
            raise UserError("--raw_tokens goes with --input (the jsonl files of a split keep DiffuSeq's raw recover "
                            "field)")
        if self.output and not self.input:
            raise UserError("--output goes with --input (a file of source lines)")
        if self.input and self.evaluate:
            raise UserError("--evaluate needs references: decode a split, not --input")
        SamplerConfig(eta=self.eta, clamp_step=self.clamp_step, top_p=self.top_p, sampler=self.sampler).check()
        if self.sampler == "ddim" and self.eta == -1:
            self.eta = 0.0  # DDIM with eta 0, named as a decode given --eta 0
        self.seed_list()

    def seed_list(self) -> list[int]:
        """``--seeds`` as integers (distinct, in 0..2**32-1 as numpy's seeds), else ``[--seed2]``."""
        if not self.seeds:
            seeds = [self.seed2]
        else:
            try:
                seeds = [int(s) for s in self.seeds.split(",")]
            except ValueError:
                raise UserError(f"--seeds must be comma-separated integers, e.g. 10,11,12; got {self.seeds!r}") \
                    from None
            if len(set(seeds)) < len(seeds):
                raise UserError(f"--seeds names a seed twice: {self.seeds!r}")
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


def parse_decode_args(argv: Sequence[str]) -> DecodeConfig:
    """Parse ``sample_seq2seq.py``'s command line into a validated config."""
    parser = build_parser(DecodeConfig, "Decode with a trained checkpoint: one jsonl file per seed of "
                                        "{\"recover\", \"reference\", \"source\"}.")
    cfg = DecodeConfig.from_dict(vars(parser.parse_args(take_local_rank(argv))))
    cfg.validate()
    return cfg
