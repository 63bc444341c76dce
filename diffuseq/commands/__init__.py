"""The command-line tools (``run_train.py``, ``sample_seq2seq.py``, ``scripts/eval_seq2seq.py`` and their
installed names ``diffuseq-train``, ``diffuseq-decode``, ``diffuseq-eval``): thin layers over the package that
report a ``UserError`` in one line, in the wording of the command line."""

from __future__ import annotations

import logging
import re
import sys
from typing import Callable, NoReturn

from ..errors import UserError

_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


def command_line_wording(message: str) -> str:
    """A library message with its settings (```name```) spelled as the flags a user types (``--name``)."""
    return _SETTING.sub(r"--\1", message)


def run_cli(main: Callable[[], int | None]) -> NoReturn:
    """Run ``main`` and turn a ``UserError`` (or Ctrl-C) into a one-line message and a non-zero exit."""
    try:
        code = main()
    except UserError as err:
        logging.shutdown()
        print(f"error: {command_line_wording(str(err))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
