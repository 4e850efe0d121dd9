"""Where emosweep keeps its state on this machine: $EMOSWEEP_HOME (default ~/emosweep) holds
the local MLflow store, Ray results, built models and the feature cache."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def emosweep_home() -> Path:
    return Path(os.environ.get("EMOSWEEP_HOME", Path.home() / "emosweep")).expanduser()


def publish_folder(out: str | os.PathLike, build: Callable[[Path], object], done: str) -> Path:
    """Build a folder once, atomically. `build(tmp)` fills a temporary folder beside `out`,
    which is then renamed to `out`, so a reader sees the whole folder or none. When
    `out/done` exists nothing is built; when another process publishes first, its folder
    wins; a failed or interrupted build leaves nothing that looks finished."""
    out = Path(out)
    if (out / done).exists():
        return out
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        if out.exists() and not (out / done).exists():  # left by an interrupted older build
            shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:
            if not (out / done).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
