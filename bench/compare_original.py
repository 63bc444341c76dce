"""This project against the original code, side by side on this machine, in one run.

    python bench/compare_original.py --diffuseq /path/to/DiffuSeq --bridge-gap /path/to/Bridge_Gap_Diffusion \\
        [--original-python /path/to/venv/bin/python] [--rounds 2]

Times, for the configuration of ``bench/`` (BERT encoder 4 layers / 256 / 4 heads / 1024, seq_len 64,
hidden_dim 128, T 2000 sqrt, an 8,000-word vocabulary, batch 32, dropout 0.1, uniform timestep
sampling, one torch thread, fp32):
* a training step: DiffuSeq's ``TrainLoop.run_step`` against this project's ``Trainer.train_step``;
* a post-training step with the ``l2_noise_random`` penalty: Bridge-Gap's ``TrainLoop.run_step``;
* a denoising step of an ``adp_20`` decode with clamping: Bridge-Gap's ``p_sample_loop``.

The original code is imported from the given checkouts (never copied), in a separate process per
measurement, since both name their package ``diffuseq``; its Python (``--original-python``) needs
transformers 4.x. The rounds alternate the two implementations so that both see the same machine load.
Prints each figure's median over the rounds (min-max), and the ratio this project / original.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = dict(layers=4, hidden=256, heads=4, ffn=1024, seq_len=64, hidden_dim=128, vocab_size=8000, batch=32,
              diff_steps=2000)
TASKS = ("train", "post", "decode")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------- this project


def ours(task: str, steps: int, warmup: int) -> float:
    sys.path.insert(0, str(HERE))
    import torch
    from decode_bench import parser as decode_parser
    from decode_bench import time_decode
    from train_bench import bench
    from train_bench import parser as train_parser

    from diffuseq.runtime import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(1)
    if task == "decode":
        args = decode_parser().parse_args(["--respacing", "adp_20", "--repeats", "2"])
        result = time_decode(args)
        return result["total"] / result["steps"]
    args = train_parser().parse_args(["--warmup", str(warmup), "--steps", str(steps)])
    with tempfile.TemporaryDirectory() as tmp:
        return bench(args, task == "post", Path(tmp))["s_per_step"]


# ------------------------------------------------------------------------------------------- the original


def original_decode_step(diffusion, model, ids, mask, rounds: int, sync=lambda: None) -> float:
    """Seconds per denoising step of the original's ``p_sample_loop`` with clamping (Bridge-Gap's decode; their
    ``diffuseq`` must be the one imported) for ``model`` on ``ids`` / ``mask``: the median over ``rounds`` chains,
    the first left out; ``sync`` waits for the device."""
    from functools import partial
    from types import SimpleNamespace

    import torch
    from diffuseq.rounding import denoised_fn_round

    model.eval().requires_grad_(False)
    model_emb = torch.nn.Embedding(*model.word_embedding.weight.shape, _weight=model.word_embedding.weight.clone())
    round_args = SimpleNamespace(clamp_skip=-1, top_k=0, top_p=0.0, tau=1.0, scale_end="")
    times = []
    for _ in range(rounds):
        with torch.no_grad():
            x_start = model.get_embeds(ids)
            broad = mask.unsqueeze(-1).expand(x_start.shape)
            noised = torch.where(broad == 0, x_start, torch.randn_like(x_start))
            sync()
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                kwargs = dict(noise=noised, clip_denoised=False, model_kwargs={}, top_p=0.0, clamp_step=0,
                              clamp_first=True, mask=broad, x_start=x_start,
                              denoised_fn=partial(denoised_fn_round, round_args, model_emb))
                if "ddim_signal" in diffusion.p_sample_loop.__code__.co_varnames:
                    kwargs.update(gap=1, eta=-1.0, ddim_signal="")
                diffusion.p_sample_loop(model, x_start.shape, **kwargs)
            sync()
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:]) / diffusion.num_timesteps


def original(task: str, repo: Path, steps: int, warmup: int) -> float:
    import numpy as np
    import torch

    if "int" not in np.__dict__:  # their step_sample.py uses np.int, removed in numpy 1.24
        np.int = int  # type: ignore[attr-defined]
    sys.path.insert(0, str(repo))

    from diffuseq import gaussian_diffusion as gd
    from diffuseq.step_sample import UniformSampler
    from diffuseq.transformer_model import TransformerNetModel
    from diffuseq.utils import dist_util, logger

    torch.set_num_threads(1)
    torch.manual_seed(0)
    c = CONFIG
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps({
            "model_type": "bert", "hidden_size": c["hidden"], "num_hidden_layers": c["layers"],
            "num_attention_heads": c["heads"], "intermediate_size": c["ffn"], "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
            "layer_norm_eps": 1e-12, "type_vocab_size": 2, "vocab_size": c["vocab_size"]}))
        model = TransformerNetModel(input_dims=c["hidden_dim"], output_dims=c["hidden_dim"],
                                    hidden_t_dim=c["hidden_dim"], dropout=0.1, config_name=tmp,
                                    vocab_size=c["vocab_size"])
    ids = torch.randint(5, c["vocab_size"], (c["batch"], c["seq_len"]))
    mask = (torch.arange(c["seq_len"]) >= c["seq_len"] // 2).long().expand(c["batch"], -1).contiguous()
    betas = gd.get_named_beta_schedule("sqrt", c["diff_steps"])
    spacing = "adp_20" if task == "decode" else [c["diff_steps"]]
    with contextlib.redirect_stdout(io.StringIO()):
        diffusion = gd.SpacedDiffusion(use_timesteps=gd.space_timesteps(c["diff_steps"], spacing), betas=betas,
                                       rescale_timesteps=True, predict_xstart=True, learn_sigmas=False,
                                       sigma_small=False, use_kl=False, rescale_learned_sigmas=False)
    if task == "decode":
        return original_decode_step(diffusion, model, ids, mask, rounds=3)
    import train_util

    with contextlib.redirect_stdout(io.StringIO()):
        dist_util.setup_dist()
    logger.configure(dir=tempfile.mkdtemp(), format_strs=[])
    extra = {}
    if task == "post":
        extra = dict(simi_penalty="l2_noise_random", simi_lambda=-2.0, simi_step=10, simi_noise=0.05)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        loop = train_util.TrainLoop(model=model, diffusion=diffusion, data=None, batch_size=c["batch"],
                                    microbatch=c["batch"], lr=1e-4, ema_rate="0.9999", log_interval=10**9,
                                    save_interval=10**9, resume_checkpoint="none",
                                    schedule_sampler=UniformSampler(diffusion), learning_steps=10**6,
                                    checkpoint_path=tmp, eval_data=None, eval_interval=-1, **extra)

        class Wrapped(torch.nn.Module):  # what their losses reach as model.module (DDP on a GPU)
            def __init__(self, module):
                super().__init__()
                self.module = module

            def forward(self, *args, **kwargs):
                return self.module(*args, **kwargs)

        loop.ddp_model = Wrapped(model)
        model.train()
        times = []
        for step in range(warmup + steps):
            started = time.perf_counter()
            loop.run_step(ids, {"input_ids": ids, "input_mask": mask})
            loop.step += 1
            if step >= warmup:
                times.append(time.perf_counter() - started)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------- the run


def worker(args: argparse.Namespace) -> None:
    if args.worker == "ours":
        seconds = ours(args.task, args.steps, args.warmup)
    else:
        seconds = original(args.task, Path(args.repo), args.steps, args.warmup)
    print(json.dumps({"seconds": seconds}))


def measure(python: str, kind: str, task: str, repo: Path | None, args: argparse.Namespace) -> float:
    cmd = [python, __file__, "--worker", kind, "--task", task, "--steps", str(args.steps), "--warmup",
           str(args.warmup)] + (["--repo", str(repo)] if repo else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"{kind} {task} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffuseq", type=Path, help="checkout of Shark-NLP/DiffuSeq")
    parser.add_argument("--bridge-gap", type=Path, help="checkout of ZetangForward/Bridge_Gap_Diffusion")
    parser.add_argument("--original-python", default=sys.executable,
                        help="a Python that can import the original code (transformers 4.x)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--worker", choices=("ours", "original"), help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.diffuseq or not args.bridge_gap:
        parser.error("--diffuseq and --bridge-gap are required")
    repos = {"train": args.diffuseq, "post": args.bridge_gap, "decode": args.bridge_gap}
    labels = {"train": "training step, plain loss (s)", "post": "training step, l2_noise_random penalty (s)",
              "decode": "adp_20 denoising step, clamped (ms)"}
    originals = {"train": "DiffuSeq", "post": "Bridge-Gap", "decode": "Bridge-Gap"}
    times: dict[tuple[str, str], list[float]] = {}
    tasks = args.tasks.split(",")
    for _ in range(args.rounds):
        for task in tasks:
            times.setdefault((task, "original"), []).append(
                measure(args.original_python, "original", task, repos[task].resolve(), args))
            times.setdefault((task, "ours"), []).append(measure(sys.executable, "ours", task, None, args))
    print(f"CPU: {cpu_name()}, one torch thread, fp32; config: 4 layers / 256 / 4 heads / 1024, seq_len 64, "
          f"hidden_dim 128, T 2000 sqrt, 8,000-word vocabulary, batch 32, dropout 0.1; {args.rounds} rounds, "
          f"median (min-max)\n")
    print("| benchmark | original | this project | ratio |")
    print("|---|---|---|---|")
    for task in tasks:
        scale = 1000 if task == "decode" else 1

        def cell(values: list[float]) -> str:
            return (f"{scale * statistics.median(values):.3g} "
                    f"({scale * min(values):.3g}-{scale * max(values):.3g})")

        theirs, mine = times[(task, "original")], times[(task, "ours")]
        ratio = statistics.median(mine) / statistics.median(theirs)
        print(f"| {labels[task]} | {cell(theirs)} ({originals[task]}) | {cell(mine)} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
