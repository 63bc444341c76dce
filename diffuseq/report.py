"""Result tables: the scores of one decode's seed files (:func:`format_scores`, printed by ``diffuseq-eval`` and
``sample_seq2seq.py --evaluate``), and a table of decodes joining each run description (``*.meta.json``) with its
evaluation (``--json``) into rows (:func:`format_table`). Headers carry the scale of each metric: BLEU, ROUGE-L,
dist-1, self-BLEU and BERTScore are fractions (0-1, as DiffuSeq prints them), sacreBLEU is 0-100."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

from .errors import UserError


@dataclass
class Row:
    """One decode of one model: quality (mean over seeds), number of denoising steps (= network
    evaluations) and wall time per seed."""

    model: str
    decoding: str
    steps: int
    bleu: float
    rouge_l: float
    dist1: float
    avg_len: float
    seconds: float
    self_bleu: float | None = None
    speedup: float | None = None
    sampler: str = "ddpm"
    bleu_std: float | None = None  # the sample standard deviation of BLEU over seeds (two or more)


def samples_of(decode_dir: Path) -> Path:
    """The ``<checkpoint folder>/<checkpoint>.samples`` folder a decode wrote under ``decode_dir`` (its out_dir)."""
    return next(Path(decode_dir).glob("*/*.samples"))


def load_row(model: str, decoding: str, decode_dir: Path, eval_json: Path) -> Row:
    """A row from a decode folder (its ``*.meta.json``) and the evaluation JSON of that folder."""
    metas = sorted(Path(decode_dir).glob("*.meta.json"))
    if len(metas) != 1:
        raise UserError(f"{decode_dir}: expected one decode description (*.meta.json), found {len(metas)}")
    try:
        meta = json.loads(metas[0].read_text())
        scores = json.loads(Path(eval_json).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read results for {model} / {decoding}: {err}") from None
    files = list(scores["files"].values())
    diversity = scores.get("diversity") or {}
    bleus = [f["bleu"] for f in files]
    return Row(model=model, decoding=decoding, steps=int(meta["denoising_steps"]),
               bleu=mean(bleus), rouge_l=mean(f["rougeL"] for f in files),
               dist1=mean(f["dist1"] for f in files), avg_len=mean(f["avg_len"] for f in files),
               seconds=mean(s["wall_seconds"] for s in meta["seeds"].values()),
               self_bleu=diversity.get("self_bleu"), sampler=meta["settings"]["sampler"]["sampler"],
               bleu_std=stdev(bleus) if len(bleus) > 1 else None)


def add_speedups(rows: list[Row]) -> None:
    """Speedup of each row against a full-step DDPM decode: the same model's, else the slowest in the table."""
    full = {r.model: r for r in rows if r.decoding == "all" and r.sampler == "ddpm"}
    fallback = max(full.values(), key=lambda r: r.seconds, default=None)
    for row in rows:
        reference = full.get(row.model, fallback)
        row.speedup = reference.seconds / row.seconds if reference is not None and row.seconds > 0 else None


def text_table(headers: list[str], body: list[list[str]], left: int = 1, min_width: int = 0,
               markdown: bool = False) -> str:
    """A table of text cells: markdown, or fixed width with the first ``left`` columns aligned left and the
    others aligned right, those at least ``min_width`` wide."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(h), 0 if i < left else min_width, *(len(cells[i]) for cells in body))
              for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" if i < left else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*headers), "  ".join("-" * w for w in widths)] + [fmt.format(*cells) for cells in body]
    return "\n".join(lines)


def format_table(rows: list[Row], markdown: bool = False) -> str:
    """A fixed-width (or markdown) table of the rows; BLEU is the seed mean +- the seed standard deviation."""
    headers = ["model", "sampler", "decoding", "steps", "BLEU (0-1)", "ROUGE-L (0-1)", "dist-1 (0-1)", "avg len",
               "self-BLEU (0-1)", "wall s", "speedup"]
    body = [[r.model, r.sampler, r.decoding, str(r.steps),
             f"{r.bleu:.4f}" + ("" if r.bleu_std is None else f" ± {r.bleu_std:.4f}"), f"{r.rouge_l:.4f}",
             f"{r.dist1:.4f}",
             f"{r.avg_len:.2f}", "-" if r.self_bleu is None else f"{r.self_bleu:.4f}", f"{r.seconds:.1f}",
             "-" if r.speedup is None else f"{r.speedup:.1f}x"] for r in rows]
    return text_table(headers, body, left=3, markdown=markdown)


def common_suffix(names: list[str]) -> str:
    """The suffix all ``names`` share, cut to start at a non-alphanumeric character ('' for one name)."""
    if len(names) < 2:
        return ""
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    while suffix and suffix[0].isalnum():
        suffix = suffix[1:]
    if any(len(n) == len(suffix) for n in names):
        return ""
    return suffix


def format_scores(payload: dict) -> str:
    """The scores of one decode's seed files (the payload of :func:`diffuseq.outputs.score_files`): a row
    per file (and the MBR selection's), with a line naming the file names' common suffix and one of diversity."""
    corpus = payload["corpus_bleu"]
    columns = [("n", "n", "d"), ("BLEU (0-1)", "bleu", ".4f"), ("ROUGE-L (0-1)", "rougeL", ".4f"),
               ("dist-1 (0-1)", "dist1", ".4f"), ("avg_len", "avg_len", ".2f")]
    if corpus is not None:
        columns.append(("sacreBLEU (0-100)", "corpus_bleu", ".2f"))
    if any("bertscore" in vals for vals in payload["files"].values()):
        columns.append(("BERTScore F1 (0-1)", "bertscore", ".4f"))
    rows = []
    suffix = common_suffix(list(payload["files"]))
    for name, vals in payload["files"].items():
        vals = dict(vals)
        if corpus is not None:
            vals["corpus_bleu"] = corpus["files"][name]
        rows.append((name[:len(name) - len(suffix)] + ("*" if suffix else ""), vals))
    n_files = len(payload["files"])
    if payload["mbr"] is not None:
        vals = dict(payload["mbr"])
        if corpus is not None:
            vals["corpus_bleu"] = corpus["mbr"]
        rows.append((f"MBR over {n_files} files", vals))
    lines = [f"file names below end in *={suffix}"] if suffix else []
    body = [[name] + ["-" if vals.get(key) is None else format(vals[key], spec) for _, key, spec in columns]
            for name, vals in rows]
    lines.append(text_table(["file"] + [header for header, _, _ in columns], body, min_width=9))
    diversity = payload["diversity"]
    if diversity is not None:
        lines.append(f"diversity over {n_files} files (0-1): self-BLEU {diversity['self_bleu']:.4f}  "
                     f"div-4 {diversity['div4']:.4f}")
    return "\n".join(lines)
