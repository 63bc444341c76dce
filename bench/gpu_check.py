"""GPU acceptance check: the project's training, post-training and decoding on CUDA, and its speed.

    python bench/gpu_check.py [--diffuseq PATH] [--bridge-gap PATH] [--original-python PY] [--out DIR]
    python bench/gpu_check.py --device cpu --smoke      # the same checks at tiny size on a CPU (< 90 s)

``--smoke``: 2 layers of 32, seq_len 16, a 200-word vocabulary, 4 training steps (2 + 2 for the
resume), 8 test pairs with ``adp_4``; without ``--compile`` timings on a CPU, without the original
code, and check 6 is skipped on a CPU.

Runs on a machine with one or more NVIDIA GPUs (under 8 minutes on one H100), prints one
PASS / FAIL / SKIP line per check and a final table, and exits non-zero if a check fails. The
commands run as subprocesses (``run_train.py``, ``sample_seq2seq.py``, ``sys.executable``),
several at a time; their logs go to ``DIR/logs``. What each check proves:

1. precisions: 30 training steps of a small model (3 layers of 128, synthetic data from
   ``bench/common.py``) finish, with every logged loss finite, in ``--precision fp32 --tf32 false``,
   ``fp32`` (TF32 on CUDA), ``bf16`` and ``fp16`` (autocast with loss scaling).
2. exact resume: 10 steps, then the same folder continued to 20, give the same ``model000020.pt``
   and EMA, tensor for tensor (``torch.equal``), as 20 steps in one go, in fp16 (the loss scaler's
   state resumes) and fp32; the first half ends with a validation, which must not disturb the
   training stream. On a mismatch a second 20-step run tells a resume fault from a computation
   that is not deterministic.
3. post-training: the ``l2_noise_random`` distance penalty (lambda -2) in bf16, from the checkpoint
   of step 1 of another run: finishes, the penalty is logged, every loss is finite.
4. decoding: ``adp_20`` with each sampler (ddpm, ddim, dpm++) in each ``--dtype`` (fp32, bf16,
   fp16): each writes its jsonl, one record per test pair.
5. validation and the RNGs: ``Trainer.validation_loss`` leaves the CPU and CUDA generators as they
   were, and gives the same losses twice (its draws are its own).
6. two GPUs (skipped with fewer): NCCL training under ``torchrun --standalone --nproc_per_node=2``
   and ``python -m torch.distributed.launch --nproc_per_node=2 --use_env``; a decode under torchrun
   with 2 processes writes the same file, byte for byte, as 1 process.
7. timing, the paper's QQP configuration per GPU (BERT-base encoder 12 x 768 / 12 heads / 3072,
   seq_len 128, hidden_dim 128, a 30,522-word synthetic vocabulary, T 2000 sqrt, uniform timestep
   sampling, dropout 0.1): a training step at batch 64 (median of 10 after 3 warm-up steps) in
   fp32+TF32, bf16 and bf16 + ``--compile``, with tokens/s, model FLOPs utilisation and peak
   memory; an ``adp_20`` denoising step at batch 256 (fp32+TF32, bf16, bf16 + ``--compile``); in
   this process, through ``Trainer.train_step`` and ``Seq2SeqDiffusion`` with what ``--compile``
   runs (``diffuseq.runtime.compile_model``) and TF32 as ``--tf32 true`` sets it. With
   ``--diffuseq`` / ``--bridge-gap`` the original code's training step (DiffuSeq) and decoding step
   (Bridge-Gap) run on the same device in a subprocess of ``--original-python`` (which needs
   transformers 4.x), with TF32 on as torch 1.9 (the paper's) had it, and the ratios this project /
   original are printed.

MFU counts the matmul FLOPs of a step (forward + backward = 3 x forward): the up / down projections,
the time embedding, per layer Q, K, V, the attention products, the output and the FFN, and the
rounding loss's [tokens x hidden_dim x vocabulary] product, which is the tied lm_head (the logged
nll's lm_head runs on logging steps only, not on the timed ones); divided by the step time and the
GPU's dense bf16 / TF32 peak (n/a on an unknown device).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from common import peak_memory_mb, synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent
T = 2000
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# dense bf16 and TF32 FLOP/s by device name, the first match wins
PEAK_FLOPS = (("H100 PCIe", 756e12, 378e12), ("H100 NVL", 835e12, 418e12), ("H100", 989e12, 495e12),
              ("H200", 989e12, 495e12), ("A100", 312e12, 156e12))
LOG_TERMS = re.compile(r"step (\d+)(?:/\d+ \([\d.]+%\))? (?:\| (.*?) \| lr |validation: (.*)$)", re.MULTILINE)


@dataclass(frozen=True)
class Size:
    """A denoiser and its batch."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    seq_len: int
    hidden_dim: int
    vocab: int
    batch: int

    def flags(self, data: Path) -> list[str]:
        return [str(x) for x in (
            "--data_dir", data, "--vocab", data / "vocab.txt", "--seq_len", self.seq_len, "--hidden_dim",
            self.hidden_dim, "--hidden_t_dim", self.hidden_dim, "--num_layers", self.layers, "--hidden_size",
            self.hidden, "--num_heads", self.heads, "--intermediate_size", self.ffn, "--diff_steps", T,
            "--noise_schedule", "sqrt", "--bsz", self.batch, "--microbatch", self.batch)]

    def describe(self) -> str:
        return (f"{self.layers} layers / {self.hidden} / {self.heads} heads / {self.ffn}, seq_len {self.seq_len}, "
                f"hidden_dim {self.hidden_dim}, vocabulary {self.vocab:,}, T {T} sqrt")

    def train_flops(self) -> float:
        """Matmul FLOPs of one training step of the plain loss (forward + backward = 3 x forward)."""
        h, d, n = self.hidden, self.hidden_dim, self.seq_len
        per_token = 2 * (d * h + h * h) + 2 * (h * h + h * d)  # input_up_proj, output_down_proj
        per_token += self.layers * 2 * (4 * h * h + 2 * h * self.ffn)  # Q, K, V, attention output, FFN
        per_token += self.layers * 2 * 2 * n * h  # q k^T and probs v
        per_token += 2 * d * self.vocab  # the rounding loss: lm_head over every position
        per_example = 2 * (d * 4 * d + 4 * d * h)  # the time embedding's two linears
        return 3 * (self.batch * n * per_token + self.batch * per_example)


@dataclass(frozen=True)
class Plan:
    """How big and how long each check is."""

    model: Size  # checks 1-6
    pairs: int  # per split of the synthetic dataset
    steps: int  # training steps (checks 1, 3, 6)
    log_interval: int
    half: int  # check 2: steps before the restart
    examples: int  # test pairs decoded (checks 4, 6)
    respacing: str
    bench: Size  # check 7
    decode_batch: int
    warmup: int
    timed: int
    timeout: int  # seconds per command


FULL = Plan(Size(3, 128, 4, 512, 32, 32, 1000, 32), pairs=256, steps=30, log_interval=5, half=10, examples=64,
            respacing="adp_20", bench=Size(12, 768, 12, 3072, 128, 128, 30522, 64), decode_batch=256, warmup=3,
            timed=10, timeout=600)
SMOKE = Plan(Size(2, 32, 2, 64, 16, 16, 200, 8), pairs=64, steps=4, log_interval=1, half=2, examples=8,
             respacing="adp_4", bench=Size(2, 32, 2, 64, 16, 16, 200, 8), decode_batch=8, warmup=1, timed=3,
             timeout=120)


class Failed(Exception):
    """A check's verdict: FAIL, with the reason."""


class Skipped(Exception):
    """A check that does not apply here, with the reason."""


@dataclass
class Context:
    args: argparse.Namespace
    plan: Plan
    device: torch.device
    out: Path
    data: Path
    workers: int
    env: dict[str, str]
    timings: list[tuple[str, str, dict[str, float]]] = field(default_factory=list)  # (kind, label, figures)


# ------------------------------------------------------------------------------------------- commands


def train_cmd(ctx: Context, folder: Path, steps: int, *extra: str, launcher: list[str] | None = None) -> list[str]:
    """run_train.py on the check model: ``steps`` steps, validation at the end, a checkpoint at the end."""
    return [*(launcher or [sys.executable]), str(ROOT / "run_train.py"), *ctx.plan.model.flags(ctx.data),
            "--learning_steps", str(steps), "--save_interval", str(steps), "--eval_interval", str(steps),
            "--log_interval", str(ctx.plan.log_interval), "--checkpoint_path", str(folder), *extra]


def decode_cmd(ctx: Context, model: Path, out_dir: Path, sampler: str, dtype: str, *extra: str,
               launcher: list[str] | None = None) -> list[str]:
    return [*(launcher or [sys.executable]), str(ROOT / "sample_seq2seq.py"), "--model_path", str(model),
            "--step", str(T), "--decode_respacing", ctx.plan.respacing, "--sampler", sampler, "--dtype", dtype,
            "--seed2", "10", "--split", "test", "--max_examples", str(ctx.plan.examples),
            "--batch_size", str(ctx.plan.examples // 4), "--out_dir", str(out_dir), *extra]


def run_chains(ctx: Context, chains: dict[str, list[list[str]]]) -> dict[str, list[subprocess.CompletedProcess]]:
    """Run the chains side by side (``ctx.workers`` at a time), each chain's commands in order until one fails;
    every command's output (stdout and stderr together) goes to ``logs/<chain>.<i>.log``."""

    def run(name: str) -> list[subprocess.CompletedProcess]:
        done = []
        for i, cmd in enumerate(chains[name]):
            try:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=ctx.env, cwd=ROOT, timeout=ctx.plan.timeout)
            except subprocess.TimeoutExpired as err:
                output = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
                proc = subprocess.CompletedProcess(cmd, 124, output + f"\n(timed out after {ctx.plan.timeout} s)")
            (ctx.out / "logs" / f"{name}.{i}.log").write_text(" ".join(cmd) + "\n\n" + proc.stdout)
            done.append(proc)
            if proc.returncode:
                break
        return done

    with ThreadPoolExecutor(ctx.workers) as pool:
        return dict(zip(chains, pool.map(run, chains)))


def expect_success(ctx: Context, name: str, procs: list[subprocess.CompletedProcess], length: int = 1) -> None:
    if len(procs) < length or procs[-1].returncode:
        tail = "\n      ".join(procs[-1].stdout.strip().splitlines()[-12:])
        raise Failed(f"{name}: exit code {procs[-1].returncode} (log: {ctx.out / 'logs' / name}.{len(procs) - 1}.log)"
                     f"\n      {tail}")


def logged_losses(text: str) -> list[tuple[int, dict[str, float]]]:
    """The (step, {term: value}) of every training and validation log line."""
    found = []
    for match in LOG_TERMS.finditer(text):
        words = (match.group(2) or match.group(3)).split()
        found.append((int(match.group(1)), {k: float(v) for k, v in zip(words[::2], words[1::2])}))
    return found


def check_training(ctx: Context, name: str, procs: list[subprocess.CompletedProcess], folder: Path,
                   steps: int) -> dict[str, float]:
    """The run finished (exit 0, the last checkpoint written, a log line at the last step) with every logged
    loss finite; returns the last training line's terms."""
    expect_success(ctx, name, procs)
    if not (folder / f"model{steps:06d}.pt").is_file():
        raise Failed(f"{name}: no model{steps:06d}.pt in {folder}")
    lines = logged_losses(procs[-1].stdout)
    training = [terms for step, terms in lines if "grad_norm" in terms]
    if not training or lines[-1][0] != steps:
        raise Failed(f"{name}: no loss logged at step {steps}")
    bad = [(step, k, v) for step, terms in lines for k, v in terms.items() if not math.isfinite(v)]
    if bad:
        raise Failed(f"{name}: non-finite logged losses {bad[:4]}")
    return training[-1]


def decoded(folder: Path, examples: int, name: str) -> Path:
    """The one seed file of a decode, with one JSON record holding ``recover`` per test pair."""
    files = sorted(folder.glob("**/seed*.json"))
    if len(files) != 1:
        raise Failed(f"{name}: {len(files)} output files in {folder}")
    lines = files[0].read_text().splitlines()
    if len(lines) != examples or not all(line.strip() and "recover" in json.loads(line) for line in lines):
        raise Failed(f"{name}: {files[0]} has {len(lines)} lines, not {examples} records with 'recover'")
    return files[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- checks 1-6


def check_precisions(ctx: Context) -> str:
    variants = {"fp32-ieee": ["--precision", "fp32", "--tf32", "false"], "fp32": ["--precision", "fp32"],
                "bf16": ["--precision", "bf16"], "fp16": ["--precision", "fp16"]}
    folders = {name: ctx.out / "train" / name for name in variants}
    results = run_chains(ctx, {f"1-{name}": [train_cmd(ctx, folders[name], ctx.plan.steps, *flags)]
                               for name, flags in variants.items()})
    last = {name: check_training(ctx, f"1-{name}", results[f"1-{name}"], folders[name], ctx.plan.steps)["loss"]
            for name in variants}
    return f"{ctx.plan.steps} steps each, last loss " + ", ".join(f"{k} {v:.3f}" for k, v in last.items())


def check_resume(ctx: Context) -> str:
    half, full = ctx.plan.half, 2 * ctx.plan.half
    files = (f"model{full:06d}.pt", f"ema_0.9999_{full:06d}.pt")

    def run(*runs: str) -> None:
        chains = {}
        for precision in ("fp16", "fp32"):
            flags = ("--precision", precision, "--lr_schedule", "constant")
            for name in runs:
                folder = ctx.out / "resume" / f"{precision}-{name}"
                chains[f"2-{precision}-{name}"] = [train_cmd(ctx, folder, full, *flags)] if name != "resumed" else [
                    train_cmd(ctx, folder, half, *flags), train_cmd(ctx, folder, full, *flags)]
        for name, procs in run_chains(ctx, chains).items():
            expect_success(ctx, name, procs, len(chains[name]))

    def differing(precision: str, run: str) -> list[str]:
        straight, other = (ctx.out / "resume" / f"{precision}-{name}" for name in ("straight", run))
        return [f for f in files if not same_tensors(straight / f, other / f)]

    run("straight", "resumed")
    for precision in ("fp16", "fp32"):
        differ = differing(precision, "resumed")
        if differ:
            run("again")  # tells a fault of the restart from a computation that differs from run to run
            cause = ("two straight runs differ as well: the computation is not deterministic"
                     if differing(precision, "again") else "two straight runs agree, so the restart changed the run")
            raise Failed(f"{precision}: {', '.join(differ)} of {half} + {half} steps differ from {full} steps "
                         f"({cause})")
    return f"{half} + {half} steps == {full} steps, model and EMA bitwise, fp16 and fp32"


def same_tensors(a: Path, b: Path) -> bool:
    first, second = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def check_post_training(ctx: Context) -> str:
    source, post = ctx.out / "post" / "source", ctx.out / "post" / "penalty"
    chain = [train_cmd(ctx, source, 1),
             train_cmd(ctx, post, ctx.plan.steps, "--resume_checkpoint", str(source / "model000001.pt"),
                       "--simi_penalty", "l2_noise_random", "--simi_lambda", "-2", "--precision", "bf16")]
    procs = run_chains(ctx, {"3-post": chain})["3-post"]
    expect_success(ctx, "3-post", procs, 2)
    terms = check_training(ctx, "3-post", procs, post, ctx.plan.steps)
    if "penalty" not in terms:
        raise Failed(f"3-post: no penalty term in the log ({sorted(terms)})")
    return f"steps 1 -> {ctx.plan.steps}, last loss {terms['loss']:.3f}, penalty {terms['penalty']:.3f}"


def check_decoding(ctx: Context) -> str:
    model = ctx.out / "train" / "fp32" / f"ema_0.9999_{ctx.plan.steps:06d}.pt"
    if not model.is_file():
        raise Failed(f"needs check 1's fp32 checkpoint {model}")
    variants = {f"{s}-{d}": (s, d) for s in ("ddpm", "ddim", "dpm++") for d in ("fp32", "bf16", "fp16")}
    results = run_chains(ctx, {f"4-{name}": [decode_cmd(ctx, model, ctx.out / "decode" / name, *flags)]
                               for name, flags in variants.items()})
    for name in variants:
        expect_success(ctx, f"4-{name}", results[f"4-{name}"])
        decoded(ctx.out / "decode" / name, ctx.plan.examples, f"4-{name}")
    return f"{ctx.plan.respacing}, {ctx.plan.examples} test pairs: " + ", ".join(variants)


def check_validation_rng(ctx: Context) -> str:
    with tempfile.TemporaryDirectory(dir=ctx.out) as tmp:
        trainer = build_trainer(ctx.plan.model, ctx.data, Path(tmp), ctx.device, "fp32")
        trainer.train_step(trainer.model, with_nll=False)

        def states() -> list[torch.Tensor]:
            return [torch.get_rng_state(), *(torch.cuda.get_rng_state_all() if ctx.device.type == "cuda" else [])]

        before = states()
        first = trainer.validation_loss()
        after = states()
        second = trainer.validation_loss()
    if not all(torch.equal(a, b) for a, b in zip(before, after)):
        raise Failed("validation_loss changed the " + ("CPU" if not torch.equal(before[0], after[0]) else "CUDA")
                     + " generator")
    if first != second or not all(math.isfinite(v) for v in first.values()):
        raise Failed(f"validation losses differ or are not finite: {first} vs {second}")
    which = "CPU and CUDA generators" if ctx.device.type == "cuda" else "CPU generator"
    return f"{which} unchanged; the same losses twice (loss {first['loss']:.3f})"


def check_distributed(ctx: Context) -> str:
    gpus = torch.cuda.device_count() if ctx.device.type == "cuda" else 0
    if gpus < 2:
        raise Skipped(f"{gpus} GPU(s); needs 2")
    model = ctx.out / "train" / "fp32" / f"ema_0.9999_{ctx.plan.steps:06d}.pt"
    if not model.is_file():
        raise Failed(f"needs check 1's fp32 checkpoint {model}")
    launch = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "--use_env",
              f"--master_port={free_port()}"]
    folders = {name: ctx.out / "ddp" / name for name in ("torchrun", "launch")}
    out = {n: ctx.out / "ddp" / f"decode-{n}" for n in (1, 2)}
    results = run_chains(ctx, {
        "6-torchrun": [train_cmd(ctx, folders["torchrun"], ctx.plan.steps, launcher=TORCHRUN)],
        "6-launch": [train_cmd(ctx, folders["launch"], ctx.plan.steps, launcher=launch)],
        "6-decode-1": [decode_cmd(ctx, model, out[1], "ddpm", "fp32")],
        "6-decode-2": [decode_cmd(ctx, model, out[2], "ddpm", "fp32", launcher=TORCHRUN)]})
    for name in ("torchrun", "launch"):
        check_training(ctx, f"6-{name}", results[f"6-{name}"], folders[name], ctx.plan.steps)
    for n in (1, 2):
        expect_success(ctx, f"6-decode-{n}", results[f"6-decode-{n}"])
    one, two = (decoded(out[n], ctx.plan.examples, f"6-decode-{n}") for n in (1, 2))
    if one.read_bytes() != two.read_bytes():
        raise Failed(f"2 processes wrote other text than 1: {two} vs {one}")
    return "NCCL training under torchrun and torch.distributed.launch; 2-process decode == 1-process decode"


# ------------------------------------------------------------------------------------------- check 7


def build_trainer(size: Size, data: Path, work: Path, device: torch.device, precision: str):
    """A Trainer of ``size`` on ``data`` (as bench/train_bench.py builds one), uniform timestep sampling."""
    from diffuseq.config import parse_train_args
    from diffuseq.data.vocab import load_vocab_from
    from diffuseq.training.loop import Trainer

    cfg = parse_train_args(size.flags(data) + ["--learning_steps", "100000", "--schedule_sampler", "uniform",
                                               "--dropout", "0.1", "--precision", precision,
                                               "--checkpoint_path", str(work / "ck")])
    vocab = load_vocab_from(data / "vocab.txt")
    return Trainer(cfg, work / "ck", vocab, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_training(ctx: Context, data: Path, precision: str, compile: bool) -> dict[str, float]:
    """Seconds per training step (median) and peak memory, as ``run_train.py`` trains (TF32 on in fp32 only)."""
    from diffuseq.runtime import compile_model, cuda_tf32

    if ctx.device.type == "cuda":
        cuda_tf32(False)  # a fresh command's setting; the Trainer turns TF32 on for fp32 (--tf32 true)
    release(ctx.device)
    with tempfile.TemporaryDirectory(dir=ctx.out) as tmp:
        trainer = build_trainer(ctx.plan.bench, data, Path(tmp), ctx.device, precision)
        model = compile_model(trainer.model) if compile else trainer.model
        trainer.model.train()
        times = []
        for i in range(ctx.plan.warmup + ctx.plan.timed):
            started = time.perf_counter()
            trainer.train_step(model, with_nll=False)
            sync(ctx.device)
            if i >= ctx.plan.warmup:
                times.append(time.perf_counter() - started)
        result = {"seconds": statistics.median(times), "peak_mb": peak_memory_mb(ctx.device)}
        del trainer, model
    if compile:
        torch._dynamo.reset()
    return result


def time_decoding(ctx: Context, data: Path, dtype: str, compile: bool) -> dict[str, float]:
    """Seconds per denoising step of a clamped decode of one batch (median of 3 after a warm-up decode),
    through ``Seq2SeqDiffusion``'s network and clamping, as ``sample_seq2seq.py`` decodes."""
    from diffuseq.api import Seq2SeqDiffusion
    from diffuseq.config import parse_train_args
    from diffuseq.data.vocab import load_vocab_from
    from diffuseq.loading import create_model
    from diffuseq.runtime import autocast_dtype, cuda_tf32
    from diffuseq.samplers import ExampleNoise, create_sampler, denoise

    size, batch = ctx.plan.bench, ctx.plan.decode_batch
    if ctx.device.type == "cuda":
        cuda_tf32(dtype == "fp32")  # sample_seq2seq.py's --tf32 true
    release(ctx.device)
    cfg = parse_train_args(size.flags(data))
    vocab = load_vocab_from(data / "vocab.txt")
    torch.manual_seed(0)
    model = create_model(cfg, vocab.size).to(ctx.device).eval()
    api = Seq2SeqDiffusion(model, cfg, vocab, ctx.device, dtype, compile=compile)
    sampler = create_sampler(api.sampling(respacing=ctx.plan.respacing))
    ids = torch.randint(5, vocab.size, (batch, size.seq_len), device=ctx.device)
    mask = (torch.arange(size.seq_len, device=ctx.device) >= size.seq_len // 2).long().expand(batch, -1)
    amp = autocast_dtype(dtype)
    times = []
    with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=amp) if amp else nullcontext():
        x_start = model.get_embeds(ids)
        for repeat in range(4):
            noise = ExampleNoise(repeat, range(batch), tuple(x_start.shape[1:]), ctx.device)
            started = time.perf_counter()
            denoise(api.network, sampler, x_start, mask, noise, api.clamp)
            sync(ctx.device)
            times.append(time.perf_counter() - started)
    result = {"seconds": statistics.median(times[1:]) / sampler.num_steps, "peak_mb": peak_memory_mb(ctx.device)}
    del api, model
    if compile:
        torch._dynamo.reset()
    return result


def measure_original(ctx: Context, task: str, repo: Path) -> float:
    """Seconds per step of the original code, in a subprocess of ``--original-python`` on the same device."""
    env = {**ctx.env, "TOKENIZERS_PARALLELISM": "false", "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}  # DiffuSeq's setup_dist on one process
    cmd = [ctx.args.original_python, __file__, "--worker", task, "--repo", str(repo.resolve()), "--device",
           ctx.device.type, "--plan", json.dumps(asdict(ctx.plan))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=ctx.plan.timeout)
    (ctx.out / "logs" / f"7-original-{task}.log").write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
    if proc.returncode:
        raise Failed(f"the original code's {task} step failed (log: {ctx.out / 'logs'}/7-original-{task}.log):\n"
                     + proc.stderr.strip()[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


def check_timing(ctx: Context) -> str:
    data = synthetic_dataset(ctx.out / "bench-data", ctx.plan.bench.vocab, ctx.plan.bench.seq_len)
    variants = [("fp32+TF32" if ctx.device.type == "cuda" else "fp32", "fp32", False), ("bf16", "bf16", False)]
    if ctx.device.type == "cuda":
        variants.append(("bf16+compile", "bf16", True))
    for label, precision, compile in variants:
        ctx.timings.append(("train", label, time_training(ctx, data, precision, compile)))
    for label, precision, compile in variants:
        ctx.timings.append(("decode", label, time_decoding(ctx, data, precision, compile)))
    if not ctx.args.smoke:
        for task, repo in (("train", ctx.args.diffuseq), ("decode", ctx.args.bridge_gap)):
            if repo:
                ctx.timings.append((task, "original", {"seconds": measure_original(ctx, task, repo)}))
    bad = [(kind, label) for kind, label, r in ctx.timings if not r["seconds"] > 0]
    if bad:
        raise Failed(f"no timing for {bad}")
    return f"{len(ctx.timings)} measurements (table below)"


def peak_flops(device: torch.device) -> tuple[float, float] | None:
    """The dense (bf16, TF32) FLOP/s of the GPU, or None when unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next(((bf16, tf32) for key, bf16, tf32 in PEAK_FLOPS if key in name), None)


def print_timing_table(ctx: Context) -> None:
    size = ctx.plan.bench
    device = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "CPU"
    peaks = peak_flops(ctx.device)
    originals = {kind: r["seconds"] for kind, label, r in ctx.timings if label == "original"}
    names = {"train": "DiffuSeq", "decode": "Bridge-Gap"}
    print(f"\nTiming on {device}: {size.describe()}; training batch {size.batch} (median of {ctx.plan.timed} steps "
          f"after {ctx.plan.warmup}), {ctx.plan.respacing} decoding at batch {ctx.plan.decode_batch}")
    print("| measurement | time / step | tokens/s | MFU | peak memory | original | this / original |")
    print("|---|---|---|---|---|---|---|")
    for kind, label, r in ctx.timings:
        if label == "original":
            continue
        seconds, original = r["seconds"], originals.get(kind)
        tokens = mfu = "-"
        if kind == "train":
            tokens = f"{size.batch * size.seq_len / seconds:,.0f}"
            peak = None if peaks is None else peaks[1] if "TF32" in label else peaks[0]
            mfu = "n/a" if peak is None else f"{size.train_flops() / seconds / peak:.1%}"
            ours = f"{seconds:.4f} s"
        else:
            ours = f"{1000 * seconds:.2f} ms"
        theirs = "-" if original is None else (f"{original:.4f} s" if kind == "train" else f"{1000 * original:.2f} ms")
        ratio = "-" if original is None else f"{seconds / original:.2f}x"
        print(f"| {kind} {label} | {ours} | {tokens} | {mfu} | {r['peak_mb']:,.0f} MB | "
              f"{theirs}{f' ({names[kind]})' if original else ''} | {ratio} |")
    if peaks is None and ctx.device.type == "cuda":
        print(f"MFU n/a: no peak FLOP/s known for {device}")
    if originals and ctx.device.type == "cuda":
        print("The original runs in fp32 with TF32 matmuls (torch 1.9's default, the paper's).")


# ------------------------------------------------------------------------------------------- the original code


def original_step(task: str, repo: Path, plan: Plan, device: torch.device) -> float:
    """Seconds per step of the original code: DiffuSeq's ``TrainLoop.run_step`` (``task`` train) or a step of
    Bridge-Gap's ``p_sample_loop`` with clamping (``task`` decode), as bench/compare_original.py measures them,
    for ``plan``'s timing configuration, on ``device``."""
    import contextlib
    import io

    import numpy as np
    from transformers import BertConfig

    if "int" not in np.__dict__:  # their step_sample.py uses np.int, removed in numpy 1.24
        np.int = int  # type: ignore[attr-defined]
    sys.path.insert(0, str(repo))
    from diffuseq import gaussian_diffusion as gd
    from diffuseq.step_sample import UniformSampler
    from diffuseq.transformer_model import TransformerNetModel

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    size = plan.bench
    config = BertConfig(vocab_size=size.vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
                        num_attention_heads=size.heads, intermediate_size=size.ffn, hidden_act="gelu",
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
                        layer_norm_eps=1e-12, type_vocab_size=2,
                        attn_implementation="eager")  # their attention; late 4.x releases need it named
    model = TransformerNetModel(input_dims=size.hidden_dim, output_dims=size.hidden_dim, hidden_t_dim=size.hidden_dim,
                                dropout=0.1, config=config, vocab_size=size.vocab).to(device)
    batch = plan.decode_batch if task == "decode" else size.batch
    ids = torch.randint(5, size.vocab, (batch, size.seq_len))
    mask = (torch.arange(size.seq_len) >= size.seq_len // 2).long().expand(batch, -1).contiguous()
    with contextlib.redirect_stdout(io.StringIO()):
        spacing = gd.space_timesteps(T, plan.respacing if task == "decode" else [T])
        diffusion = gd.SpacedDiffusion(use_timesteps=spacing, betas=gd.get_named_beta_schedule("sqrt", T),
                                       rescale_timesteps=True, predict_xstart=True, learn_sigmas=False,
                                       sigma_small=False, use_kl=False, rescale_learned_sigmas=False)
    if task == "decode":
        from compare_original import original_decode_step

        return original_decode_step(diffusion, model, ids.to(device), mask.to(device), rounds=4,
                                    sync=lambda: sync(device))
    times = []
    import train_util
    from diffuseq.utils import dist_util, logger

    with contextlib.redirect_stdout(io.StringIO()):
        dist_util.setup_dist()
    logger.configure(dir=tempfile.mkdtemp(), format_strs=[])
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        loop = train_util.TrainLoop(model=model, diffusion=diffusion, data=None, batch_size=batch, microbatch=batch,
                                    lr=1e-4, ema_rate="0.9999", log_interval=10**9, save_interval=10**9,
                                    resume_checkpoint="none", schedule_sampler=UniformSampler(diffusion),
                                    learning_steps=10**6, checkpoint_path=tmp, eval_data=None, eval_interval=-1)
        if device.type != "cuda":  # on a GPU their loop wraps the model in DDP; their losses reach model.module
            class Wrapped(torch.nn.Module):
                def __init__(self, module: torch.nn.Module) -> None:
                    super().__init__()
                    self.module = module

                def forward(self, *args, **kwargs):
                    return self.module(*args, **kwargs)

            loop.ddp_model = Wrapped(model)
        model.train()
        for step in range(plan.warmup + plan.timed):
            started = time.perf_counter()
            loop.run_step(ids, {"input_ids": ids, "input_mask": mask})
            loop.step += 1
            sync(device)
            if step >= plan.warmup:
                times.append(time.perf_counter() - started)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------- the run


CHECKS: tuple[tuple[str, Callable[[Context], str]], ...] = (
    ("training in fp32 (TF32 off), fp32, bf16, fp16", check_precisions),
    ("exact resume (fp16, fp32)", check_resume),
    ("penalty post-training in bf16", check_post_training),
    ("decoding: every sampler in every dtype", check_decoding),
    ("validation leaves the generators alone", check_validation_rng),
    ("two GPUs: NCCL training, 2-process decode", check_distributed),
    ("timing (QQP configuration)", check_timing),
)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu hides every GPU from this process and its commands")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: 2 layers of 32, seq_len 16, 200 words, 4 steps, 8 test pairs, adp_4")
    parser.add_argument("--diffuseq", type=Path, help="checkout of Shark-NLP/DiffuSeq (check 7's training step)")
    parser.add_argument("--bridge-gap", type=Path, help="checkout of ZetangForward/Bridge_Gap_Diffusion (check 7's "
                                                        "decoding step)")
    parser.add_argument("--original-python", default=sys.executable,
                        help="a Python that imports the original code (transformers 4.x)")
    parser.add_argument("--out", type=Path, help="an empty or new folder for the runs and logs (default: a new "
                                                 "temporary folder, kept)")
    parser.add_argument("--worker", choices=("train", "decode"), help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=json.loads, help=argparse.SUPPRESS)
    return parser


def main() -> int:
    args = parser().parse_args()
    if args.worker:
        plan = Plan(**{**args.plan, "model": Size(**args.plan["model"]), "bench": Size(**args.plan["bench"])})
        seconds = original_step(args.worker, args.repo, plan, torch.device(args.device))
        print(json.dumps({"seconds": seconds}))
        return 0
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before CUDA starts: this process and every command on the CPU
    elif not torch.cuda.is_available():
        sys.exit("error: no CUDA device; on a CPU run: python bench/gpu_check.py --device cpu --smoke")
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: --out {out} is not empty")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    plan = SMOKE if args.smoke else FULL
    cpus = os.cpu_count() or 1
    workers = min(4, cpus)
    threads = max(1, cpus // workers)  # per command, and here
    torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "PYTHONUNBUFFERED": "1"}
    ctx = Context(args, plan, torch.device(args.device), out.resolve(),
                  synthetic_dataset(out.resolve() / "data", plan.model.vocab, plan.model.seq_len, n=plan.pairs),
                  workers, env)
    where = torch.cuda.get_device_name() + f" x {torch.cuda.device_count()}" if args.device == "cuda" else "CPU"
    print(f"gpu_check on {where}, torch {torch.__version__}; check model {plan.model.describe()}; "
          f"runs and logs in {ctx.out}", flush=True)
    verdicts = []
    started_all = time.perf_counter()
    for number, (title, check) in enumerate(CHECKS, 1):
        started = time.perf_counter()
        try:
            status, detail = "PASS", check(ctx)
        except Skipped as why:
            status, detail = "SKIP", str(why)
        except Failed as why:
            status, detail = "FAIL", str(why)
        except Exception:  # a crash of the check itself is a failure too, with its traceback
            status, detail = "FAIL", traceback.format_exc().strip()
        seconds = time.perf_counter() - started
        verdicts.append((number, title, status, seconds))
        print(f"{status} [{number}] {title} ({seconds:.1f} s): {detail}", flush=True)
    if ctx.timings:
        print_timing_table(ctx)
    print("\n| check | result | seconds |\n|---|---|---|")
    for number, title, status, seconds in verdicts:
        print(f"| {number}. {title} | {status} | {seconds:.1f} |")
    counts = {s: sum(status == s for *_, status, _ in verdicts) for s in ("PASS", "FAIL", "SKIP")}
    print(f"\n{', '.join(f'{n} {s}' for s, n in counts.items())} in {time.perf_counter() - started_all:.0f} s")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
