"""The demo recipe's learning curve on this machine: BLEU of an adp_20 decode against training steps and wall time.

    python scripts/learning_curve.py --work_dir /tmp/lc_work --out_dir docs/cpu_learning_curve
    python scripts/learning_curve.py --train_pairs 3000 --steps 1000 --every 100 \
        --work_dir /tmp/lc_work_3000 --out_dir docs/cpu_learning_curve/3000_pairs

Trains the base model of ``scripts/demo.sh`` once (3 layers of 128, hidden_dim 64, T 1000 sqrt, lr 1e-3,
batch 64, seq_len 32, a 4,000-word vocabulary learnt from the training split, EMA 0.995, lossaware
timestep sampling, bf16 where the CPU has native bf16 dot products), saving a checkpoint every
``--every`` steps, and notes the training wall time at which each checkpoint was complete (its
``trainstateNNNNNN.pt``, written last, against the start of the training command). Then it decodes each
checkpoint's EMA weights with ``adp_20`` on the first ``--test_examples`` test pairs with every seed and
scores them (``diffuseq.decode_files.run_decode`` with ``evaluate=True``, the pipeline of
``sample_seq2seq.py --evaluate``).

Writes ``results.md`` (per checkpoint: step, training wall time, BLEU mean ± standard deviation over
the seeds, ROUGE-L, dist-1, and the output for one fixed test input) and ``learning_curve.png`` (BLEU
against steps and against training wall time, with the BLEU of copying the source as a baseline) into
``--out_dir``; checkpoints and decodes stay in ``--work_dir``. Started again with the same folders it
resumes: a finished training is not repeated, an interrupted one continues from its last checkpoint,
and finished decodes are not redone. ``--model_flags`` passes more flags to ``run_train.py`` (they
override the recipe's, e.g. a tiny model for a test).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

import torch

from diffuseq import DecodeConfig, Seq2SeqDiffusion, metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from compare_original import cpu_name  # noqa: E402  (the benchmarks' CPU name)
from diffuseq.decode_files import run_decode
from diffuseq.commands import run_cli
from diffuseq.errors import UserError
from diffuseq.fileio import atomic_write_text, read_jsonl
from diffuseq.model import checkpoints as ckpt
from diffuseq.runtime import PRECISIONS

logger = logging.getLogger("learning_curve")
ROOT = Path(__file__).resolve().parent.parent

# scripts/demo.sh's base model (its defaults), minus what this script sets itself
RECIPE = ["--vocab", "train", "--vocab_size", "4000", "--seq_len", "32", "--hidden_dim", "64", "--hidden_t_dim", "64",
          "--num_layers", "3", "--hidden_size", "128", "--num_heads", "4", "--intermediate_size", "512",
          "--diff_steps", "1000", "--noise_schedule", "sqrt", "--bsz", "64", "--microbatch", "64", "--lr", "0.001",
          "--schedule_sampler", "lossaware", "--ema_rate", "0.995", "--log_interval", "100",
          "--eval_interval", "1000", "--seed", "102"]


def native_bf16() -> bool:
    """demo.sh's rule: bf16 where the CPU has native bf16 dot products and no GPU is used."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and not torch.cuda.is_available()


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def planned_steps(steps: int, every: int) -> list[int]:
    """The checkpoints of the curve: every ``every`` steps, and the last step."""
    return sorted(set(range(every, steps + 1, every)) | {steps})


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# -- data ---------------------------------------------------------------------------------------------

def prepare_data(data_dir: Path, train_pairs: int | None, work_dir: Path) -> Path:
    """``data_dir`` itself, or (``--train_pairs N``) a copy in the work folder whose train split is the first N pairs."""
    for split in ("train", "valid", "test"):
        if not (data_dir / f"{split}.jsonl").is_file():
            raise UserError(f"--data_dir {data_dir}: no {split}.jsonl")
    if not train_pairs:
        return data_dir
    subset = work_dir / f"{data_dir.name}_first{train_pairs}"
    lines = (data_dir / "train.jsonl").read_text().splitlines(keepends=True)
    if len(lines) < train_pairs:
        raise UserError(f"--train_pairs {train_pairs}: {data_dir / 'train.jsonl'} has only {len(lines)} pairs")
    subset.mkdir(parents=True, exist_ok=True)
    text = "".join(lines[:train_pairs])
    target = subset / "train.jsonl"
    if not target.is_file() or target.read_text() != text:  # unchanged files keep the run's identity
        atomic_write_text(text, target)
    for split in ("valid", "test"):
        source, copy = data_dir / f"{split}.jsonl", subset / f"{split}.jsonl"
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            shutil.copyfile(source, copy)
    return subset


# -- training -----------------------------------------------------------------------------------------

def train(args: argparse.Namespace, data_dir: Path, train_dir: Path,
          timings_file: Path) -> tuple[dict[int, float], bool]:
    """Train to ``args.steps`` (continuing an interrupted run); return {step: training wall seconds} and whether
    this call trained."""
    timings = {int(k): v for k, v in json.loads(timings_file.read_text()).items()} if timings_file.is_file() else {}
    done = ckpt.complete_steps(train_dir) if train_dir.is_dir() else []
    if args.steps in done:
        logger.info("training: step %d already in %s", args.steps, train_dir)
        return timings, False
    start_step = done[0] if done else 0
    offset = timings.get(start_step, 0.0) if start_step else 0.0
    if start_step and start_step not in timings:
        logger.warning("no wall time recorded for step %d (%s lost?): later checkpoints' times count from now",
                       start_step, timings_file)
    cmd = [sys.executable, str(ROOT / "run_train.py"), "--data_dir", str(data_dir), "--dataset", data_dir.name,
           *RECIPE, "--precision", args.precision, "--learning_steps", str(args.steps),
           "--save_interval", str(args.every), "--checkpoint_path", str(train_dir), "--notes", "learning_curve",
           *shlex.split(args.model_flags)]
    logger.info("training%s: %s", f" (continuing from step {start_step})" if start_step else "",
                " ".join(shlex.quote(c) for c in cmd))
    train_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = train_dir.parent / "train.log"
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    launched = time.time()
    with log_path.open("a") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(shlex.quote(c) for c in cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if not args.quiet:
                    sys.stderr.write(line)
        finally:  # on Ctrl-C too: the training saves a checkpoint and exits; its times are kept for the resume
            rc = proc.wait()
            # the wall time of each new checkpoint: when its trainstate marker (written last) was complete
            for step in ckpt.complete_steps(train_dir):
                if step > start_step and step not in timings:
                    marker = train_dir / ckpt.trainstate_name(step)
                    timings[step] = round(offset + marker.stat().st_mtime - launched, 2)
            atomic_write_text(json.dumps({str(k): v for k, v in sorted(timings.items())}, indent=2) + "\n",
                              timings_file)
    if rc != 0:
        raise UserError(f"training exited with status {rc} (log: {log_path}); run the same command again to "
                        f"continue from the last checkpoint")
    return timings, True


# -- decoding -----------------------------------------------------------------------------------------

def ema_file(train_dir: Path, step: int) -> Path:
    found = sorted(train_dir.glob(f"ema_*_{step:06d}.pt"))
    if not found:
        raise UserError(f"{train_dir}: no EMA checkpoint of step {step} (ema_<rate>_{step:06d}.pt)")
    return found[0]


def decode_step(step: int, model: Path, args: argparse.Namespace, data_dir: Path, work_dir: Path) -> Path:
    """Decode and score one checkpoint (unless done with this file and these settings); return its eval JSON."""
    folder, eval_json = work_dir / "decode" / f"step{step:06d}", work_dir / "eval" / f"step{step:06d}.json"
    key = {"checkpoint": ckpt.file_identity(model)["sha256"], "respacing": args.respacing, "seeds": args.seeds,
           "dtype": args.dtype, "max_examples": args.test_examples, "data_dir": str(data_dir.resolve())}
    key_file = folder / "cell.json"
    try:
        if eval_json.is_file() and json.loads(key_file.read_text()) == key:
            logger.info("step %d: decode already done", step)
            return eval_json
    except (OSError, ValueError):
        pass
    if folder.exists():
        shutil.rmtree(folder)  # another checkpoint or other settings
    logger.info("step %d: decoding %s with %s, seeds %s", step, model.name, args.respacing, args.seeds)
    config = DecodeConfig(model_path=str(model), decode_respacing=args.respacing, split="test", seeds=args.seeds,
                          batch_size=args.batch_size, out_dir=str(folder), data_dir=str(data_dir),
                          max_examples=args.test_examples, dtype=args.dtype, evaluate=True)
    config.validate()
    api = Seq2SeqDiffusion.from_checkpoint(model, torch.device("cpu" if not torch.cuda.is_available() else "cuda"),
                                           args.dtype)
    run = run_decode(config, api)
    atomic_write_text(json.dumps(key, indent=2) + "\n", key_file)
    eval_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(run.scores, indent=2) + "\n", eval_json)
    return eval_json


@dataclass
class Point:
    step: int
    seconds: float | None
    bleus: list[float]
    rouge_l: float
    dist1: float
    example: str
    decode_seconds: float
    speed: float | None = None

    @property
    def bleu(self) -> float:
        return mean(self.bleus)

    @property
    def bleu_sd(self) -> float:
        return stdev(self.bleus) if len(self.bleus) > 1 else 0.0


def seed_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*/*.samples/seed*.json") if not p.name.endswith((".meta.json",
                                                                                         ".eval.json")))


def load_point(step: int, seconds: float | None, eval_json: Path, folder: Path, example_index: int) -> Point:
    scores = json.loads(eval_json.read_text())
    files = list(scores["files"].values())
    first = seed_files(folder)[0]  # the lowest seed
    rows = [row for _, row in read_jsonl(str(first))]
    example = " ".join(metrics.clean_recover(rows[example_index]["recover"]).split())
    metas = list(folder.glob("*/*.samples/*.meta.json"))
    decode_seconds = mean(s["wall_seconds"] for s in json.loads(metas[0].read_text())["seeds"].values()) \
        if metas else float("nan")
    return Point(step, seconds, [f["bleu"] for f in files], mean(f["rougeL"] for f in files),
                 mean(f["dist1"] for f in files), example, decode_seconds)


def copy_baseline(folder: Path, example_index: int) -> tuple[float, str, str]:
    """BLEU of copying the source as the output on the decoded test lines, and the example's source and reference."""
    rows = [row for _, row in read_jsonl(str(seed_files(folder)[0]))]
    sources = [metrics.clean_source(r["source"]) for r in rows]
    references = [metrics.clean_reference(r["reference"]) for r in rows]
    bleu = mean(metrics.sentence_bleu(s, r) for s, r in zip(sources, references))
    return bleu, " ".join(sources[example_index].split()), " ".join(references[example_index].split())


# -- report -------------------------------------------------------------------------------------------

LOG_LINE = re.compile(r"\bstep (\d+)\b(?!.*validation).*?\| ([\d.]+) samples/s")


def log_speeds(log_path: Path) -> dict[int, float]:
    """{step: training samples/s of the log window ending there} from the training log (the last run of a step)."""
    speeds: dict[int, float] = {}
    if log_path.is_file():
        for line in log_path.read_text(errors="replace").splitlines():
            match = LOG_LINE.search(line)
            if match:
                speeds[int(match.group(1))] = float(match.group(2))
    return speeds


def speed_between(speeds: dict[int, float], after: int, upto: int) -> float | None:
    """The mean logged samples/s over the log windows ending in (after, upto]."""
    found = [v for k, v in speeds.items() if after < k <= upto]
    return mean(found) if found else None


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text else "(empty)"


def write_results(points: list[Point], baseline: tuple[float, str, str], args: argparse.Namespace, n_train: int,
                  trained: dict, info: dict, speeds: dict[int, float], out_dir: Path) -> Path:
    base_bleu, source, reference = baseline
    batch, evals = trained["batch_size"], trained["eval_interval"]
    validation = f" and the validation loss every {evals:,} steps" if evals > 0 else ""
    subset = f" (the first {args.train_pairs:,})" if args.train_pairs else ""
    extra = f", with `{args.model_flags}`" if args.model_flags else ""
    bf16 = "native bf16 (avx512_bf16/amx_bf16)" if info["bf16"] else "no native bf16"
    decode_s = mean(p.decode_seconds for p in points)
    try:
        busy = (float(info["load_start"].split(" / ")[0]) >= 0.5
                or float(info["load_end"].split(" / ")[0]) >= info["threads"] + 0.5)
    except ValueError:
        busy = False
    window = [v for k, v in speeds.items() if k <= args.steps]
    spread = (f" The training log's speed ranged from {min(window):.0f} to {max(window):.0f} samples/s; at "
              f"{max(window):.0f}, its fastest window, the {args.steps:,} steps take about "
              f"{clock(args.steps * batch / max(window))} (steps x batch / speed, without start-up and saving)."
              if window else "")
    number = args.example_index + 1
    bullets = [
        (f"Data: `{shown(Path(args.data_dir))}`, training on {n_train:,} pairs{subset}; scored on the first "
         f"{args.test_examples} test pairs."),
        (f"Model: `scripts/demo.sh`'s base recipe (3 layers of 128, hidden_dim 64, T 1000 sqrt, lr 1e-3, batch 64, "
         f"seq_len 32, a 4,000-word vocabulary from the training split, EMA 0.995, lossaware){extra}; training in "
         f"{info['precision']}."),
        (f"Decoding: each checkpoint's EMA weights, `{args.respacing}`, DDPM, network in {args.dtype}, seeds "
         f"{args.seeds}; BLEU is the mean sentence BLEU (0-1, as `diffuseq-eval`), mean ± standard deviation over "
         f"the seeds; ROUGE-L and dist-1 are seed means."),
        (f"Machine: {info['cpu']}, {info['cores']} cores (torch uses {info['threads']} threads), {bf16}; torch "
         f"{info['torch']}, Python {info['python']}. Load average (1/5/15 min) before training {info['load_start']}, "
         f"at its end {info['load_end']} (the training itself accounts for about {info['threads']})"
         + (": other work shared the cores, so the wall times are slower and noisier than on an idle machine."
            if busy else ".")),
        (f"One training run of {args.steps:,} steps, its learning rate {trained['lr']:g} falling "
         f"{trained['lr_schedule']}ly to 0 at step {args.steps:,}: a checkpoint on the way has had a higher "
         f"learning rate than the end of a shorter run, whose score at the same step may be somewhat better. "
         f"Epochs: steps x batch {batch} / {n_train:,} pairs."),
        (f"Training wall time: from the start of the training command (Python start-up and vocabulary included) to "
         f"the checkpoint's last file; saving every {args.every:,} steps{validation} included, decoding not (about "
         f"{decode_s:.1f} s per seed per checkpoint here, for {args.test_examples} pairs). Training samples/s: the "
         f"mean of the training log's windows since the previous checkpoint, which shows how much other work "
         f"slowed each stretch.{spread}"),
        (f"Baseline: copying the source as the output scores BLEU {base_bleu:.4f} on the same test lines "
         f"(the dashed line in the plot)."),
    ]
    lines = ["# Learning curve of the demo recipe on a CPU", "",
             f"Made by `python scripts/learning_curve.py {info['argv']}`.", ""]
    lines += [f"* {text}" for text in bullets]
    lines += ["", (f"Example: test input {number} `{source}`, reference `{reference}`; the last column is the "
                   f"seed-{args.seeds.split(',')[0]} output for it."), "",
              (f"| step | epochs | training wall time (m:s) | training samples/s | BLEU (mean ± sd) | ROUGE-L | "
               f"dist-1 | output for test input {number} |"),
              "|---:|---:|---:|---:|---|---:|---:|---|"]
    for p in points:
        speed = "-" if p.speed is None else f"{p.speed:.0f}"
        lines.append(f"| {p.step} | {p.step * batch / n_train:.1f} | {clock(p.seconds)} | {speed} | {p.bleu:.4f} ± "
                     f"{p.bleu_sd:.4f} | {p.rouge_l:.4f} | {p.dist1:.4f} | {cell(p.example)} |")
    lines.append("")
    path = out_dir / "results.md"
    atomic_write_text("\n".join(lines), path)
    return path


def write_plot(points: list[Point], base_bleu: float, title: str, out_dir: Path) -> Path:
    """BLEU against training steps (left) and training wall time (right), the copy-the-source BLEU dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    timed = [p for p in points if p.seconds is not None]
    speeds = [p.speed for p in points if p.speed is not None]
    wall_label = "training wall time, minutes" + (f" ({min(speeds):.0f}-{max(speeds):.0f} samples/s between "
                                                  f"checkpoints)" if speeds else "")
    panels = ((axes[0], points, [p.step for p in points], "training steps"),
              (axes[1], timed, [p.seconds / 60 for p in timed], wall_label))
    for ax, mine, xs, label in panels:
        ax.axhline(base_bleu, color="black", linestyle="--", linewidth=1,
                   label=f"copy the source ({base_bleu:.3f})")
        ax.errorbar(xs, [p.bleu for p in mine], yerr=[p.bleu_sd for p in mine], marker="o", markersize=4,
                    capsize=3, color="tab:blue", label="adp_20 decode (mean ± sd, 3 seeds)")
        ax.set_xlabel(label)
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("BLEU (0-1)")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = out_dir / "learning_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(ROOT / "datasets" / "wordnet_reverse"))
    parser.add_argument("--train_pairs", type=int, default=None, help="train on the first N pairs of train.jsonl")
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--every", type=int, default=250, help="a checkpoint (and a point of the curve) every N steps")
    parser.add_argument("--precision", default="", choices=("", *PRECISIONS),
                        help="training precision (default: bf16 where the CPU has native bf16, else fp32)")
    parser.add_argument("--dtype", default="", choices=("", *PRECISIONS), help="decoding dtype (default: --precision)")
    parser.add_argument("--respacing", default="adp_20")
    parser.add_argument("--seeds", default="10,11,12")
    parser.add_argument("--test_examples", type=int, default=200)
    parser.add_argument("--example_index", type=int, default=0, help="which test input's output the table shows")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--model_flags", default="", help="more run_train.py flags, overriding the recipe's")
    parser.add_argument("--work_dir", default="learning_curve_work", help="checkpoints, decodes, logs")
    parser.add_argument("--out_dir", default="learning_curve_outputs", help="results.md and learning_curve.png")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for training and decoding (OMP_NUM_THREADS; default: torch's, one per core)")
    parser.add_argument("--quiet", action="store_true", help="keep the training log in WORK_DIR/train.log only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.steps < 1 or args.every < 1:
        raise UserError("--steps and --every must be positive")
    if args.train_pairs is not None and args.train_pairs < 1:
        raise UserError("--train_pairs must be positive")
    try:
        seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seed_list:
        raise UserError("--seeds: give at least one seed")
    args.seeds = ",".join(map(str, seed_list))
    if args.threads < 0:
        raise UserError("--threads must be positive (0: torch's default)")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the training process
        torch.set_num_threads(args.threads)  # the decoding, in this process
    bf16 = native_bf16()
    args.precision = args.precision or ("bf16" if bf16 else "fp32")
    args.dtype = args.dtype or args.precision
    info = {"argv": " ".join(shlex.quote(a) for a in sys.argv[1:]), "cpu": cpu_name(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "bf16": bf16, "precision": args.precision,
            "torch": torch.__version__, "python": platform.python_version(), "load_start": load_average()}
    started = time.perf_counter()

    work_dir, out_dir = Path(args.work_dir), Path(args.out_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = prepare_data(Path(args.data_dir), args.train_pairs, work_dir)
    n_train = sum(1 for _ in read_jsonl(str(data_dir / "train.jsonl")))
    train_dir = work_dir / "train"
    info_file = work_dir / "machine.json"
    timings, trained_now = train(args, data_dir, train_dir, work_dir / "timings.json")
    if trained_now:
        info["load_end"] = load_average()
        atomic_write_text(json.dumps(info, indent=2) + "\n", info_file)
    elif info_file.is_file():  # trained by an earlier invocation: its machine and load
        info = {**json.loads(info_file.read_text()), "argv": info["argv"]}
    else:
        info["load_end"] = "n/a"

    points = []
    speeds = log_speeds(work_dir / "train.log")
    previous = 0
    for step in planned_steps(args.steps, args.every):
        eval_json = decode_step(step, ema_file(train_dir, step), args, data_dir, work_dir)
        points.append(load_point(step, timings.get(step), eval_json, work_dir / "decode" / f"step{step:06d}",
                                 args.example_index))
        points[-1].speed, previous = speed_between(speeds, previous, step), step
    baseline = copy_baseline(work_dir / "decode" / f"step{points[0].step:06d}", args.example_index)
    trained = json.loads((train_dir / "training_args.json").read_text())
    results = write_results(points, baseline, args, n_train, trained, info, speeds, out_dir)
    title = (f"demo recipe, {n_train:,} training pairs, {args.precision}, {info['cpu']} ({info['cores']} cores); "
             f"BLEU of {args.respacing} on {args.test_examples} test pairs")
    plot = write_plot(points, baseline[0], title, out_dir)
    print(results.read_text())
    print(f"wrote {results} and {plot} in {clock(time.perf_counter() - started)} (m:s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
