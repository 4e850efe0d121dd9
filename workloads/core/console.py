"""A quiet, informative terminal: what the user reads is emosweep's own lines (the data summary,
the table, where things are) and a progress bar per phase; what Ray, Ray Tune, Ray Data,
Optuna, MLflow and Python's warnings log goes to one file, whose path is printed. `--verbose`
brings it all back to the terminal.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path

NOISY = ("ray", "ray.data", "optuna", "mlflow", "alembic", "urllib3", "py.warnings", "filelock", "numba")
# what prints without logging: MLflow's run links (inherited by the trials' workers), and Tune's
# new output engine, which draws its boxes at every verbosity (the older reporter is silent at 0)
QUIET_ENV = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "RAY_AIR_NEW_OUTPUT": "0",
             # transformers' and the Hub's bars ("Writing model shards" as a smoke run saves its tiny
             # random encoders), read when transformers is imported; quiet_logs also switches off
             # an already imported one
             "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
_QUIET: dict = {}


def quiet_logs(folder: Path, name: str, lazy: bool = False) -> Path | None:
    """Route the libraries' log records (and Python warnings) to `folder/name-<time>.log`, and
    stop what prints around logging (QUIET_ENV). Call after `import ray` (Ray sets its handlers on import);
    with lazy=True, only note the wish: `when_ray_starts()`, called by `ray_start.start_ray`,
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
    env = {**QUIET_ENV, "RAY_DATA_LOGGING_CONFIG": str(_ray_data_config(folder))}
    _QUIET["env"] = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        _QUIET["hf_bars"] = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    _QUIET.update(path=path, handler=handler)
    return path


def _ray_data_config(folder: Path) -> Path:
    """Ray Data configures its own logger (console included) when it is imported, in the driver
    and in every worker; this configuration keeps its file in Ray's session logs and drops the
    console. (JSON is YAML, which is what Ray Data reads.)"""
    import json

    path = folder / "ray-data-logging.json"
    path.write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"ray": {"format": "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}},
        "handlers": {"file": {"class": "ray.data._internal.logging.SessionFileHandler", "formatter": "ray",
                              "filename": "ray-data.log"}},
        "loggers": {"ray.data": {"level": "DEBUG", "handlers": ["file"], "propagate": False}},
    }))
    return path


def requiet() -> None:
    """Libraries imported after quiet_logs may add their own console handler on import
    (Optuna does); take them off again. A no-op when the terminal is not quiet."""
    handler = _QUIET.get("handler")
    if handler is None:
        return
    for logger_name in NOISY:
        logger = logging.getLogger(logger_name)
        for h in list(logger.handlers):
            if h is not handler:
                logger.removeHandler(h)
        if handler not in logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False


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
    if _QUIET.get("hf_bars"):
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()
    for key, value in _QUIET["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _QUIET.clear()


def progress_bar(total: int, desc: str, unit: str):
    """A tqdm bar on stderr (the terminal), or a no-op one when stderr is not a terminal and
    EMOSWEEP_PROGRESS is not set (CI logs and tests stay readable)."""
    from tqdm.auto import tqdm

    from .config import env_flag

    show = sys.stderr.isatty() or env_flag("EMOSWEEP_PROGRESS")
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=not show,
                leave=True)


def process_age_s() -> float:
    """Seconds since this process started: the command's own clock, Python's start and the
    imports included (Linux's /proc; elsewhere, since this module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()
