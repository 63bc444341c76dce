"""Decode a split with a trained checkpoint: one jsonl file per seed of {"recover", "reference", "source"}.

    python sample_seq2seq.py --model_path CKPT_DIR/ema_0.9999_050000.pt --step 2000 --batch_size 16 \
        --seed2 10 --split test --out_dir generation_outputs --decode_respacing adp_20
    torchrun --nproc_per_node=4 sample_seq2seq.py ... --seeds 10,11,12     # ranks split the inputs
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from diffuseq import checkpoint as ckpt  # noqa: E402
from diffuseq import dist_util  # noqa: E402
from diffuseq.config import TrainConfig, _ArgumentParser  # noqa: E402
from diffuseq.data import load_split  # noqa: E402
from diffuseq.decoding import (DiffusionSampler, ExampleNoise, NearestEmbedding, SamplerConfig,  # noqa: E402
                               check_step_flag, denoise)
from diffuseq.errors import UserError, run_cli  # noqa: E402
from diffuseq.train_loop import create_model, load_model_weights  # noqa: E402
from diffuseq.vocab import Vocabulary, load_vocab_from  # noqa: E402

logger = logging.getLogger("sample_seq2seq")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _ArgumentParser(description=__doc__.splitlines()[0],
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


def load_checkpoint(model_path: Path, device: torch.device) -> tuple[TrainConfig, Vocabulary, torch.nn.Module]:
    """The training config, vocabulary and model of a checkpoint file (ours or DiffuSeq's)."""
    if not model_path.is_file():
        raise UserError(f"--model_path {model_path} does not exist")
    ckpt.parse_step(model_path)
    folder = model_path.parent
    cfg = TrainConfig.load(folder / "training_args.json")
    if any((folder / name).is_file() for name in ("vocab.txt", "vocab.json")):
        vocab = load_vocab_from(folder)
    elif cfg.vocab not in ("bert", "train") and Path(cfg.vocab).exists():
        vocab = load_vocab_from(Path(cfg.vocab))
    else:
        raise UserError(f"{folder} holds no vocabulary (vocab.txt or vocab.json) and the training one "
                        f"({cfg.vocab!r}) is not available")
    if cfg.vocab_size and cfg.vocab_size != vocab.size:
        raise UserError(f"the vocabulary in {folder} has {vocab.size} entries but training_args.json says "
                        f"vocab_size {cfg.vocab_size}")
    model = create_model(cfg, vocab.size)
    state = ckpt.safe_load(model_path)
    if isinstance(state, dict) and "word_embedding.weight" in state \
            and state["word_embedding.weight"].shape[0] != vocab.size:
        raise UserError(f"the vocabulary ({vocab.size} entries) does not match the checkpoint "
                        f"({state['word_embedding.weight'].shape[0]} embeddings)")
    load_model_weights(model, state, model_path)
    model.to(device).eval().requires_grad_(False)
    return cfg, vocab, model


def strip_pad(text: str) -> str:
    return " ".join(tok for tok in text.split(" ") if tok and tok != "[PAD]")


def main() -> int:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", datefmt="%H:%M:%S")
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
    n, world, rank = len(data), dist_util.world_size(), dist_util.rank()
    per_rank = math.ceil(n / world)
    mine = range(rank * per_rank, min(n, (rank + 1) * per_rank))
    autocast_dtype = DTYPES[args.dtype]
    if autocast_dtype is torch.float16 and device.type != "cuda":
        raise UserError("--dtype fp16 needs a CUDA device; use bf16 on a CPU")
    embeddings = model.word_embedding.weight.detach()
    clamp = NearestEmbedding(embeddings.to(autocast_dtype) if autocast_dtype else embeddings) \
        if args.clamp_step >= 0 else None
    out_dir = Path(args.out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        logger.info("decoding %d %s examples with %d denoising steps (respacing %r, %s, %s) on %d process(es)",
                    n, args.split, sampler.num_steps, respacing or "all", "DDIM" if args.eta >= 0 else "DDPM",
                    args.dtype, world)
    run_info = {"model_path": str(model_path), "split": args.split, "examples": n, "processes": world,
                "denoising_steps": sampler.num_steps, "sampler": sampler.config.to_dict(),
                "batch_size": args.batch_size, "dtype": args.dtype, "device": str(device), "seeds": {}}
    base = f"step{cfg.diffusion_steps}_eta{args.eta}_respace_{respacing or 'none'}_{args.split}"
    for seed in args.seed_list:
        started = time.perf_counter()
        records = decode_range(model, sampler, vocab, data, mine, seed, args.batch_size, device, autocast_dtype,
                               clamp, show_progress=rank == 0)
        gathered = dist_util.all_gather_objects(records)
        seconds = time.perf_counter() - started
        if rank == 0:
            out_file = out_dir / f"seed{seed}_{base}.json"
            lines = [json.dumps(rec, ensure_ascii=False) for part in gathered for rec in part]
            ckpt.atomic_write_text("\n".join(lines) + "\n", out_file)
            run_info["seeds"][seed] = {"file": out_file.name, "wall_seconds": round(seconds, 3),
                                       "examples_per_second": round(n / seconds, 3)}
            logger.info("seed %d: %d lines in %.1f s -> %s", seed, len(lines), seconds, out_file)
    if rank == 0:
        ckpt.atomic_write_text(json.dumps(run_info, indent=2) + "\n", out_dir / f"decode_{base}.meta.json")
    return 0


@torch.inference_mode()
def decode_range(model: torch.nn.Module, sampler: DiffusionSampler, vocab: Vocabulary, data, indices: range,
                 seed: int, batch_size: int, device: torch.device, autocast_dtype: torch.dtype | None,
                 clamp: NearestEmbedding | None, show_progress: bool = False) -> list[dict[str, str]]:
    """Decode the examples ``indices`` of ``data`` with ``seed``; records in input order."""
    starts = range(indices.start, indices.stop, batch_size)
    bar = None
    if show_progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(starts), desc=f"seed {seed}", unit="batch", dynamic_ncols=True)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext())
    records = []
    for start in starts:
        stop = min(start + batch_size, indices.stop)
        ids = data.input_ids[start:stop].to(device)
        mask = data.input_mask[start:stop].to(device)
        x_start = model.get_embeds(ids)
        noise = ExampleNoise(seed, range(start, stop), tuple(x_start.shape[1:]), device)
        with autocast:
            x0 = denoise(model, sampler, x_start, mask, noise, clamp)
            tokens = model.get_logits(x0).argmax(dim=-1)
        for row_ids, row_tokens, row_mask in zip(ids.tolist(), tokens.tolist(), mask.tolist()):
            src_len = len(row_mask) - sum(row_mask)
            records.append({"recover": strip_pad(vocab.decode(row_tokens[src_len:])),
                            "reference": strip_pad(vocab.decode(row_ids[src_len:])),
                            "source": strip_pad(vocab.decode(row_ids[:src_len]))})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return records


if __name__ == "__main__":
    run_cli(main)
