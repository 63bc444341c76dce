"""Each custom CPU path of this project against the plain PyTorch formulation of the same maths, in one run.

    python bench/kernels_bench.py [--threads 1] [--repeats 20]

A ratio above 1 means the custom path loses on this CPU (it is then marked LOSES). The denormal
check runs the training loss's backward on inputs whose probabilities are tiny (the case that
made Intel CPUs tens of times slower) and on ordinary inputs: the ratio must stay near 1; the
script exits with 1 if it passes 2 (or if a custom path loses).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from diffuseq.samplers import NearestEmbedding, blocked_argmin
from diffuseq.model import EncoderConfig, TransformerNetModel, attention_with_dropout
from diffuseq.model import kernels
from diffuseq.runtime import keep_freed_memory
from diffuseq.training.cross_entropy import token_cross_entropy


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``fn`` after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def cross_entropy_pair(scale: float):
    """Forward + backward of the rounding loss: the fused kernel and lm_head + F.cross_entropy."""
    torch.manual_seed(0)
    head = torch.nn.Linear(128, 8000)
    hidden = (torch.randn(32, 64, 128) * scale).requires_grad_()
    ids = torch.randint(0, 8000, (32, 64))

    def fused():
        token_cross_entropy(hidden, head, ids).mean().backward()

    def plain():
        F.cross_entropy(head(hidden).flatten(0, 1), ids.flatten()).backward()

    return fused, plain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    rows = []

    fused, plain = cross_entropy_pair(1.0)
    rows.append(("rounding loss fwd+bwd (fused blocks vs F.cross_entropy)", timed(fused, args.repeats),
                 timed(plain, args.repeats)))
    q, k, v = (torch.randn(32, 4, 64, 64, requires_grad=True) for _ in range(3))
    rows.append(("attention with dropout fwd+bwd (vs scaled_dot_product_attention)",
                 timed(lambda: attention_with_dropout(q, k, v, 0.1).sum().backward(), args.repeats),
                 timed(lambda: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1).sum().backward(),
                       args.repeats)))
    linear = torch.nn.Linear(256, 1024)
    h = torch.randn(32, 64, 256)
    h_grad = h.clone().requires_grad_()
    rows.append(("linear fwd+bwd, training, 2048 x 256 -> 1024 (oneDNN vs F.linear, i.e. MKL)",
                 timed(lambda: kernels.linear(h_grad, linear.weight, linear.bias).sum().backward(), args.repeats),
                 timed(lambda: F.linear(h_grad, linear.weight, linear.bias).sum().backward(), args.repeats)))
    rows.append(("dropout fwd+bwd, 2048 x 256 (uniform >= p vs F.dropout's bernoulli_)",
                 timed(lambda: kernels.dropout(h_grad, 0.1, True).sum().backward(), args.repeats),
                 timed(lambda: F.dropout(h_grad, 0.1, True).sum().backward(), args.repeats)))
    torch.manual_seed(0)
    model = TransformerNetModel(8000, 128, 128, 0.1, EncoderConfig(4, 256, 4, 1024)).eval()
    packed = kernels.PackedLinear()
    with torch.inference_mode():
        rows.append(("linear + GELU, decoding (packed oneDNN vs F.linear, F.gelu)",
                     timed(lambda: packed(h, (linear.weight, linear.bias), "gelu"),
                           args.repeats),
                     timed(lambda: F.gelu(F.linear(h, linear.weight, linear.bias)), args.repeats)))
        embeddings = torch.randn(8000, 128) * 0.5
        points = torch.randn(1024, 128) * 0.5
        nearest = NearestEmbedding(embeddings)
        norms = embeddings.pow(2).sum(-1)
        rows.append(("nearest embedding, 1024 x 8000 (row blocks, two-pass argmin vs addmm + argmin)",
                     timed(lambda: nearest.nearest_ids(points), args.repeats),
                     timed(lambda: torch.addmm(norms, points, embeddings.t(), alpha=-2).argmin(-1), args.repeats)))
        scores = torch.randn(1024, 8064)
        rows.append(("argmin over 8064 columns (two-pass vs torch.argmin)",
                     timed(lambda: blocked_argmin(scores), args.repeats), timed(lambda: scores.argmin(-1), args.repeats)))
        xt, t = torch.randn(32, 64, 128), torch.full((32,), 500.0)
        target = (torch.arange(64) >= 32).expand(32, -1)
        rows.append(("denoiser forward, half the rows source (last layer on target rows vs all rows)",
                     timed(lambda: model(xt, t, target), args.repeats), timed(lambda: model(xt, t), args.repeats)))

    print(f"{'path':<90} {'custom ms':>10} {'plain ms':>9} {'ratio':>6}")
    failed = False
    for name, mine, theirs in rows:
        ratio = mine / theirs
        failed |= ratio > 1.0
        print(f"{name:<90} {mine:>10.2f} {theirs:>9.2f} {ratio:>6.2f}{'  LOSES' if ratio > 1.0 else ''}")

    print("\ndenormal check: the rounding loss's fwd+bwd on inputs with tiny probabilities / on ordinary inputs")
    ordinary_fused, ordinary_plain = cross_entropy_pair(1.0)
    tiny_fused, tiny_plain = cross_entropy_pair(40.0)
    for name, tiny, ordinary in (("fused kernel", tiny_fused, ordinary_fused),
                                 ("lm_head + F.cross_entropy", tiny_plain, ordinary_plain)):
        ratio = timed(tiny, args.repeats) / timed(ordinary, args.repeats)
        print(f"  {name:<28} {ratio:5.2f}x{'  TOO SLOW (denormals?)' if ratio > 2 and name == 'fused kernel' else ''}")
        if name == "fused kernel":
            failed |= ratio > 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
