"""Where emosweep keeps its state on this machine: $EMOSWEEP_HOME (default ~/emosweep) holds
the local MLflow store, Ray results, built models and the feature cache."""
from __future__ import annotations

import os
from pathlib import Path


def emosweep_home() -> Path:
    return Path(os.environ.get("EMOSWEEP_HOME", Path.home() / "emosweep")).expanduser()
