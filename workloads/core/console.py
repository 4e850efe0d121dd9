"""A quiet, informative terminal: what the user reads is emosweep's own lines (the data summary,
the table, where things are) and a progress bar per phase; what Ray, Ray Tune, Ray Data,
Optuna, MLflow and Python's warnings log goes to one file, whose path is printed. `--verbose`
brings it all back to the terminal.
"""
from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from pathlib import Path

NOISY = ("ray", "optuna", "mlflow", "alembic", "urllib3", "py.warnings", "filelock", "numba")
_QUIET: dict = {}


def quiet_logs(folder: Path, name: str, lazy: bool = False) -> Path | None:
    """Route the libraries' log records (and Python warnings) to `folder/name-<time>.log`, and
    stop MLflow printing run links. Call after `import ray` (Ray sets its handlers on import);
    with lazy=True, only note the wish: `when_ray_starts()`, called where Ray is first imported,
    applies it and says where the log goes (a run that never needs Ray never imports it).
    Returns the log file's path (None while lazy); calling again returns the same file."""
    if "path" in _QUIET:
        return _QUIET["path"]
    if lazy:
        _QUIET["pending"] = (folder, name)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{datetime.now():%Y%m%d-%H%M%S}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for logger_name in NOISY:
        logger = logging.getLogger(logger_name)
        _QUIET.setdefault("saved", []).append((logger, list(logger.handlers), logger.propagate))
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.addHandler(handler)
        logger.propagate = False
    logging.captureWarnings(True)
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # inherited by the trials' workers
    _QUIET.update(path=path, handler=handler)
    return path


def when_ray_starts() -> None:
    """Apply a lazy quiet_logs, if one is pending, and print the log's path."""
    pending = _QUIET.pop("pending", None)
    if pending is not None:
        path = quiet_logs(*pending)
        print(f"[emosweep] Ray's log lines go to {path}", flush=True)


def restore_logs() -> None:
    """Undo quiet_logs (tests and notebooks run several sweeps in one process)."""
    _QUIET.pop("pending", None)
    if "path" not in _QUIET:
        return
    for logger, handlers, propagate in _QUIET.get("saved", []):
        logger.removeHandler(_QUIET["handler"])
        for h in handlers:
            logger.addHandler(h)
        logger.propagate = propagate
    logging.captureWarnings(False)
    _QUIET["handler"].close()
    os.environ.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
    _QUIET.clear()


def progress_bar(total: int, desc: str, unit: str):
    """A tqdm bar on stderr (the terminal), or a no-op one when stderr is not a terminal and
    EMOSWEEP_PROGRESS is not set (CI logs and tests stay readable)."""
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() or os.environ.get("EMOSWEEP_PROGRESS") == "1"
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=not show,
                leave=True)
