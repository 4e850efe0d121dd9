"""`emosweep data prepare` end to end on a simulated two-node cluster
(`ray.cluster_utils.Cluster`): a head that runs no tasks and two worker nodes; the shards
are decoded on both nodes and the cache is complete."""
from __future__ import annotations

import re

import pytest

from sweeps.cli import main
from workloads.data.synth import load_manifest

pytestmark = pytest.mark.slow  # whole sweeps: the full suite, not the fast tier


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    from workloads.core.ray_start import one_machine

    ray.shutdown()
    with one_machine():  # the simulated nodes listen on loopback, as a laptop's Ray does
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
        ray.shutdown()
        cluster.shutdown()


def test_prepare_on_two_nodes(two_nodes, synth, tmp_path, capsys):
    root = synth("speakers", n=60, seed=3, faults=True)
    args = ["data", "prepare", "speakers", "--root", str(root), "--features", "mfcc_mean", "spectral_stats",
            "--cache-dir", str(tmp_path), "--address", two_nodes.address, "--shard-size", "4", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    n_items = len(load_manifest(root)["good"]) + 5  # the five planted media faults are items the reader keeps
    assert re.search(rf"decoded {n_items} files on 2 nodes", out), out
    assert "6 errors" in out and "errors by reason" in out
    assert f"mfcc_mean-v1-" in out and f"{n_items} computed" in out

    assert main(args) == 0  # warm: nothing decoded
    assert re.search(r"decoded 0 files", capsys.readouterr().out)


def test_cli_reports_bad_arguments_clearly(two_nodes, tmp_path, capsys):
    assert main(["data", "prepare", "shemo", "--root", str(tmp_path / "absent"), "--features", "mfcc"]) == 2
    assert "ShEMO: folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare", "shemo", "--root", str(tmp_path), "--features", "nosuchstage"])
