"""Config values from the command line, shared by the sweep flags and the data CLI, and the one
boolean parser every flag, `--set` value and environment switch goes through."""
from __future__ import annotations

import json
import os

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")
BOOL_SPELLINGS = "true/false, 1/0, yes/no or on/off, in any case"


def parse_bool(text) -> bool:
    """A boolean as people type it: true/false (True/False as Python prints them), 1/0, yes/no,
    on/off, in any case. Anything else is a ValueError that lists the spellings."""
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean: use {BOOL_SPELLINGS}")


def env_flag(name: str, default: bool = False) -> bool:
    """An environment switch: unset or empty → `default`, else parse_bool; a value that is no
    boolean is a ValueError naming the variable."""
    value = os.environ.get(name, "")
    if not value.strip():
        return default
    try:
        return parse_bool(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}: {e}") from None


def parse_value(text: str, like=None):
    """JSON when it parses (numbers, booleans, null, lists, objects), else the string itself.
    Where the value stands for a boolean (`like` is one), any of parse_bool's spellings."""
    if isinstance(like, bool):
        return parse_bool(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
