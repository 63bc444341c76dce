"""Decode a split with a trained checkpoint: one jsonl file per seed of {"recover", "reference", "source"}.

    python sample_seq2seq.py --model_path CKPT_DIR/ema_0.9999_050000.pt --step 2000 --batch_size 16 \
        --seed2 10 --split test --out_dir generation_outputs --decode_respacing adp_20
    torchrun --nproc_per_node=4 sample_seq2seq.py ... --seeds 10,11,12     # ranks split the inputs
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
from diffuseq.config import CliArgumentParser  # noqa: E402
from diffuseq.data import load_split  # noqa: E402
from diffuseq.decoding import (DiffusionSampler, NearestEmbedding, SamplerConfig, check_step_flag,  # noqa: E402
                               decode_to_files, load_checkpoint)
from diffuseq.errors import UserError, run_cli  # noqa: E402
from diffuseq.runtime import start_command  # noqa: E402

logger = logging.getLogger("sample_seq2seq")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = CliArgumentParser(description=__doc__.splitlines()[0],
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_path", required=True, help="modelNNNNNN.pt or ema_<rate>_NNNNNN.pt")
    parser.add_argument("--step", type=int, default=None,
                        help="the model's T (as in the paper's command); S < T alone means S evenly spaced steps")
    parser.add_argument("--decode_respacing", default="", help="'', N, a,b,c, ddimN or adp_N")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed2", type=int, default=123, help="decoding seed")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (overrides --seed2); model loaded once")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out_dir", default="generation_outputs")
    parser.add_argument("--data_dir", default="", help="override the training data folder")
    parser.add_argument("--max_examples", type=int, default=None, help="decode only the first N inputs")
    parser.add_argument("--clamp_step", type=int, default=0,
                        help="0: clamp x_0 to the nearest embedding at every step; K > 0: only below timestep K; "
                             "-1: never")
    parser.add_argument("--eta", type=float, default=-1.0, help="-1: DDPM; >= 0: DDIM with this eta")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="autocast dtype of the network")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError("--batch_size must be positive")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()] or [args.seed2]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    return args


def main() -> int:
    start_command()
    args = parse_args(sys.argv[1:])
    device = dist_util.setup()
    try:
        return decode(args, device)
    finally:
        dist_util.cleanup()


def decode(args: argparse.Namespace, device: torch.device) -> int:
    model_path = Path(args.model_path)
    cfg, vocab, model = load_checkpoint(model_path, device)
    respacing = check_step_flag(args.step, cfg.diffusion_steps, args.decode_respacing)
    sampler = DiffusionSampler(SamplerConfig(cfg.diffusion_steps, cfg.noise_schedule, respacing, args.eta,
                                             args.clamp_step))
    data = load_split(Path(args.data_dir or cfg.data_dir), args.split, vocab, cfg.seq_len, args.max_examples)
    autocast_dtype = DTYPES[args.dtype]
    if autocast_dtype is torch.float16 and device.type != "cuda":
        raise UserError("--dtype fp16 needs a CUDA device; use bf16 on a CPU")
    embeddings = model.word_embedding.weight.detach()
    clamp = NearestEmbedding(embeddings.to(autocast_dtype) if autocast_dtype else embeddings) \
        if args.clamp_step >= 0 else None
    out_dir = Path(args.out_dir)
    if dist_util.rank() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        logger.info("decoding %d %s examples with %d denoising steps (respacing %r, %s, %s) on %d process(es)",
                    len(data), args.split, sampler.num_steps, respacing or "all",
                    "DDIM" if args.eta >= 0 else "DDPM", args.dtype, dist_util.world_size())
    name = f"step{cfg.diffusion_steps}_eta{args.eta}_respace_{respacing or 'none'}_{args.split}"
    decode_to_files(model, sampler, vocab, data, args.seed_list, out_dir, name, args.batch_size, autocast_dtype,
                    clamp, {"model_path": str(model_path), "split": args.split, "dtype": args.dtype})
    return 0


if __name__ == "__main__":
    run_cli(main)
