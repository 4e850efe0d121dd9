"""Reading a sweep back out of MLflow, for the tests."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

PARENT_TAG = "mlflow.parentRunId"


def sweep_runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    """(parent runs, trial runs) of an experiment; both empty if it does not exist yet. The
    per-(arm, configuration) runs a finished sweep adds are left out (see arm_runs)."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000) if exp else []
    return ([r for r in runs if PARENT_TAG not in r.data.tags],
            [r for r in runs if PARENT_TAG in r.data.tags and "emosweep_row" not in r.data.tags])


def arm_runs(client: MlflowClient, experiment: str) -> list:
    """The runs that hold one (arm, configuration)'s fold and seed runs and its aggregate metrics."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000) if exp else []
    return [r for r in runs if r.data.tags.get("emosweep_row") == "arm"]


def child_runs(client: MlflowClient, experiment: str) -> list:
    return sweep_runs(client, experiment)[1]
