"""Reading a sweep back out of MLflow, for the tests."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

PARENT_TAG = "mlflow.parentRunId"


def sweep_runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of an experiment; both empty if it does not exist yet."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return [r for r in runs if PARENT_TAG not in r.data.tags], [r for r in runs if PARENT_TAG in r.data.tags]


def child_runs(client: MlflowClient, experiment: str) -> list:
    return sweep_runs(client, experiment)[1]
