"""Command lines built from config dataclasses: one option per field, errors in one line, DiffuSeq's --app."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from dataclasses import field
from typing import Any, Sequence

from ..errors import UserError


def option(default: Any, help: str, *aliases: str, choices: Sequence[str] | None = None) -> Any:
    """A dataclass field that is also a command-line option (help, spellings, choices in its metadata)."""
    return field(default=default, metadata={"help": help, "aliases": aliases, "choices": choices})


class CliArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors through ``UserError`` (one line, no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y"):
        return True
    if text.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def build_parser(cls: type, description: str = "") -> argparse.ArgumentParser:
    """A parser with one option per field that carries help (aliases and choices from the metadata).

    Options have no argparse defaults, so the parsed namespace holds exactly the flags given;
    the defaults are the dataclass's (shown in the help).
    """
    parser = CliArgumentParser(description=description, argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        names = [f"--{f.name}", *meta.get("aliases", ())]
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        text = f"{meta['help']} (default: {f.default!r})"
        if kind == "bool":
            parser.add_argument(*names, dest=f.name, type=str2bool, nargs="?", const=True, help=text)
        else:
            conv = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float}[kind]
            parser.add_argument(*names, dest=f.name, type=conv, help=text, choices=meta.get("choices"))
    return parser


def expand_app(argv: Sequence[str]) -> list[str]:
    """DiffuSeq's ``--app "FLAGS"`` (extra flags in one string) spliced into the command line."""
    out, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--app" and args:
            out += shlex.split(args.pop(0))
        elif arg.startswith("--app="):
            out += shlex.split(arg[len("--app="):])
        else:
            out.append(arg)
    return out


def take_local_rank(argv: Sequence[str]) -> list[str]:
    """``argv`` without the ``--local-rank N`` / ``--local_rank=N`` that ``python -m torch.distributed.launch``
    passes when ``--use_env`` is not given; its value goes to ``LOCAL_RANK`` if the launcher did not set it."""
    out, args, value = [], list(argv), None
    while args:
        arg = args.pop(0)
        name, eq, inline = arg.partition("=")
        if name in ("--local-rank", "--local_rank"):
            value = inline if eq else (args.pop(0) if args else "")
            if not value.isdigit():
                raise UserError(f"{name} must be a non-negative integer, got {value!r}")
        else:
            out.append(arg)
    if value is not None:
        os.environ.setdefault("LOCAL_RANK", value)
    return out
