"""Safe by default (issue 22): a private $EMOSWEEP_HOME, no credentials on the terminal."""
from __future__ import annotations

import os
import stat


def test_emosweep_home_is_created_private(tmp_path, monkeypatch):
    from workloads.core.paths import emosweep_home

    monkeypatch.setenv("EMOSWEEP_HOME", str(tmp_path / "new" / "home"))
    os.umask(0o022)
    home = emosweep_home()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    monkeypatch.setenv("EMOSWEEP_HOME", str(existing))
    assert stat.S_IMODE(emosweep_home().stat().st_mode) == 0o755  # a folder its owner made keeps its mode


def test_credentials_in_a_tracking_uri_are_masked():
    from workloads.core.paths import mask_uri

    assert mask_uri("https://ana:s3cret@mlflow.lab:5000/#/x") == "https://ana:***@mlflow.lab:5000/#/x"
    assert mask_uri("https://tok3n@mlflow.lab") == "https://***@mlflow.lab"
    assert mask_uri("postgresql://u:p:q@db/mlflow") == "postgresql://u:***@db/mlflow"
    for plain in ("http://127.0.0.1:5000", "sqlite:////tmp/m.db", "http://h/a@b", None):
        assert mask_uri(plain) == plain
