"""User-facing errors: raised for bad input, reported by the command-line entry points in one line."""

from __future__ import annotations

import logging
import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """An error caused by the user's input (flags, files, checkpoints); shown without a traceback."""


def run_cli(main: Callable[[], int | None]) -> NoReturn:
    """Run ``main`` and turn a ``UserError`` (or Ctrl-C) into a one-line message and a non-zero exit."""
    try:
        code = main()
    except UserError as err:
        logging.shutdown()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
