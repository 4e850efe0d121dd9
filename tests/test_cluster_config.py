"""cluster.yaml is valid for `ray up` (Ray's own autoscaler schema and defaults; no cloud is
contacted) and every node installs the versions pinned in pyproject.toml."""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    out = {}
    for req in reqs:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([\w.]+)", req)
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def test_cluster_yaml_passes_rays_validation(cluster):
    config = prepare_config(copy.deepcopy(cluster))
    validate_config(config)
    assert config["head_node_type"] == "head"
    gpu_types = {k for k, v in config["available_node_types"].items() if v["node_config"]["InstanceType"].startswith("g")}
    assert len(gpu_types) >= 2, "a 1-GPU and a multi-GPU worker type"
    for name in gpu_types:
        node = config["available_node_types"][name]
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]


def test_validation_is_real(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_1x"]["min_workerz"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def _node_commands(cluster: dict) -> dict:
    """Every install command each node type runs, as `ray up` composes them."""
    out = {}
    for name, node in cluster["available_node_types"].items():
        role = "head" if name == cluster["head_node_type"] else "worker"
        out[name] = (cluster.get("initialization_commands", []) + cluster.get("setup_commands", [])
                     + node.get(f"{role}_setup_commands", cluster.get(f"{role}_setup_commands", [])))
    return out


def test_every_node_installs_the_pinned_versions(cluster, pins):
    assert {"torch", "torchaudio", "ray"} <= set(pins)
    mounts = cluster["file_mounts"]
    project_dirs = [remote for remote, local in mounts.items() if local in (".", "./")]
    assert project_dirs, "the project itself must be copied to every node"
    for name, commands in _node_commands(cluster).items():
        installs = [c for c in commands if "pip install" in c and "--upgrade pip" not in c]
        assert installs, f"{name} installs nothing"
        assert any(f"cd {project_dirs[0]}" in c and "-e " in c for c in installs), \
            f"{name} must install the project from its own pyproject.toml"
        for command in installs:  # anything pinned by hand must agree with pyproject.toml
            for pkg, version in re.findall(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([\w.]+)", command):
                assert pins.get(pkg.lower()) == version, f"{name}: {pkg}=={version} != pyproject {pins.get(pkg.lower())}"
    assert pins["ray"] in (ROOT / "pyproject.toml").read_text()


def test_tracking_and_storage_reach_every_node_and_nothing_is_public(cluster):
    all_cmds = " ".join(cluster["setup_commands"] + cluster["head_setup_commands"] + cluster["worker_setup_commands"])
    assert "EMOSWEEP_STORAGE_PATH=s3://" in " ".join(cluster["setup_commands"])
    assert "EMOSWEEP_TRACKING_URI" in " ".join(cluster["head_setup_commands"])
    assert "EMOSWEEP_TRACKING_URI=http://$RAY_HEAD_IP:5000" in " ".join(cluster["worker_setup_commands"])
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "mlflow server" in head_start and "--artifacts-destination" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in all_cmds


def test_the_cluster_needs_its_secrets_and_logs_to_postgresql(cluster):
    """Ray's token auth on every node, MLflow's basic-auth app on the head with PostgreSQL
    behind it, the secrets copied from a folder git ignores, and no secret in the file."""
    every_node = " ".join(cluster["setup_commands"])
    assert "RAY_AUTH_MODE=token" in every_node and "RAY_AUTH_TOKEN_PATH=$HOME/.emosweep-secrets/ray_token" in every_node
    assert "MLFLOW_TRACKING_PASSWORD=$(cat ~/.emosweep-secrets/mlflow_password)" in every_node
    assert "chmod 600 ~/.emosweep-secrets/*" in every_node
    assert cluster["file_mounts"]["~/.emosweep-secrets"] == ".emosweep-secrets"
    assert "/.emosweep-secrets/" in (ROOT / ".gitignore").read_text().splitlines()
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--app-name basic-auth" in head_start and "MLFLOW_AUTH_CONFIG_PATH=" in head_start
    assert "--backend-store-uri postgresql:///mlflow" in head_start
    assert "createdb -O $USER mlflow" in " ".join(cluster["head_setup_commands"])
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"(?i)(password|token)\s*[=:]\s*[A-Za-z0-9_-]{16,}", text), "a secret in cluster.yaml"
