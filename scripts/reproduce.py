"""Reproduce the paper's speed/quality table on any dataset: models x samplers x grids x steps.

    python scripts/reproduce.py --base BASE/ema_0.9999_050000.pt --post POST/ema_0.9999_060000.pt \
        --steps all,100,50,20,10,4 --seeds 10,11,12 --out_dir reproduce_outputs
    python scripts/reproduce.py --base B.pt --post P.pt --model self-cond=S.pt \
        --samplers ddpm,ddim,dpm++ --steps all,20,10,4,2 --seeds 10,11,12 --out_dir docs/samplers
    python scripts/reproduce.py --base B.pt --model v2=V.pt --samplers ddpm,dpm-solver-v2 \
        --grids uniform,adp,time-uniform --steps all,10,2 --out_dir v2_study

Every cell (model x sampler x grid x steps; "all", the full-step reference, once per model, with
the first sampler that steps through all T, DDPM when only ``dpm-solver-v2`` is named) is decoded
with every seed and evaluated with the project's metrics; finished cells are not decoded again, so an
interrupted run resumes. Each step is one network evaluation, for every sampler: ``dpm-solver-v2``'s
cells of N steps keep N + 1 grid points (``uniform``: respacing ``N+1``, ``adp``: ``adp_{N+1}``), and
its own grid, ``time-uniform``, is ``--solver_steps N`` (DiffuSeq-v2's decode). Writes ``results.md``
(BLEU as seed mean +- standard deviation, ROUGE-L, dist-1, self-BLEU, wall time, speedup against the
model's full-step DDPM decode) and two plots, one panel per model: ``bleu_vs_steps.png`` and
``bleu_vs_time.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from diffuseq import DecodeConfig, Seq2SeqDiffusion
from diffuseq.decode_files import run_decode
from diffuseq.commands import run_cli
from diffuseq.errors import UserError
from diffuseq.fileio import atomic_write_text
from diffuseq.model import checkpoints as ckpt
from diffuseq.report import Row, add_speedups, format_table, load_row, samples_of
from diffuseq.runtime import PRECISIONS
from diffuseq.samplers import SAMPLERS

logger = logging.getLogger("reproduce")


GRIDS = ("uniform", "adp", "time-uniform")
DEFAULT_GRIDS = ("uniform", "adp")
SOLVER = "dpm-solver-v2"  # steps between grid points (N evaluations: N + 1 points); the only one with time-uniform


@dataclass(frozen=True)
class Cell:
    """One decode: a model, a sampler, a time grid and a number of steps (network evaluations; 0 = all T
    steps)."""

    model: str
    kind: str
    steps: int
    sampler: str = "ddpm"

    @property
    def name(self) -> str:
        return f"{self.model}__{self.sampler}__{self.decoding}"

    @property
    def decoding(self) -> str:
        return "all" if self.steps == 0 else f"{self.kind}_{self.steps}"

    def respacing(self) -> str:
        """The ``--decode_respacing`` of the cell ('' for all steps and for the solver's own grid)."""
        if self.steps == 0 or self.kind == "time-uniform":
            return ""
        points = self.steps + 1 if self.sampler == SOLVER else self.steps
        return f"adp_{points}" if self.kind == "adp" else str(points)

    def solver_steps(self) -> int | None:
        """The ``--solver_steps`` of the cell (dpm-solver-v2 on its time-uniform grid only)."""
        return self.steps if self.kind == "time-uniform" else None


def parse_steps(text: str, num_timesteps: int) -> list[int]:
    """``all,100,20`` -> [0, 100, 20] (0 = all steps); counts of T or more mean all steps."""
    steps = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part == "all":
            steps.append(0)
        elif part.isdigit() and int(part) > 0:
            steps.append(0 if int(part) >= num_timesteps else int(part))
        else:
            raise UserError(f"--steps: {part!r} is not 'all' or a positive step count")
    return sorted(set(steps), key=lambda s: (s != 0, -s))


def parse_list(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    """``a,b`` -> ["a", "b"], each one of ``allowed``."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise UserError(f"{flag}: {', '.join(unknown) or 'nothing given'}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_models(args: argparse.Namespace) -> dict[str, Path]:
    """The checkpoints by name: ``--base``, ``--post`` and every ``--model NAME=CHECKPOINT`` (at least one)."""
    paths = {"base": Path(args.base)} if args.base else {}
    if args.post:
        paths["post-trained"] = Path(args.post)
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or "__" in name or "/" in name:
            raise UserError(f"--model {item!r}: expected NAME=CHECKPOINT (a name without '/' or '__')")
        if name in paths:
            raise UserError(f"--model {item!r}: the name {name!r} is taken")
        paths[name] = Path(path)
    if not paths:
        raise UserError("no model: give --base CHECKPOINT or --model NAME=CHECKPOINT")
    for name, path in paths.items():
        if not path.is_file():
            raise UserError(f"{name}: no checkpoint file {path}")
    return paths


def plan_cells(models: list[str], steps: list[int], kinds: tuple[str, ...] = DEFAULT_GRIDS,
               samplers: tuple[str, ...] = ("ddpm",)) -> list[Cell]:
    """Every cell to decode: per model and sampler, each grid x count (adp needs at least 3 steps; time-uniform
    is dpm-solver-v2's alone); the full-step decode (count 0), the reference of the speedups, with the first
    sampler that steps through all T (DDPM if dpm-solver-v2 is the only one)."""
    full = next((s for s in samplers if s != SOLVER), "ddpm")
    cells = []
    for model in models:
        if 0 in steps:
            cells.append(Cell(model, "all", 0, full))
        for sampler in samplers:
            for count in steps:
                if count:
                    cells.extend(Cell(model, kind, count, sampler) for kind in kinds
                                 if not (kind == "adp" and count < 3)
                                 and (kind != "time-uniform" or sampler == SOLVER))
    return cells


def cell_key(cell: Cell, checkpoint: dict, args: argparse.Namespace, data_dir: str) -> dict:
    """Everything that decides a cell's outputs: the checkpoint's identity and every setting."""
    key = {"checkpoint": checkpoint["sha256"], "checkpoint_path": checkpoint["path"], "respacing": cell.respacing(),
           "sampler": cell.sampler, "dtype": args.dtype, "seeds": args.seed_list, "split": args.split,
           "max_examples": args.max_examples, "data_dir": str(Path(data_dir).resolve())}
    if cell.solver_steps() is not None:  # (absent otherwise: the cells of earlier runs stay finished)
        key["solver_steps"] = cell.solver_steps()
    return key


def cell_done(out_dir: Path, cell: Cell, key: dict) -> bool:
    """A cell is finished when its evaluation exists and it was decoded from this checkpoint with these settings."""
    eval_json, key_file = out_dir / "eval" / f"{cell.name}.json", out_dir / "decode" / cell.name / "cell.json"
    if not eval_json.is_file() or not any((out_dir / "decode" / cell.name).glob("*/*.samples/*.meta.json")):
        return False
    try:
        return json.loads(key_file.read_text()) == key
    except (OSError, ValueError):
        return False


def decode_cell(cell: Cell, model_path: Path, api: Seq2SeqDiffusion, args: argparse.Namespace, out_dir: Path,
                key: dict) -> None:
    """Decode and score one cell with every seed (the pipeline of sample_seq2seq.py --evaluate) into
    ``out_dir/decode/<cell>/``; its scores go to ``out_dir/eval/<cell>.json``, which marks it finished."""
    folder = out_dir / "decode" / cell.name
    if folder.exists():
        shutil.rmtree(folder)  # outputs of another checkpoint or other settings
    config = DecodeConfig(model_path=str(model_path), decode_respacing=cell.respacing(), sampler=cell.sampler,
                          solver_steps=cell.solver_steps(),
                          split=args.split, seeds=args.seeds, batch_size=args.batch_size, out_dir=str(folder),
                          data_dir=args.data_dir, max_examples=args.max_examples, dtype=args.dtype, evaluate=True)
    config.validate()
    run = run_decode(config, api)
    atomic_write_text(json.dumps(key, indent=2) + "\n", folder / "cell.json")
    (out_dir / "eval").mkdir(exist_ok=True)
    atomic_write_text(json.dumps(run.scores, indent=2) + "\n", out_dir / "eval" / f"{cell.name}.json")


def write_plots(rows: list[Row], out_dir: Path) -> list[Path]:
    """BLEU (seed mean, bars: seed standard deviation) against steps (log axis) and against wall time: one
    panel per model, one line per sampler x grid (its full-step decode included); the model's full-step
    DDPM BLEU is the dashed line, its seed spread the band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    paths = []
    for x_key, label, name in (("steps", "network evaluations (log scale)", "bleu_vs_steps.png"),
                               ("seconds", "wall time per seed, s (log scale)", "bleu_vs_time.png")):
        fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.2), sharey=True, squeeze=False)
        for ax, model in zip(axes[0], models):
            mine = [r for r in rows if r.model == model]
            reference = next((r for r in mine if r.decoding == "all" and r.sampler == "ddpm"), None)
            if reference is not None:
                ax.axhline(reference.bleu, color="black", linestyle="--", linewidth=1, label="DDPM, all steps")
                if reference.bleu_std:
                    ax.axhspan(reference.bleu - reference.bleu_std, reference.bleu + reference.bleu_std,
                               color="black", alpha=0.08)
            for sampler in dict.fromkeys(r.sampler for r in mine):
                full = [r for r in mine if r.sampler == sampler and r.decoding == "all"]
                for kind in GRIDS:
                    line = sorted([r for r in mine if r.sampler == sampler and r.decoding.startswith(kind)] + full,
                                  key=lambda r: getattr(r, x_key))
                    if len(line) > 1 or (line and not full):
                        ax.errorbar([getattr(r, x_key) for r in line], [r.bleu for r in line],
                                    yerr=[r.bleu_std or 0.0 for r in line], marker="o", markersize=4, capsize=2,
                                    label=f"{sampler.upper()}, {kind}")
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_title(model)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("BLEU")
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths


def assemble(out_dir: Path, cells: list[Cell]) -> list[Row]:
    """Rows of every finished cell, with speedups against each model's full-step decode."""
    rows = [load_row(cell.model, cell.decoding, samples_of(out_dir / "decode" / cell.name),
                     out_dir / "eval" / f"{cell.name}.json")
            for cell in cells if (out_dir / "eval" / f"{cell.name}.json").is_file()]
    add_speedups(rows)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="", help="the base model's checkpoint (model/ema .pt)")
    parser.add_argument("--post", default="", help="the post-trained model's checkpoint")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="one more model (e.g. self-cond=RUN/ema_0.995_002000.pt); repeatable")
    parser.add_argument("--samplers", default="ddpm", help=f"comma-separated, of {', '.join(SAMPLERS)}")
    parser.add_argument("--grids", default=",".join(DEFAULT_GRIDS),
                        help="time grids: uniform (N), adp (adp_N), time-uniform (dpm-solver-v2's own)")
    parser.add_argument("--steps", default="all,100,50,20,10,4", help="step counts; 'all' = every step of T")
    parser.add_argument("--seeds", default="10,11,12")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data_dir", default="", help="override the training data folder")
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--dtype", default="fp32", choices=PRECISIONS, help="autocast dtype of the network")
    parser.add_argument("--out_dir", default="reproduce_outputs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    args.seed_list = DecodeConfig(seeds=args.seeds).seed_list()
    samplers = parse_list(args.samplers, SAMPLERS, "--samplers")
    grids = parse_list(args.grids, GRIDS, "--grids")
    if "time-uniform" in grids and SOLVER not in samplers:
        raise UserError(f"--grids time-uniform is the grid of --samplers {SOLVER}, which is not named")
    paths = parse_models(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded = {name: Seq2SeqDiffusion.from_checkpoint(path, device, args.dtype) for name, path in paths.items()}
    first = next(iter(loaded))
    num_timesteps = loaded[first].num_timesteps
    other = [name for name, api in loaded.items() if api.num_timesteps != num_timesteps]
    if other:
        raise UserError(f"{', '.join(other)}: T differs from the {first} model's {num_timesteps}; the steps "
                        f"would not compare")
    cells = plan_cells(list(paths), parse_steps(args.steps, num_timesteps), tuple(grids), tuple(samplers))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identities = {name: ckpt.file_identity(path) for name, path in paths.items()}
    for cell in cells:
        key = cell_key(cell, identities[cell.model], args, args.data_dir or loaded[cell.model].config.data_dir)
        if cell_done(out_dir, cell, key):
            logger.info("%s: already done", cell.name)
            continue
        logger.info("%s: decoding with %s, %s", cell.name, cell.sampler, cell.respacing() or "all steps")
        decode_cell(cell, paths[cell.model], loaded[cell.model], args, out_dir, key)
    rows = assemble(out_dir, cells)
    table = format_table(rows, markdown=True)
    checkpoints = ", ".join(f"{name} `{path.parent.name}/{path.name}`" for name, path in paths.items())
    header = (f"Test split ({args.split}, {args.data_dir or loaded[first].config.data_dir}), "
              f"{args.max_examples or 'all'} examples, seeds {args.seeds} (BLEU: mean ± standard deviation over "
              f"seeds), T = {num_timesteps}; steps = network evaluations; wall time is per seed, on {device}, "
              f"network in {args.dtype}. "
              f"Checkpoints: {checkpoints}.\n\n")
    atomic_write_text(header + table + "\n", out_dir / "results.md")
    plots = write_plots(rows, out_dir)
    print(table)
    print(f"\nwrote {out_dir / 'results.md'}, {', '.join(str(p) for p in plots)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
