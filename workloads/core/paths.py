"""Where emosweep keeps its state on this machine: $EMOSWEEP_HOME (default ~/emosweep) holds
the local MLflow store, Ray results, built models and the feature cache."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable


def emosweep_home() -> Path:
    """$EMOSWEEP_HOME, created private (0700) when it does not exist yet: it holds the tracking
    store, whose runs hold models. A folder that exists keeps the mode its owner gave it."""
    home = Path(os.environ.get("EMOSWEEP_HOME", Path.home() / "emosweep")).expanduser()
    if not home.exists():
        home.parent.mkdir(parents=True, exist_ok=True)
        try:
            home.mkdir(mode=0o700)
        except FileExistsError:  # made by a concurrent process: its mode stands
            pass
        else:
            os.chmod(home, 0o700)  # mkdir's mode is masked by the umask; 0700 is what is meant
    return home


def mask_uri(uri: str | None) -> str | None:
    """A URI as it may be printed or logged: a password in it (`https://user:secret@host`) is
    replaced by `***`, and so is a user part with no password (often a token). Credentials
    belong in MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN, not in the URI."""
    if not uri:
        return uri
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@]*)@", uri)
    if not match:
        return uri
    user = match.group(2).split(":", 1)
    shown = f"{user[0]}:***" if len(user) == 2 else "***"
    return f"{match.group(1)}{shown}@{uri[match.end():]}"


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
