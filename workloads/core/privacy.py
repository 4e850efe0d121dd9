"""Nothing phones home: every library emosweep runs has its usage telemetry off unless the
user turns it on.

Imported (and applied) by `import workloads`, which every emosweep entry point does first: the
sweep scripts, `emosweep`, the trials that Ray workers unpickle, the demo. Child processes
(the MLflow server, Ray's raylet, GCS, dashboard agent and workers, a Gradio server) inherit the
environment, so the switches reach them too. A switch the user has set is left alone: to turn
one back on, set it yourself, e.g. `MLFLOW_DISABLE_TELEMETRY=false emosweep tracking`.

What each switch stops, as found by tests/test_no_egress.py (a private network namespace whose
only resolver records every name it is asked for):
- MLflow (3.2+): usage events to config.mlflow-telemetry.io, from clients and the server;
- Ray: the usage report to usage-stats.ray.io, and with it the cloud probe that asks
  metadata.google.internal and 169.254.169.254 which cloud the head runs in;
- Hugging Face Hub: the telemetry pings of downloads (emosweep never downloads at run time,
  but a user's own run with a hub model would);
- Gradio: its analytics and version check, from the demo.
"""
from __future__ import annotations

import os

TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}


def telemetry_off(env: dict | None = None) -> dict:
    """Set each library's telemetry switch to off in `env` (default: this process's
    environment, which its children inherit) unless it is set already. Returns `env`."""
    env = os.environ if env is None else env
    for key, value in TELEMETRY_OFF.items():
        env.setdefault(key, value)
    return env

