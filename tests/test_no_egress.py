"""Nothing leaves the machine: a smoke sweep on Ray with its MLflow server, `data prepare`,
`predict`, the demo and `emosweep ui`, run as a user runs them (no telemetry switch of ours in
their environment, no HF_HUB_OFFLINE), ask no name of any resolver and open no connection
beyond loopback. See tests/egress.py for how each attempt is recorded."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from egress import LOG_ENV, hook_dir, namespace_available
from workloads.core.privacy import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

# what a user's shell would not have set: the switches emosweep sets itself, the suite's own
# offline switch, and the servers this test must start for itself
SCRUB = {*TELEMETRY_OFF, "DO_NOT_TRACK", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "EMOSWEEP_TRACKING_URI",
         "RAY_ADDRESS", "EMOSWEEP_STORAGE_PATH"}

PREDICT = """
import subprocess, sys
from workloads import demo
from workloads.core.tracking import tracking_server
with tracking_server() as uri:
    _, run = demo.load(uri, "meld_fusion")
sys.exit(subprocess.run(["emosweep", "predict", sys.argv[1], "--run-id", run.info.run_id, "--text", "so good"]).returncode)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scenario(work: Path, corpus: Path, clip: Path, namespace: bool) -> dict:
    port = free_port()
    recorder = work / "browser.py"
    recorder.write_text(f"import sys; open({str(work / 'opened.txt')!r}, 'w').write(sys.argv[1])\n")
    py = sys.executable
    return {
        "namespace": namespace, "work": str(work),
        "env": {"EMOSWEEP_HOME": str(work / "home"), LOG_ENV: str(work / "egress.log"),
                "PYTHONPATH": os.pathsep.join([str(hook_dir(work / "hook")), str(ROOT)])},
        "steps": [
            {"name": "smoke sweep", "argv": [py, "sweeps/meld_fusion.py", "--smoke", "--arms", "late_concat",
                                             "--verbose", "0"], "timeout": 600},
            {"name": "data prepare", "argv": ["emosweep", "data", "prepare", "speakers", "--root", str(corpus),
                                              "--features", "mfcc_mean", "--no-progress"], "timeout": 300},
            {"name": "predict", "argv": [py, "-c", PREDICT, str(clip)], "timeout": 300},
            {"name": "demo", "argv": ["emosweep", "demo", "--port", str(port)],
             "probe": f"http://127.0.0.1:{port}/", "timeout": 180},
            {"name": "ui", "argv": ["emosweep", "ui"], "env": {"BROWSER": f"{py} {recorder} %s"}, "timeout": 120},
            {"name": "tracking stop", "argv": ["emosweep", "tracking", "--stop"], "timeout": 60},
        ],
    }


# The scenario is a chain of subprocesses (a sweep, servers, a browser stand-in) that mostly wait:
# it starts in the background when the session starts (tests/conftest.py), a little below the
# other tests' priority, and its test, late in the session, collects it. Alone it took 100 s of
# the suite's wall time.
_RUN: dict = {}


def start(items) -> None:
    """Start the scenario if the session selected its test (none in the fast tier)."""
    if not any(getattr(i, "originalname", "") == "test_a_sweep_prepare_predict_the_demo_and_the_ui_reach_nothing_beyond_loopback"
               for i in items):
        return
    import tempfile

    from workloads.data.synth import generate

    work = Path(tempfile.mkdtemp(prefix="emosweep-no-egress-"))
    (work / "corpus").mkdir()
    corpus = generate("speakers", work / "corpus", 12, 5, False)
    clip = next(corpus.rglob("*.wav"))
    why_not = namespace_available()
    spec = scenario(work, corpus, clip, namespace=why_not is None)
    (work / "scenario.json").write_text(json.dumps(spec))
    runner = [sys.executable, str(HERE / "egress.py"), str(work / "scenario.json"), str(work / "out.json")]
    if why_not is None:
        runner = ["unshare", "--net", "--mount", "--", *runner]
    # as the test session sets them for every other sweep (tests/conftest.py: emosweep_home)
    env = {**{k: v for k, v in os.environ.items() if k not in SCRUB and k != "RAY_worker_niceness"},
           "EMOSWEEP_MLFLOW_IDLE_S": "10", "EMOSWEEP_RAY_IDLE_S": "0"}
    log = open(work / "runner.log", "w")
    _RUN.update(work=work, why_not=why_not, log=log,
                proc=subprocess.Popen(["nice", "-n", "10", *runner], cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, text=True))


def stop() -> None:
    import shutil

    if _RUN:
        if _RUN["proc"].poll() is None:
            _RUN["proc"].kill()
            _RUN["proc"].wait(30)
        _RUN["log"].close()
        shutil.rmtree(_RUN["work"], ignore_errors=True)
        _RUN.clear()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_sweep_prepare_predict_the_demo_and_the_ui_reach_nothing_beyond_loopback():
    assert _RUN, "the scenario was not started (tests/conftest.py's pytest_collection_finish)"
    tmp_path, why_not = _RUN["work"], _RUN["why_not"]
    returncode = _RUN["proc"].wait(timeout=1500)
    assert returncode == 0, (tmp_path / "runner.log").read_text()[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    for step in out["steps"]:
        assert step["rc"] == 0, f"{step['name']} failed:\n{step['tail']}"
    assert (tmp_path / "opened.txt").read_text().startswith("http://127.0.0.1:")  # `emosweep ui` opened a view

    log = [json.loads(line) for line in (tmp_path / "egress.log").read_text().splitlines()]
    # the hook reached every kind of process (else its silence would prove nothing)
    argvs = [e["argv"] for e in log if e["kind"] == "process"]
    for kind in ("meld_fusion.py", "default_worker.py", "mlflow", "emosweep demo", "emosweep ui",
                 "emosweep data prepare"):
        assert any(kind in a for a in argvs), f"no {kind} process loaded the audit hook: {sorted(set(argvs))[:20]}"
    reached = sorted({f"{e['kind']} {e['what']}  ({e['argv'][:80]})" for e in log if e["kind"] != "process"})
    assert not reached, "tried to reach beyond loopback:\n" + "\n".join(reached)
    if out["names"] is not None:  # the private resolver heard every lookup, of any process
        import socket

        asked = sorted(set(out["names"]) - {socket.gethostname()})
        assert not asked, f"names looked up: {asked}"
    else:
        print(f"no private network namespace ({why_not}): Python's lookups and connections only")
