"""Cluster YAMLs validate against Ray's own cluster-config schema; the KubeRay manifest is well-formed."""

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER_YAMLS = sorted(p for p in CLUSTER.glob("*.yaml") if not p.name.startswith("kuberay"))


def _validate(raw: dict) -> dict:
    # prepare_config fills the provider's defaults (no cloud calls); validate_config checks ray-schema.json
    cfg = prepare_config(raw)
    validate_config(cfg)
    return cfg


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_validates(path):
    cfg = _validate(yaml.safe_load(path.read_text()))
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    # GPU training workers and CPU rollout workers that scale from zero
    assert any("train" in v["resources"] for v in workers.values())
    assert any("rollout" in v["resources"] and v["min_workers"] == 0 for v in workers.values())
    start = " ".join(cfg["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start and "--dashboard-host=127.0.0.1" in start
    assert any("pip install" in c and "clad" in c for c in cfg["setup_commands"])


def test_two_clouds_at_least():
    providers = {yaml.safe_load(p.read_text())["provider"]["type"] for p in LAUNCHER_YAMLS}
    assert len(providers) >= 2, providers


def test_schema_catches_a_typo():
    raw = yaml.safe_load(LAUNCHER_YAMLS[0].read_text())
    raw["available_node_types"]["cpu_rollout"]["min_wrkers"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_wrkers"):
        _validate(raw)


def test_kuberay_rayjob_runs_clad_pipeline_with_token_auth():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("clad pipeline --config ")
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    # K8sJobMode's submitter pod and the operator reach the job server through the head Service, so the
    # dashboard must listen beyond loopback (the token above guards it); the launcher YAMLs keep 127.0.0.1
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert groups["cpu-rollout"]["minReplicas"] == 0
    gpu = groups["gpu-train"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
