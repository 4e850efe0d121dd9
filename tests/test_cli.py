import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_emosweep_studies_lists_the_runnable_studies():
    out = subprocess.run(["emosweep", "studies"], capture_output=True, text=True, check=True).stdout
    assert "bert_freezing" in out and "bert_head_pruning" in out
    assert "python sweeps/bert_freezing.py" in out


def test_unknown_study_is_a_clear_error(capsys):
    from sweeps.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "nope"])
    assert exit_.value.code == 2 and "unknown study 'nope'" in capsys.readouterr().err


def test_study_script_shows_the_common_flags():
    out = subprocess.run([sys.executable, str(ROOT / "sweeps" / "bert_freezing.py"), "--help"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    for flag in ("--smoke", "--data-dir", "--model", "--num-samples", "--max-concurrent", "--gpus-per-trial",
                 "--address", "--storage-path", "--tracking-uri", "--experiment", "--resume", "--results-out",
                 "--seed"):
        assert flag in out


def test_unknown_arm_is_rejected_before_anything_starts(tmp_path, capsys):
    """Before Ray or MLflow start: nothing listens on port 9, and the run ends in an instant."""
    from sweeps.bert_freezing import STUDY
    from sweeps.runner import main

    with pytest.raises(SystemExit) as refused:
        main(STUDY, ["--arms", "full,bogus", "--storage-path", str(tmp_path), "--tracking-uri", "http://127.0.0.1:9"])
    assert refused.value.code == 2 and "unknown arm(s) ['bogus']" in capsys.readouterr().err
