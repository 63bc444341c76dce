"""The training configuration: one dataclass, its command line, and ``training_args.json``.

Field names are DiffuSeq's (``diffusion_steps``, ``batch_size``, ...), so a
DiffuSeq ``training_args.json`` loads as it is; the paper's command-line
spellings (``--diff_steps``, ``--bsz``) are accepted as aliases.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..diffusion.schedules import NOISE_SCHEDULES
from .cli import build_parser, expand_app, option, take_local_rank
from ..errors import UserError
from ..runtime import PRECISIONS
from ..data.pairs import MAX_SEQ_LEN, MIN_SEQ_LEN
from ..model import EncoderConfig
from ..diffusion.penalty import PENALTIES, check_penalty_settings
from ..diffusion.timesteps import TIMESTEP_DISTRIBUTIONS, check_timestep_distribution

BERT_BASE_NAMES = ("bert-base-uncased", "bert-base-cased", "bert-base")
# the weight of `mean_embed`'s norm that DiffuSeq-v2 always trains with (its --reg_rate never reaches the loss)
V2_REG_RATE = 0.01

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Every training argument; serialised to ``training_args.json`` in the checkpoint folder.

    Frozen: ``parse_train_args`` builds it once; a run's settings are new configs made from it
    (``dataclasses.replace``).
    """

    # data and vocabulary
    dataset: str = option("", "dataset name (used in the default checkpoint folder name)")
    data_dir: str = option("", "folder with train.jsonl / valid.jsonl / test.jsonl")
    vocab: str = option("bert", "'bert' (bert-base-uncased from the local HF cache), 'train' (build a WordPiece "
                              "vocabulary from the training split) or a path to a vocab file / tokenizer folder. "
                              "training_args.json keeps DiffuSeq's meaning: 'bert' for any WordPiece vocabulary "
                              "(read from the folder named by config_name), else the word-list path; the flag "
                              "itself is saved as vocab_source")
    vocab_size: int = option(8000, "size of the vocabulary built by --vocab train (the actual size is saved)")
    seq_len: int = option(128, "length of src [SEP] trg sequences, padding included")
    data_cache: str = option("", "folder of the tokenized data cache (each split tokenized once, then memory-mapped "
                                 "by every rank and run; default: <data_dir>/.diffuseq_cache, or ~/.cache/diffuseq/ "
                                 "when the data folder is read-only); 'none': tokenize in memory at every start")
    # diffusion
    diffusion_steps: int = option(2000, "number of diffusion steps T", "--diff_steps")
    noise_schedule: str = option("sqrt", "noise schedule", choices=NOISE_SCHEDULES)
    schedule_sampler: str = option("lossaware", "timestep sampling: uniform, lossaware (importance sampling by the "
                                              "loss), fixstep (DiffuSeq's: later half at half weight)",
                                 choices=TIMESTEP_DISTRIBUTIONS)
    # model
    hidden_dim: int = option(128, "word embedding size (the space diffusion runs in)")
    hidden_t_dim: int = option(128, "sinusoidal timestep embedding size")
    config_name: str = option("bert-base-uncased", "encoder size: bert-base-uncased or a BERT config.json (or folder)")
    num_layers: int | None = option(None, "override the encoder's number of layers")
    num_heads: int | None = option(None, "override the encoder's number of attention heads")
    hidden_size: int | None = option(None, "override the encoder's hidden size")
    intermediate_size: int | None = option(None, "override the encoder's feed-forward size")
    dropout: float = option(0.1, "dropout of the embeddings and encoder layers")
    # optimisation
    lr: float = option(1e-4, "learning rate (see --lr_schedule)")
    lr_schedule: str = option("", "'linear': decay to 0 over --learning_steps (DiffuSeq); 'constant' (Bridge-Gap, "
                                  "whose annealing is commented out); default: constant with --simi_penalty, else "
                                  "linear", choices=("", "linear", "constant"))
    batch_size: int = option(2048, "batch size per process, as in DiffuSeq (the global batch is this times the "
                                 "number of processes)", "--bsz")
    microbatch: int = option(64, "examples per forward/backward pass (-1: the whole batch); as in DiffuSeq, the "
                               "gradient is the sum of the microbatches' mean losses")
    learning_steps: int = option(320000, "total optimizer steps")
    weight_decay: float = option(0.0, "AdamW weight decay")
    gradient_clipping: float = option(-1.0, "clip the gradient norm to this value (<= 0: off)")
    ema_rate: str = option("0.9999", "comma-separated EMA rates")
    use_fp16: bool = option(False, "DiffuSeq's flag: the same as --precision fp16")
    precision: str = option("fp32", "autocast precision: fp32 (off), bf16, fp16 (with loss scaling; on a CPU too, "
                                    "slowly)", choices=PRECISIONS)
    tf32: bool = option(True, "on CUDA in fp32: matmuls in TF32 (torch 1.9, which the paper used, did so by default); "
                              "false: full float32. No effect on a CPU or with --precision bf16/fp16")
    compile: bool = option(False, "torch.compile the denoiser (the first steps take longer while it compiles)")
    seed: int = option(101, "random seed")
    max_bad_steps: int = option(10, "stop after this many consecutive steps with a non-finite loss or gradient")
    # distance penalty post-training (Tang et al. 2023)
    simi_penalty: str = option("", "distance penalty ('' = off)", choices=("", *PENALTIES))
    simi_lambda: float = option(-2.0, "penalty weight: <= 0 for l2* (penalty -lambda * distance), >= 0 for kl, either "
                                     "sign for cosine (as Bridge-Gap)")
    simi_step: int = option(10, "neighbour offset: t +- simi_step for l2 / cosine, teacher t - simi_step for kl")
    simi_noise: float = option(0.05, "noise-level window for l2_noise / l2_noise_random")
    # our addition: self-conditioning (Chen et al. 2022)
    self_cond: bool = option(False, "self-conditioning: the denoiser also reads its previous x_0 estimate (a "
                                  "detached estimate half of the time in training, zeros otherwise; the previous "
                                  "step's when decoding). Adds one linear layer; fixed by the checkpoint")
    # DiffuSeq-v2 (its flag names and meanings)
    learned_mean_embed: bool = option(False, "DiffuSeq-v2: a learned soft absorbing state, the [hidden_dim] vector "
                                             "`mean_embed` that the noise on target tokens is centred on "
                                             "(x_t = sqrt(ab) (x_0 - m) + sqrt(1 - ab) eps + m). Adds one "
                                             "parameter; fixed by the checkpoint")
    denoise: bool = option(False, "DiffuSeq-v2's discrete noise: each target token of x_t is replaced by the "
                                  "absorbing state with probability denoise_rate x sqrt(1 - ab_t) in training "
                                  "(denoise_rate x sqrt(beta_t) per DDPM decoding step); needs --learned_mean_embed")
    denoise_rate: float = option(0.2, "DiffuSeq-v2: the absorbing probability's scale, in [0, 1] (their train.sh: "
                                      "0.5)")
    reg_rate: float = option(V2_REG_RATE, "DiffuSeq-v2: weight of the L2 norm (not squared) of `mean_embed` added "
                                          "to each example's loss (with --learned_mean_embed). DiffuSeq-v2 ignores "
                                          "its own flag and always uses 0.01, so a DiffuSeq-v2 training_args.json "
                                          "is read with 0.01 whatever it stores; here the flag applies")
    # bookkeeping
    checkpoint_path: str = option("", "output folder (default: a name from the main flags under diffusion_models/)")
    resume_checkpoint: str = option("", "modelNNNNNN.pt / ema_<rate>_NNNNNN.pt to start from ('none': from scratch), "
                                      "or 'auto' for the newest complete checkpoint in --checkpoint_path. In the "
                                      "same folder the run continues exactly; from another folder (post-training) "
                                      "it takes the weights and EMA and starts a fresh optimizer, as DiffuSeq")
    save_interval: int = option(50000, "save a checkpoint every this many steps (and at the end)")
    log_interval: int = option(20, "log the losses every this many steps")
    eval_interval: int = option(1000, "compute the validation loss every this many steps (<= 0: never)")
    notes: str = option("", "free text, part of the default folder name")
    wandb: bool = option(False, "log to Weights & Biases (also when WANDB_MODE is set)")
    use_plm_init: str = option("no", "'bert': start the word embeddings, position embeddings and encoder from BERT "
                                   "weights (the folder named by --config_name, or bert-base-uncased in the local "
                                   "Hugging Face cache)", choices=("no", "bert"))
    # DiffuSeq / Bridge-Gap settings that this project supports at one value only (see FIXED_SETTINGS)
    timestep_respacing: str = option("", "fixed: training uses all T steps (respacing is a decoding option)")
    learn_sigma: bool = option(False, "fixed: False")
    predict_xstart: bool = option(True, "fixed: True")
    rescale_timesteps: bool = option(True, "fixed: True")
    sigma_small: bool = option(False, "fixed: False (a training key of DiffuSeq; see sample_seq2seq.py --sigma_small)")
    rescale_learned_sigmas: bool = option(False, "fixed: False")
    use_kl: bool = option(False, "fixed: False")
    emb_scale_factor: float = option(1.0, "fixed: 1.0")
    fp16_scale_growth: float = option(0.001, "fixed: 0.001 (fp16 here uses torch's GradScaler)")
    near_step: int = option(0, "Bridge-Gap's near/far penalty: not supported (0)")
    far_step: int = option(0, "Bridge-Gap's near/far penalty: not supported (0)")
    near_lambda: float = option(0.0, "Bridge-Gap's near/far penalty: not supported (0)")
    far_lambda: float = option(0.0, "Bridge-Gap's near/far penalty: not supported (0)")
    # the flags given on the command line (not saved): what a checkpoint's settings may not contradict
    given: frozenset = field(default=frozenset(), repr=False, compare=False, metadata={"internal": True})

    # -- derived values -----------------------------------------------------

    def validate(self) -> None:
        """Reject settings that cannot work, with one clear message."""
        for name, (value, why) in FIXED_SETTINGS.items():
            if getattr(self, name) != value:
                raise UserError(f"`{name}` {getattr(self, name)} is not supported: {why}")
        if self.use_fp16 and self.precision not in ("fp32", "fp16"):
            raise UserError(f"`use_fp16` (fp16) contradicts `precision` {self.precision}")
        if self.diffusion_steps < 2:
            raise UserError(f"`diffusion_steps` must be at least 2, got {self.diffusion_steps}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise UserError(f"unknown `noise_schedule` {self.noise_schedule!r}; choose one of "
                            f"{', '.join(NOISE_SCHEDULES)}")
        check_timestep_distribution(self.schedule_sampler)
        for name in ("batch_size", "learning_steps", "save_interval", "log_interval", "hidden_dim", "hidden_t_dim",
                     "seq_len", "vocab_size", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"`{name}` must be positive, got {getattr(self, name)}")
        if self.microbatch == 0 or self.microbatch < -1:
            raise UserError(f"`microbatch` must be positive (or -1 for the whole batch), got {self.microbatch}")
        if not 0 <= self.lr < float("inf"):
            raise UserError(f"`lr` must be a finite non-negative number, got {self.lr}")
        if not 0 <= self.weight_decay < float("inf"):
            raise UserError(f"`weight_decay` must be a finite number >= 0, got {self.weight_decay}")
        if math.isnan(self.gradient_clipping) or self.gradient_clipping == float("inf"):
            raise UserError(f"`gradient_clipping` must be a finite number (<= 0: off), got {self.gradient_clipping}")
        if not MIN_SEQ_LEN <= self.seq_len <= MAX_SEQ_LEN:
            raise UserError(f"`seq_len` must be in {MIN_SEQ_LEN}..{MAX_SEQ_LEN} (one token of source and of target "
                            f"with their start/end tokens and the [SEP], at most the encoder's positions), "
                            f"got {self.seq_len}")
        check_penalty_settings(self.simi_penalty, self.simi_lambda, self.simi_step, self.simi_noise,
                               self.diffusion_steps)
        if not 0 <= self.dropout < 1:
            raise UserError(f"`dropout` must be in [0, 1), got {self.dropout}")
        if not 0 <= self.denoise_rate <= 1:
            raise UserError(f"`denoise_rate` must be in [0, 1], got {self.denoise_rate}")
        if not 0 <= self.reg_rate < float("inf"):
            raise UserError(f"`reg_rate` must be a finite number >= 0, got {self.reg_rate}")
        if self.denoise and not self.learned_mean_embed:
            raise UserError("`denoise` absorbs tokens into the learned mean embedding: it needs `learned_mean_embed`")
        self.ema_rates()
        self.encoder_config()

    def normalised(self) -> "TrainConfig":
        """DiffuSeq's spellings in this project's terms (after ``validate``): ``--use_fp16`` as ``--precision fp16``,
        ``--resume_checkpoint none`` as ''."""
        return dataclasses.replace(self, precision="fp16" if self.use_fp16 else self.precision,
                                   resume_checkpoint="" if self.resume_checkpoint.lower() == "none"
                                   else self.resume_checkpoint)

    def resolved_lr_schedule(self) -> str:
        """``--lr_schedule``, or its default: constant for post-training with a penalty (Bridge-Gap), else linear."""
        return self.lr_schedule or ("constant" if self.simi_penalty else "linear")

    def ema_rates(self) -> list[str]:
        """The EMA rates as written in the file names (``ema_<rate>_NNNNNN.pt``): distinct, each in [0, 1)."""
        rates = [r.strip() for r in str(self.ema_rate).split(",")]
        for rate in rates:
            try:
                ok = 0.0 <= float(rate) < 1.0
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"`ema_rate` must be comma-separated numbers in [0, 1), got {self.ema_rate!r}")
        if len({float(rate) for rate in rates}) < len(rates):
            raise UserError(f"`ema_rate` names a rate twice: {self.ema_rate!r}")
        return rates

    def encoder_config(self, folder: Path | None = None) -> EncoderConfig:
        """The BERT encoder size: ``config_name`` with any explicit overrides.

        ``config_name`` is bert-base-uncased, or a BERT ``config.json`` (or a folder holding
        one). A checkpoint ``folder`` holding its own ``config.json`` (written by training
        here) is used when ``config_name`` points to a folder that has since moved.
        """
        if self.config_name in BERT_BASE_NAMES or not self.config_name:
            base = EncoderConfig()
        elif Path(self.config_name).exists():
            base = EncoderConfig.from_bert_config(self.config_name)
        elif folder is not None and (Path(folder) / "config.json").is_file():
            base = EncoderConfig.from_bert_config(Path(folder) / "config.json")
        else:
            raise UserError(f"`config_name` {self.config_name!r} is neither bert-base-uncased nor a BERT config.json")
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

    @classmethod
    def field_names(cls) -> list[str]:
        """The settings saved in ``training_args.json``."""
        return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]

    def to_json(self, wordpiece: bool) -> str:
        """The text of ``training_args.json``, in DiffuSeq's meaning of each key.

        ``vocab`` is ``bert`` for a ``wordpiece`` vocabulary (DiffuSeq reads it from ``config_name``'s
        folder), else the word-list path; the ``--vocab`` flag itself goes to ``vocab_source`` (after
        ``use_plm_init``, where it has always been written). ``from_dict`` reads it back.
        """
        values: dict[str, Any] = {}
        for name in self.field_names():
            values[name] = "bert" if name == "vocab" and wordpiece else getattr(self, name)
            if name == "use_plm_init":
                values["vocab_source"] = self.vocab
        return json.dumps(values, indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A config from a ``training_args.json`` dict (ours or DiffuSeq's); unknown keys are ignored.

        ``vocab`` is the ``--vocab`` flag: our files' ``vocab_source``, else (DiffuSeq's) ``vocab``.
        """
        known = set(cls.field_names())
        values = dict(values)
        if values.get("vocab_source"):
            values["vocab"] = values["vocab_source"]
        if "diff_steps" in values and "diffusion_steps" not in values:
            values["diffusion_steps"] = values["diff_steps"]
        if "bsz" in values and "batch_size" not in values:
            values["batch_size"] = values["bsz"]
        if values.get("ema_rate") is not None:
            values["ema_rate"] = str(values["ema_rate"])
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read ``training_args.json``: ours, or DiffuSeq's (v1 or v2, whose ``reg_rate`` is read as the 0.01 it
        trained with: v2 never applies its flag)."""
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
        if "vocab_source" not in values and values.get("reg_rate", V2_REG_RATE) != V2_REG_RATE:
            logger.warning("%s (DiffuSeq's) says reg_rate %s, which DiffuSeq-v2 ignores: its model was trained with "
                           "%s, used here", path, values["reg_rate"], V2_REG_RATE)
            values["reg_rate"] = V2_REG_RATE
        return cls.from_dict(values)


FIXED_SETTINGS: dict[str, tuple[Any, str]] = {
    "timestep_respacing": ("", "training runs on all T steps; respace when decoding (`decode_respacing`)"),
    "learn_sigma": (False, "the denoiser predicts x_0 only (DiffuSeq's setting)"),
    "predict_xstart": (True, "the denoiser predicts x_0 (DiffuSeq's setting)"),
    "rescale_timesteps": (True, "timesteps are always rescaled to [0, 1000) (DiffuSeq's setting)"),
    "sigma_small": (False, "it is unused in training (for decoding see sample_seq2seq.py `sigma_small`)"),
    "rescale_learned_sigmas": (False, "sigmas are not learned"),
    "use_kl": (False, "the loss is DiffuSeq's mse + rounding + tT"),
    "emb_scale_factor": (1.0, "DiffuSeq never applies it to a TransformerNetModel"),
    "fp16_scale_growth": (0.001, "`use_fp16` uses torch's GradScaler, which sets its own growth"),
    "near_step": (0, "Bridge-Gap's near/far penalty is experimental and not in the paper; use `simi_penalty`"),
    "far_step": (0, "Bridge-Gap's near/far penalty is experimental and not in the paper; use `simi_penalty`"),
    "near_lambda": (0.0, "Bridge-Gap's near/far penalty is experimental and not in the paper; use `simi_penalty`"),
    "far_lambda": (0.0, "Bridge-Gap's near/far penalty is experimental and not in the paper; use `simi_penalty`"),
}


LOG_TERMS_HELP = (
    "The log, every --log_interval steps: 'step N/total (percent) | terms | lr | samples/s | elapsed, ETA', the "
    "terms averaged over the steps since the last line. loss: what is minimised per example (DiffuSeq: mse + "
    "rounding + tT; with --simi_penalty: (mse + mse_nb + 2 rounding + 2 tT + penalty) / 2; either + reg with "
    "--learned_mean_embed), before the "
    "timestep sampler's importance weights; mse: squared error of the x_0 prediction at the sampled step t; "
    "mse_nb: the same at the neighbour step t' (--simi_penalty); penalty: the distance between the two "
    "predictions weighted by --simi_lambda (l2: -simi_lambda x mean squared distance); rounding: cross-entropy "
    "of the word embeddings' own logits (keeps them decodable); tT: mean square of x_T's mean (keeps the "
    "embeddings small); reg: --reg_rate x the L2 norm of the learned mean embedding (DiffuSeq-v2); "
    "grad_norm: the "
    "gradient norm before clipping; nll: cross-entropy of the predicted x_0 on the target tokens (first "
    "microbatch of the logging step, not optimised). 'step N validation:' lines give the same terms on the "
    "first 256 validation pairs.")


def parse_train_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse ``run_train.py``'s command line into a validated config."""
    parser = build_parser(TrainConfig, "Train (or post-train) a DiffuSeq diffusion model.")
    parser.epilog = LOG_TERMS_HELP
    given = vars(parser.parse_args(take_local_rank(expand_app(argv if argv is not None else sys.argv[1:]))))
    cfg = dataclasses.replace(TrainConfig.from_dict(given), given=frozenset(given))
    cfg.validate()
    return cfg.normalised()
