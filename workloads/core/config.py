"""Config values from the command line, shared by the sweep flags and the data CLI."""
from __future__ import annotations

import json


def parse_value(text: str):
    """JSON when it parses (numbers, booleans, null, lists, objects), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
