"""Cluster YAMLs validate against Ray's own cluster-config schema; the KubeRay manifest is well-formed."""

import re
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


_IDENTITY = {"aws": lambda nc: "IamInstanceProfile" in nc, "gcp": lambda nc: bool(nc.get("serviceAccounts"))}


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_nodes_get_storage_credentials_from_a_cloud_identity(path):
    raw = yaml.safe_load(path.read_text())
    has_identity = _IDENTITY[raw["provider"]["type"]]
    for name, node in raw["available_node_types"].items():
        assert has_identity(node["node_config"]), f"{path.name}: node type {name} has no instance role / service account"
    text = path.read_text()
    assert re.search(r"output_dir=(s3|gs)://", text), "the submit example should write to a bucket URI"
    assert "mount" in " ".join(raw["setup_commands"]), "a shared file system (EFS / Filestore) for input_dir"
    assert "--serve-artifacts" in " ".join(raw["head_start_ray_commands"])  # workers need no keys for MLflow


def test_kuberay_pods_use_a_service_account_and_the_shared_volume():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        assert pod["serviceAccountName"] == "clad-ray"
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert claims == {"shared": "clad-shared"} and mounts == {"shared": "/mnt/shared"}
    assert re.search(r"-o output_dir=(s3|gs)://", job["spec"]["entrypoint"])


@pytest.mark.parametrize("path", sorted(CLUSTER.iterdir()), ids=lambda p: p.name)
def test_no_credentials_in_cluster_files(path):
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]|AWS_SECRET_ACCESS_KEY=\S|\"private_key\"", text)
