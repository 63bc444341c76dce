"""Decode with a trained checkpoint: a data split into one jsonl file per seed, or a file of source lines.

    python sample_seq2seq.py --model_path CKPT_DIR/ema_0.9999_050000.pt --step 2000 --batch_size 16 \\
        --seed2 10 --split test --out_dir generation_outputs --decode_respacing adp_20
    torchrun --nproc_per_node=4 sample_seq2seq.py ... --seeds 10,11,12     # ranks split the inputs
    python sample_seq2seq.py --model_path ... --decode_respacing adp_20 --input sources.txt --output out.txt
    python sample_seq2seq.py --model_path ... --split test --sampler dpm-solver-v2 --solver_steps 10   # DiffuSeq-v2's

Outputs of a split go where DiffuSeq puts them: <out_dir>/<checkpoint folder>/<checkpoint file>.samples/,
one file per seed named as Bridge-Gap names it (seed<S>_step<step>_eta<eta>_respace_<spacing>_<split>_...json).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import dist_util
from ..api import Seq2SeqDiffusion
from ..config import DecodeConfig, parse_decode_args
from ..decode_files import run_decode
from ..errors import UserError
from . import run_cli
from ..fileio import atomic_write_text
from ..report import format_scores
from ..runtime import start_command, use_tf32_on


def decode_lines(config: DecodeConfig, api: Seq2SeqDiffusion) -> None:
    """``--input``: generate one line per source line, into ``--output`` (one file per seed) or stdout."""
    if not Path(config.input).is_file():
        raise UserError(f"--input {config.input} does not exist (a text file of source lines)")
    try:
        sources = Path(config.input).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--input {config.input}: cannot read it as UTF-8 text ({err})") from None
    if not sources:
        raise UserError(f"--input {config.input} holds no lines")
    sampling = config.sampling(api.num_timesteps, api.config.noise_schedule, api.denoise_rate)
    seeds = config.seed_list()
    outputs = {seed: output_path(config.output, seed, len(seeds)) for seed in seeds} if config.output else {}
    if config.output and Path(config.output).is_dir():
        raise UserError(f"--output {config.output} is a folder; give a file name")
    for out in outputs.values():
        if out.resolve() == Path(config.input).resolve():
            raise UserError(f"--output {out} is the --input file; give another file name")
        if list(out.parent.glob("*.meta.json")):
            raise UserError(f"--output {out}: {out.parent} holds a decode's files; write somewhere else")
    generation = api.generate(sources, sampling, seeds=seeds, batch_size=config.batch_size, raw=config.raw_tokens)
    for seed, lines in zip(generation.seeds, generation.texts):
        text = "".join(line + "\n" for line in lines)
        if not config.output:
            sys.stdout.write(text)
            continue
        atomic_write_text(text, outputs[seed])


def output_path(output: str, seed: int, num_seeds: int) -> Path:
    """The ``--output`` file of one seed: the name itself, or ``NAME.seedS.EXT`` with several seeds."""
    out = Path(output)
    return out.with_name(f"{out.stem}.seed{seed}{out.suffix}") if num_seeds > 1 else out


def main() -> int:
    start_command()
    config = parse_decode_args(sys.argv[1:])
    device = dist_util.setup()
    use_tf32_on(device, config.tf32, config.dtype)
    try:
        if config.input:
            decode_lines(config, Seq2SeqDiffusion.from_checkpoint(config.model_path, device, config.dtype,
                                                                  config.compile))
        else:
            run = run_decode(config)
            if run.scores is not None:  # --evaluate: the table diffuseq-eval prints
                for note in run.notes:
                    print(f"note: {note}")
                print(f"scores of {run.out_dir} (also in decode_{run.name}.eval.json)")
                print(format_scores(run.scores), flush=True)
        return 0
    finally:
        dist_util.cleanup()


def run() -> None:
    """The ``diffuseq-decode`` console script."""
    run_cli(main)
