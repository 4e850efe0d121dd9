"""A cluster's secrets: Ray's auth token and the MLflow server's password, made on the user's
machine before `ray up`, copied to every node by cluster.yaml's file_mounts, never committed
(the folder is in .gitignore), kept in files only their owner can read (0600, in a 0700
folder), and printed masked.

    emosweep secrets             # make what is missing in .emosweep-secrets/ and show it, masked

Each node reads them from there: Ray with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH, every
MLflow client (trials, `emosweep`) from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD,
which cluster.yaml exports from the file, and the MLflow server's basic-auth app from the
config `basic_auth_config` writes.
"""
from __future__ import annotations

import os
import secrets as _random
import stat
from pathlib import Path

from .errors import UserError

DEFAULT_DIR = ".emosweep-secrets"
RAY_TOKEN = "ray_token"
MLFLOW_USER = "mlflow_user"
MLFLOW_PASSWORD = "mlflow_password"
FLASK_KEY = "mlflow_flask_key"  # the basic-auth app's CSRF key (MLFLOW_FLASK_SERVER_SECRET_KEY), the server's only
USER = "emosweep"  # the MLflow admin that the sweeps log as


def masked(value: str | None) -> str:
    """A secret as it may be printed: its first 4 characters and its length."""
    if not value:
        return "(none)"
    return f"{value[:4]}…({len(value)} chars)"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def make(folder: str | os.PathLike = DEFAULT_DIR) -> dict[str, Path]:
    """Create the folder (0700) and each secret missing from it (0600); existing ones are kept,
    so a running cluster's token is not replaced. Returns {name: path}."""
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    made = {RAY_TOKEN: _random.token_hex(32), MLFLOW_USER: USER, MLFLOW_PASSWORD: _random.token_urlsafe(24),
            FLASK_KEY: _random.token_hex(32)}
    for name, value in made.items():
        if not (folder / name).exists():
            _write_private(folder / name, value)
    return {name: folder / name for name in made}


def read(path: str | os.PathLike) -> str:
    """A secret's value. A file that others may read, or that is missing, is a UserError that
    names it and the fix."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{path}: no such secret; `emosweep secrets` makes it") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"{path}: readable by others (mode {stat.filemode(mode)}); `chmod 600 {path}`")
    value = path.read_text().strip()
    if not value:
        raise UserError(f"{path}: empty")
    return value


def basic_auth_config(folder: str | os.PathLike, database_uri: str, out: str | os.PathLike) -> Path:
    """The ini MLflow's basic-auth app reads (MLFLOW_AUTH_CONFIG_PATH): the admin is the
    sweeps' user with the folder's password; nobody else may read or write anything
    (default_permission NO_PERMISSIONS). Written 0600: it holds the password."""
    folder, out = Path(folder), Path(out)
    user, password = read(folder / MLFLOW_USER), read(folder / MLFLOW_PASSWORD)
    if out.exists():
        out.unlink()
    # auth_cache_ttl_seconds: each request's password check is a PBKDF2 hash, which on 2 cores
    # doubled a sweep's time on the simulated cluster; a minute's cache of a good check (MLflow's
    # own setting) is stale for at most that long after the one user's password changes
    _write_private(out, "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                        f"database_uri = {database_uri}\nadmin_username = {user}\nadmin_password = {password}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                        "auth_cache_ttl_seconds = 60\n")
    return out


def client_env(folder: str | os.PathLike) -> dict[str, str]:
    """What a node's processes need in their environment to join the cluster and log to its
    tracking server."""
    folder = Path(folder)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(folder.resolve() / RAY_TOKEN),
            "MLFLOW_TRACKING_USERNAME": read(folder / MLFLOW_USER),
            "MLFLOW_TRACKING_PASSWORD": read(folder / MLFLOW_PASSWORD)}
