"""Shared, real fixtures: a local Ray cluster, an MLflow server on loopback, a tiny BERT saved
and loaded through the project's own loading code. Nothing is mocked."""
from __future__ import annotations

import os

import pytest


BACKGROUND = ("test_no_egress.py", "test_benches.py")  # started at the session's start, collected last


def pytest_collection_modifyitems(session, config, items):
    """The no-egress test and the benches' tests go last: they collect runs started in the
    background at the start of the session (tests/test_no_egress.py, tests/test_benches.py)."""
    last = [i for name in BACKGROUND for i in items if i.fspath.basename == name]
    items[:] = [i for i in items if i.fspath.basename not in BACKGROUND] + last


def pytest_collection_finish(session):
    if any(i.fspath.basename == "test_no_egress.py" for i in session.items):
        import test_no_egress

        test_no_egress.start(session.items)
    if any(i.fspath.basename == "test_benches.py" for i in session.items):
        import test_benches

        test_benches.start_smokes(session.items)


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "test_no_egress" in sys.modules:
        sys.modules["test_no_egress"].stop()
    if "test_benches" in sys.modules:
        sys.modules["test_benches"].stop_smokes()


@pytest.fixture(scope="session", autouse=True)
def emosweep_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("emosweep_home")
    os.environ["EMOSWEEP_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
    os.environ["EMOSWEEP_MLFLOW_IDLE_S"] = "10"  # a shared server a test started does not outlive the session long
    # every sweep a Ray of its own (the shared local Ray has its own test, test_shared_ray.py)
    os.environ["EMOSWEEP_RAY_IDLE_S"] = "0"
    # Ray lowers its workers' priority by 15 (nice); the bench smokes (nice 19, tests/test_benches.py)
    # and the no-egress scenario (nice 10) run in the background, so their Ray workers, at 19,
    # took about a third of a contested core from this session's trials at 15. The session's own Rays (started by
    # the fixtures and by the sweeps tests run, which inherit this) keep their workers at the
    # session's priority, and the background takes what the session leaves idle.
    os.environ["RAY_worker_niceness"] = "0"
    yield home
    import ray

    from workloads.core.mlflow_server import SharedServer

    ray.shutdown()
    SharedServer(home / "mlflow").stop()


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node local Ray. Module-scoped: the simulated multi-node tests replace it with a
    `ray.cluster_utils.Cluster` and shut that down; the next module starts a fresh one."""
    import ray

    from workloads.core.ray_start import start_ray

    # the product's own start: a Ray of its own (never one some other process started on this
    # machine), listening on loopback only
    start_ray(num_cpus=2)
    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    from workloads.core.mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def farstail():
    from workloads.data.farstail import read_farstail

    return read_farstail()


@pytest.fixture(scope="session")
def tiny_bert_12(tmp_path_factory, farstail):
    """A 12-layer, 4-head tiny BERT: the study's layer counts apply without scaling."""
    from workloads.models.encoders import make_tiny_bert

    texts = list(farstail.items["text"].head(500))
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny12", texts, layers=12, hidden=32, heads=4,
                          intermediate=64, seed=0)


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """synth(corpus, n, seed, faults) → the folder of a generated look-alike corpus, made once
    per session for each set of arguments."""
    from workloads.data.synth import generate

    made = {}

    def make(corpus: str, n: int = 40, seed: int = 0, faults: bool = True):
        key = (corpus, n, seed, faults)
        if key not in made:
            made[key] = generate(corpus, tmp_path_factory.mktemp(f"{corpus}-{n}-{seed}-{int(faults)}"), n, seed, faults)
        return made[key]
    return make
