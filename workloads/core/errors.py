"""The user's mistakes, told apart from the program's.

A `UserError` is something the person at the terminal can fix: a path that is not there, a
file that is not what the flag expects, a typo in a key. The command line prints its message
as one line and exits 2 (no traceback; `--verbose 1` shows it). Everything else is a bug or
an outage and keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message names the input and what was expected."""


class InputNotFound(UserError, FileNotFoundError):
    """A path the user gave (or a file it must hold) does not exist."""


class BadInput(UserError, ValueError):
    """A file or value the user gave is not what it must be."""
