"""The library's error for bad input: one line that says what to change, shown without a traceback.

Messages name settings as they are spelled in Python, in backticks (```eta` must be ...``); the command-line
tools (:func:`diffuseq.commands.run_cli`) show them as the flags a user types (``--eta must be ...``).
"""

from __future__ import annotations


class UserError(ValueError):
    """An error caused by the user's input (settings, files, checkpoints); its message is one line."""
