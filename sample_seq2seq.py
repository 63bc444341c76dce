"""Decode a split with a trained checkpoint: one jsonl file per seed of {"recover", "reference", "source"}.

    python sample_seq2seq.py --model_path CKPT_DIR/ema_0.9999_050000.pt --step 2000 --batch_size 16 \
        --seed2 10 --split test --out_dir generation_outputs --decode_respacing adp_20
    torchrun --nproc_per_node=4 sample_seq2seq.py ... --seeds 10,11,12     # ranks split the inputs

Outputs go where DiffuSeq puts them: <out_dir>/<checkpoint folder>/<checkpoint file>.samples/, one
file per seed named as Bridge-Gap names it (seed<S>_step<step>_eta<eta>_respace_<spacing>_<split>_...json).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from diffuseq import dist_util  # noqa: E402
from diffuseq.config import CliArgumentParser, _str2bool  # noqa: E402
from diffuseq.data import load_split  # noqa: E402
from diffuseq.decoding import (  # noqa: E402
    DiffusionSampler,
    NearestEmbedding,
    SamplerConfig,
    check_step_flag,
    decode_to_files,
    output_name,
    samples_dir,
)
from diffuseq.errors import UserError, run_cli  # noqa: E402
from diffuseq.model import checkpoints as ckpt  # noqa: E402
from diffuseq.model.checkpoints import load_checkpoint  # noqa: E402
from diffuseq.runtime import keep_freed_memory_on, start_command  # noqa: E402

logger = logging.getLogger("sample_seq2seq")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Bridge-Gap's decoding flags for its rounding experiments: accepted at their defaults only
BRIDGE_GAP_ONLY = {"top_k": (int, 0), "top_l": (float, 0.0), "tau": (float, 1.0), "noised_l": (float, 0.0),
                   "scale_end": (str, ""), "clamp_skip": (int, -1), "p_d": (str, "")}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = CliArgumentParser(description=__doc__.splitlines()[0],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_path", required=True, help="modelNNNNNN.pt or ema_<rate>_NNNNNN.pt")
    parser.add_argument("--step", type=int, default=None,
                        help="the model's T (as in the paper's command); S < T alone means DiffuSeq's S-step DDIM")
    parser.add_argument("--decode_respacing", default="", help="'', N, a,b,c, [a,b,c], ddimN, x2_N or adp_N")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed2", type=int, default=105, help="decoding seed (DiffuSeq's default 105)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (overrides --seed2); model loaded once")
    parser.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    parser.add_argument("--out_dir", default="generation_outputs")
    parser.add_argument("--data_dir", default="", help="override the training data folder")
    parser.add_argument("--max_examples", type=int, default=None, help="decode only the first N inputs")
    parser.add_argument("--clamp_step", type=int, default=0,
                        help="clamp x_0 to the nearest embedding while the respaced step index i >= K (i counts "
                             "down from N-1 to 0): 0 clamps at every step")
    parser.add_argument("--eta", type=float, default=-1.0, help="-1: DDPM; in [0, 1]: DDIM with this eta")
    parser.add_argument("--top_p", type=float, default=0.0,
                        help="DiffuSeq's noise truncation: DDPM step noise redrawn until |z| <= top_p (0: off)")
    parser.add_argument("--clip_denoised", type=_str2bool, nargs="?", const=True, default=False,
                        help="clip the x_0 prediction to [-1, 1] (DiffuSeq's flag)")
    parser.add_argument("--sigma_small", type=_str2bool, nargs="?", const=True, default=False,
                        help="DDPM noise with the posterior variance instead of DiffuSeq's fixed-large variance")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="autocast dtype of the network")
    for name, (kind, default) in BRIDGE_GAP_ONLY.items():
        parser.add_argument(f"--{name}", type=kind, default=default,
                            help=f"Bridge-Gap's rounding experiment; only {default!r} is supported")
    args = parser.parse_args(argv)
    for name, (_, default) in BRIDGE_GAP_ONLY.items():
        if getattr(args, name) != default:
            raise UserError(f"--{name} {getattr(args, name)!r} is not supported: it drives Bridge-Gap's experimental "
                            f"sampling among nearest embeddings, not used in the paper's results; leave it at "
                            f"{default!r}")
    if args.batch_size < 1:
        raise UserError("--batch_size must be positive")
    if args.max_examples is not None and args.max_examples < 1:
        raise UserError(f"--max_examples must be positive, got {args.max_examples}")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()] or [args.seed2]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    return args


def main() -> int:
    start_command()
    args = parse_args(sys.argv[1:])
    device = dist_util.setup()
    keep_freed_memory_on(device)
    try:
        return decode(args, device)
    finally:
        dist_util.cleanup()


def decode(args: argparse.Namespace, device: torch.device) -> int:
    model_path = Path(args.model_path)
    out_root = Path(args.out_dir)
    if out_root.exists() and not out_root.is_dir():
        raise UserError(f"--out_dir {out_root} is a file, not a folder")
    cfg, vocab, model = load_checkpoint(model_path, device)
    respacing, eta = check_step_flag(args.step, cfg.diffusion_steps, args.decode_respacing, args.eta)
    sampler = DiffusionSampler(SamplerConfig(cfg.diffusion_steps, cfg.noise_schedule, respacing, eta, args.clamp_step,
                                             args.clip_denoised, args.top_p, args.sigma_small))
    data = load_split(Path(args.data_dir or cfg.data_dir), args.split, vocab, cfg.seq_len, args.max_examples)
    autocast_dtype = DTYPES[args.dtype]
    if autocast_dtype is torch.float16 and device.type != "cuda":
        raise UserError("--dtype fp16 needs a CUDA device; use bf16 on a CPU")
    embeddings = model.word_embedding.weight.detach()
    clamp = NearestEmbedding(embeddings.to(autocast_dtype) if autocast_dtype else embeddings)
    out_dir = samples_dir(Path(args.out_dir), model_path)
    extras = {"clampstep": args.clamp_step or None, "clip": args.clip_denoised or None,
              "sigmasmall": args.sigma_small or None, "ddimeta": eta if eta != args.eta else None,
              "dtype": args.dtype if args.dtype != "fp32" else None, "first": args.max_examples}
    name = output_name(args.step if args.step is not None else cfg.diffusion_steps, args.eta, args.decode_respacing,
                       args.split, args.top_p, {k: v for k, v in extras.items() if v is not None})
    if dist_util.rank() == 0:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create output folder {out_dir}: {err.strerror}") from None
        logger.info("decoding %d %s examples with %d denoising steps (respacing %r, %s, %s) on %d process(es) -> %s",
                    len(data), args.split, sampler.num_steps, respacing or "all",
                    f"DDIM eta {eta}" if sampler.is_ddim else "DDPM", args.dtype, dist_util.world_size(), out_dir)
    settings = {"split": args.split, "data_dir": str(Path(args.data_dir or cfg.data_dir).resolve()),
                "max_examples": args.max_examples, "dtype": args.dtype}
    decode_to_files(model, sampler, vocab, data, args.seed_list, out_dir, name, args.batch_size, autocast_dtype,
                    clamp, {"checkpoint": ckpt.file_identity(model_path), "settings": settings})
    return 0


if __name__ == "__main__":
    run_cli(main)
