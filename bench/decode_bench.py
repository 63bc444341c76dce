"""Decoding speed: milliseconds per denoising step (network and clamping), examples/s and peak memory.

Default configuration (the issue's reference point): BERT encoder 4 layers / 256 / 4 heads / 1024,
seq_len 64, hidden_dim 128, T 2000 sqrt, an 8,000-word vocabulary, batch 32, clamping at every step,
one torch thread, fp32. The first half of each sequence is the source (``--source_len``): the last
layer and the clamping run on the target positions only, so the source share moves the figures.

    python bench/decode_bench.py --respacing adp_20
    python bench/decode_bench.py --respacing adp_20 --dtype bf16
    python bench/decode_bench.py --respacing ""            # all 2000 steps
    python bench/decode_bench.py --source_len 16           # a quarter of each sequence is source
    python bench/decode_bench.py --respacing 10 --sampler dpm++ --self_cond
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from typing import Any, Callable

import torch
from common import peak_memory_mb

from diffuseq.samplers import SAMPLERS, ExampleNoise, NearestEmbedding, SamplerConfig, create_sampler, denoise
from diffuseq.model import EncoderConfig, TransformerNetModel
from diffuseq.runtime import PRECISIONS, autocast_dtype, keep_freed_memory


class Timed:
    """Calls ``inner`` and adds its seconds, the device synchronised before and after, to ``timings[key]``."""

    def __init__(self, inner: Callable[..., Any], timings: dict[str, float], key: str, device: torch.device) -> None:
        self.inner, self.timings, self.key, self.device = inner, timings, key, device
        self.self_cond = getattr(inner, "self_cond", False)  # the reverse chain asks the network

    def __call__(self, *args: Any) -> Any:
        self._sync()
        started = time.perf_counter()
        out = self.inner(*args)
        self._sync()
        self.timings[self.key] = self.timings.get(self.key, 0.0) + time.perf_counter() - started
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def time_decode(args: argparse.Namespace) -> dict[str, float]:
    """Decode one batch ``args.repeats`` times after a warm-up decode; the median run's timings."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = TransformerNetModel(args.vocab_size, args.hidden_dim, args.hidden_dim, 0.1,
                                EncoderConfig(args.layers, args.hidden, args.heads, args.ffn),
                                self_cond=args.self_cond).to(device).eval()
    model.requires_grad_(False)
    sampler = create_sampler(SamplerConfig(args.diff_steps, "sqrt", args.respacing, sampler=args.sampler))
    dtype = autocast_dtype(args.dtype)
    embeddings = model.word_embedding.weight.detach()
    clamp = None if args.no_clamp else NearestEmbedding(embeddings.to(dtype) if dtype else embeddings)
    ids = torch.randint(5, args.vocab_size, (args.batch, args.seq_len), device=device)
    source_len = args.seq_len // 2 if args.source_len is None else args.source_len
    mask = (torch.arange(args.seq_len, device=device) >= source_len).long().expand(args.batch, -1)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    runs = []
    with torch.inference_mode(), autocast:
        x_start = model.get_embeds(ids)
        for repeat in range(args.repeats + 1):
            timings: dict[str, float] = {}
            noise = ExampleNoise(repeat, range(args.batch), tuple(x_start.shape[1:]), device)
            timed_clamp = None if clamp is None else Timed(clamp, timings, "clamp", device)
            started = time.perf_counter()
            denoise(Timed(model, timings, "network", device), sampler, x_start, mask, noise, timed_clamp)
            total = time.perf_counter() - started
            if repeat:  # the first decode warms up
                runs.append((total, timings))
    total, timings = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    return {"total": total, "steps": sampler.num_steps, "source_len": source_len, "network": timings["network"],
            "clamp": timings.get("clamp", 0.0), "peak_mb": peak_memory_mb(device), "device": str(device)}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--respacing", default="adp_20")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--hidden_dim", type=int, default=128)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--diff_steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--source_len", type=int, default=None,
                        help="source positions at the start of each sequence (default: half of seq_len)")
    parser.add_argument("--dtype", choices=PRECISIONS, default="fp32")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    parser.add_argument("--self_cond", action="store_true", help="a self-conditioned denoiser")
    parser.add_argument("--no_clamp", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes of the batch (median reported)")
    return parser


def main() -> None:
    args = parser().parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    r = time_decode(args)
    steps, total = r["steps"], r["total"]
    print(f"config: {args.layers} layers / {args.hidden} / {args.heads} heads / {args.ffn}, seq_len {args.seq_len}, "
          f"hidden_dim {args.hidden_dim}, T {args.diff_steps}, vocab {args.vocab_size}, batch {args.batch}, "
          f"{r['source_len']} source positions, "
          f"{args.sampler}{' self_cond' if args.self_cond else ''}, "
          f"respacing {args.respacing or 'all'} ({steps} steps), "
          f"clamp {'off' if args.no_clamp else 'every step'}, "
          f"{args.dtype}, {args.threads} thread(s), {r['device']}")
    print(f"per denoising step: {1000 * total / steps:.1f} ms (network {1000 * r['network'] / steps:.1f} ms, "
          f"clamping {1000 * r['clamp'] / steps:.1f} ms)")
    print(f"whole decode of the batch: {total:.2f} s, {args.batch / total:.1f} examples/s, "
          f"peak memory {r['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
