"""Tune's state is saved on its own period, not at every trial checkpoint: superseded
checkpoints are deleted only once the saved state names none of them, and a trial that
finished after the last save is restored from its own finished checkpoint."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow.fs as pafs
from ray import tune

from sweeps.callbacks import KeepLatestCheckpoint
from workloads.core.on_ray import finished_sibling


def _checkpoint(trial_dir, index: int, finished: bool = False) -> tune.Checkpoint:
    path = trial_dir / f"checkpoint_{index:06d}"
    path.mkdir(parents=True)
    (path / "progress.json").write_text(json.dumps({"epoch": index + 1, "finished": finished}))
    return tune.Checkpoint(str(path), filesystem=pafs.LocalFileSystem())


def test_a_superseded_checkpoint_goes_only_after_a_save_that_no_longer_names_it(tmp_path):
    keep = KeepLatestCheckpoint()
    trial = SimpleNamespace(trial_id="t1")
    first = _checkpoint(tmp_path / "t1", 0)
    keep.on_checkpoint(0, [], trial, first)
    second = _checkpoint(tmp_path / "t1", 1)
    keep.on_checkpoint(0, [], trial, second)  # the state on disk may still name the first
    assert keep.get_state() is None  # Tune saves: its state now names the second alone
    assert (tmp_path / "t1" / "checkpoint_000000").exists()  # a crash during that save restores from it
    third = _checkpoint(tmp_path / "t1", 2)
    keep.on_checkpoint(0, [], trial, third)
    keep.get_state()  # the next save: nothing names the first any more
    assert not (tmp_path / "t1" / "checkpoint_000000").exists()
    assert (tmp_path / "t1" / "checkpoint_000001").exists() and (tmp_path / "t1" / "checkpoint_000002").exists()
    keep.on_experiment_end([])
    assert sorted(p.name for p in (tmp_path / "t1").iterdir()) == ["checkpoint_000002"]


def test_a_trial_restored_behind_its_finished_checkpoint_takes_that_one(tmp_path):
    named = _checkpoint(tmp_path / "t", 0)
    assert finished_sibling(named) is None  # nothing newer
    _checkpoint(tmp_path / "t", 1, finished=False)
    assert finished_sibling(named) is None  # newer, but the trial had not finished: train on from the named one
    _checkpoint(tmp_path / "t", 2, finished=True)
    newer = finished_sibling(named)
    assert newer is not None and newer.path.endswith("checkpoint_000002")
    assert finished_sibling(newer) is None
