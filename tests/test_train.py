"""Ray Train for both stages on a real local Ray and a real MLflow store, tiny model, tiny dataset.

The dataset is preprocessed by the real Ray Data pipeline from small layout-exact LIBERO files with
synthetic numbers (tests/libero_files.py): these tests are about the training machinery, not the simulator.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from clad.training.config import load_train_config
from clad.training.optim import lr_factor
from libero_files import write_demo_file

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def dataset(ray_session, tmp_path_factory):
    from clad.data.preprocess_config import PreprocessConfig
    from pipelines.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("train_data")
    for i in range(2):
        write_demo_file(root / "raw", f"task_{i}", lengths=(24, 32, 28, 20), image_size=32, seed=i)
    run_preprocess(root / "raw", root / "ds", PreprocessConfig(val_fraction=0.25))
    return root / "ds"


def _cfg(dataset: Path, out: Path, *overrides: str):
    return load_train_config(None, [
        f"dataset_dir={dataset}", f"output_dir={out}", "model_preset=tiny", "batch_size=8", "log_every=1",
        "checkpoint_every=2", "validate_every=2", "val_batches=1", "optim.warmup_steps=1", "steps=4", *overrides])


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    from pipelines.tracking import resolve_tracking

    return resolve_tracking(tmp_path_factory.mktemp("mlflow"), experiment="test-train")


@pytest.fixture(scope="module")
def stage1(dataset, tracking, tmp_path_factory):
    """stage 1 for 2 steps (stopped), then the same command resumed to 4 steps, under one parent run."""
    from pipelines.tracking import start_run
    from pipelines.train import run_training

    out = tmp_path_factory.mktemp("runs")
    with start_run(tracking, "pipeline") as parent:
        first = run_training(_cfg(dataset, out, "stop_at_step=2", f"parent_run_id={parent.info.run_id}"), tracking=tracking)
        second = run_training(_cfg(dataset, out, f"parent_run_id={parent.info.run_id}"), tracking=tracking)
    return {"out": out, "first": first, "second": second, "parent": parent.info.run_id}


def _state(checkpoint_dir: str | Path) -> dict:
    return json.loads((Path(checkpoint_dir) / "training_state.json").read_text())


def test_stage1_two_steps_then_resume_to_four(stage1):
    first, second = stage1["first"], stage1["second"]
    assert first.error is None and second.error is None
    assert _state(first.checkpoint.path)["step"] == 2
    assert not (stage1["out"] / "stage1" / "final").exists() or second.checkpoint is not None
    state = _state(second.checkpoint.path)
    assert state["step"] == 4
    # the scheduler continued: 4 scheduler steps in total, lr at the position of step 4 of a 4-step schedule
    sched = dict(state["scheduler"]["__dict__"])
    assert sched["last_epoch"] == 4
    tensors = load_file(str(Path(second.checkpoint.path) / "training_state.safetensors"))
    adam_steps = {float(v) for k, v in tensors.items() if k.startswith("optimizer.state.") and k.endswith(".step")}
    assert adam_steps == {4.0}  # AdamW moments were restored, not restarted (would be 2)
    assert math.isclose(second.metrics["train/lr"], 3e-4 * lr_factor(3, 4, 1), rel_tol=1e-6, abs_tol=1e-12)
    assert second.metrics["step"] == 4
    assert (stage1["out"] / "stage1" / "final" / "model.safetensors").is_file()
    for key in ("val/latent_p", "val/recon_p", "val/cos_p", "val/target_std_p", "val/recon_at_horizon",
                "val/cos_still_p", "val/cos_still_s", "val/target_cos_pairwise_p", "val/target_cos_pairwise_s"):
        assert math.isfinite(second.metrics[key]), key


def test_stage2_keeps_stage1_frozen_and_mlflow_nests(stage1, dataset, tracking):
    from pipelines.train import run_training

    out = stage1["out"]
    cfg = _cfg(dataset, out, "steps=2", f"stage1_checkpoint={out / 'stage1'}", f"parent_run_id={stage1['parent']}")
    cfg = cfg.replace(stage="stage2")
    result = run_training(cfg, tracking=tracking)
    assert result.error is None
    s1 = load_file(str(out / "stage1" / "final" / "model.safetensors"))
    s2 = load_file(str(out / "stage2" / "final" / "model.safetensors"))
    frozen = [k for k in s1 if k.startswith(("dynamics.", "vision.", "target_vision."))]
    assert frozen and all(torch.equal(s1[k], s2[k]) for k in frozen)
    assert any(k.startswith("policy.") for k in s2)
    for k in ("val/loss", "val/action_mse", "val/action_l1", "val/action_mse_past_masked", "val/action_l1_past_masked"):
        assert math.isfinite(result.metrics[k]), k
    # the model carries the instructions it was trained on (issue 15): evaluation conditions on the same
    table = json.loads((out / "stage2" / "final" / "tasks.json").read_text())["tasks"]
    dataset_tasks = json.loads((dataset / "tasks.json").read_text())["tasks"]
    assert [(t["name"], t["instruction"]) for t in table] == [(t["name"], t["instruction"]) for t in dataset_tasks]

    # MLflow: the pipeline run holds the stage runs (resumed stage 1 re-used its run), params and metrics
    from pipelines.tracking import child_runs

    kids = child_runs(tracking, stage1["parent"])
    by_stage = {}
    for run in kids:
        by_stage.setdefault(run.data.tags["clad.stage"], []).append(run)
    assert sorted(by_stage) == ["stage1", "stage2"] and len(by_stage["stage1"]) == 1
    run1 = by_stage["stage1"][0]
    assert run1.data.params["model.dynamics.tau"] == "3" and run1.data.params["stage"] == "stage1"
    assert run1.data.tags["clad.dataset_hash"]
    client = MlflowClient(tracking.uri)
    history = client.get_metric_history(run1.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert client.get_metric_history(by_stage["stage2"][0].info.run_id, "val/action_mse")
    assert client.get_metric_history(by_stage["stage2"][0].info.run_id, "val/action_mse_past_masked")
    assert client.get_metric_history(run1.info.run_id, "val/cos_still_s")
    assert client.get_metric_history(run1.info.run_id, "val/target_cos_pairwise_p")
    assert [a.path for a in client.list_artifacts(by_stage["stage2"][0].info.run_id)] == ["model"]


def test_matched_vision_control_trains_on_ray_with_the_frozen_stage1_cnn(stage1, dataset, tmp_path):
    """Issue 15: policy only on CLaD's frozen stage-1 CNN (no foresight) through the real Ray Train loop."""
    from pipelines.train import run_training

    out = stage1["out"]
    cfg = _cfg(dataset, tmp_path, "stage=stage2", "steps=2", f"stage1_checkpoint={out / 'stage1'}", "run_name=control",
               "model.policy.foresight=none", "model.policy.obs_vision=frozen_stage1")
    result = run_training(cfg, tracking=None)
    assert result.error is None
    s1 = load_file(str(out / "stage1" / "final" / "model.safetensors"))
    s2 = load_file(str(tmp_path / "control" / "final" / "model.safetensors"))
    vision = [k for k in s1 if k.startswith("vision.")]
    assert vision and all(torch.equal(s1[k], s2[k]) for k in vision)  # read, never trained
    assert not any(k.startswith(("dynamics.", "target_vision.")) for k in s2)
    assert math.isfinite(result.metrics["val/action_mse"])


def test_continue_another_runs_checkpoint_to_more_steps(stage1, dataset, tracking, monkeypatch):
    """--resume-from with more steps (the "continued" runs of docs/results.md): a relative path works although Ray
    workers run elsewhere, the step count continues, and the new run logs to its own MLflow run."""
    import os

    from pipelines.train import run_training

    out = stage1["out"]
    source = Path(stage1["second"].checkpoint.path)  # stage 1 at step 4
    monkeypatch.chdir(out)
    cfg = _cfg(dataset, out, "steps=6", "run_name=stage1-to6", f"parent_run_id={stage1['parent']}")
    result = run_training(cfg, tracking=tracking, resume_from=os.path.relpath(source, out))
    assert result.error is None
    assert _state(result.checkpoint.path)["step"] == 6
    assert (out / "stage1-to6" / "final" / "model.safetensors").is_file()
    from clad.training.state import load_training_state

    client = MlflowClient(tracking.uri)
    run = client.get_run(load_training_state(result.checkpoint.path)["extra"]["mlflow_run_id"])
    assert run.data.tags["clad.resumed_from"] == str(source)
    assert run.info.run_id != load_training_state(source)["extra"]["mlflow_run_id"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [5, 6]


def test_resume_from_a_folder_without_training_state_names_the_checkpoints(stage1):
    from clad.errors import ConfigError
    from pipelines.train import check_resume_dir

    run_dir = stage1["out"] / "stage1"
    with pytest.raises(ConfigError, match="training_state.json is missing.*checkpoint_"):
        check_resume_dir(run_dir)
    with pytest.raises(ConfigError, match="not a training checkpoint"):
        check_resume_dir(run_dir / "final")


def test_two_workers_match_one_worker(dataset, tmp_path):
    """One step on the whole (tiny) train split as a single global batch: DDP over 2 CPU workers must give
    the same parameters as 1 worker (gradients averaged over equal halves = full-batch gradient)."""
    from clad.data.manifest import read_manifest
    from pipelines.train import run_training

    counts = read_manifest(dataset)["counts"]
    n_windows = counts["steps"]["train"]  # stride 1: one window per step
    assert n_windows % 2 == 0
    # eps=1 makes the first AdamW step ~ lr * gradient (plain Adam would give lr * sign(gradient), which
    # turns float-rounding noise in near-zero gradients into full-size differences)
    common = ("steps=1", f"batch_size={n_windows}", "model.dynamics.mask_ratio=0.0", "loader.shuffle_buffer=0",
              "optim.eps=1.0", "optim.lr=0.1", "optim.weight_decay=0.0", "optim.grad_clip_norm=1000",
              "optim.warmup_steps=0", "checkpoint_every=1", "validate_every=1")
    one = run_training(_cfg(dataset, tmp_path / "one", *common, "num_workers=1", "cpus_per_worker=0.4"))
    two = run_training(_cfg(dataset, tmp_path / "two", *common, "num_workers=2", "cpus_per_worker=0.4"))
    assert one.error is None and two.error is None
    a = load_file(str(tmp_path / "one" / "stage1" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "stage1" / "final" / "model.safetensors"))
    init = _initial_weights(dataset)
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], init[k])]
    assert moved, "one optimizer step must change the weights"
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k


def _initial_weights(dataset):
    from clad.model.model import CladModel
    from clad.training.session import model_stats

    cfg = _cfg(dataset, Path("/nonexistent"))
    torch.manual_seed(cfg.seed)
    model = CladModel(cfg.model, model_stats(dataset, cfg.model.proprio_keys))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_bad_stage2_config_names_the_field(dataset, tmp_path):
    from clad.errors import ConfigError

    with pytest.raises(ConfigError, match="stage1_checkpoint"):
        _cfg(dataset, tmp_path, "stage=stage2")


def test_workers_always_leave_a_cpu_share_for_the_data_tasks(dataset, tmp_path):
    """Two 1-CPU workers on the 2-CPU test cluster would starve Ray Data and hang silently: unset
    cpus_per_worker is sized to leave room, an explicit one that leaves none is refused with the fix."""
    from clad.errors import ConfigError
    from pipelines.train import worker_pool

    pool = worker_pool(_cfg(dataset, tmp_path, "num_workers=2"))
    assert pool.num_actors == 2 and pool.cpus_per_actor == 0.75
    assert worker_pool(_cfg(dataset, tmp_path, "num_workers=1")).cpus_per_actor == 1.0
    with pytest.raises(ConfigError, match=r"cpus_per_worker <= 0\.75"):
        worker_pool(_cfg(dataset, tmp_path, "num_workers=2", "cpus_per_worker=1"))
    with pytest.raises(ConfigError, match="lower num_workers"):
        worker_pool(_cfg(dataset, tmp_path, "num_workers=200", "batch_size=200"))


def test_lost_worker_restarts_from_the_last_checkpoint(dataset, tmp_path):
    """FailureConfig: the worker process dies at step 3; Ray Train restarts the group from the step-2
    checkpoint and the run still finishes all 4 steps."""
    from pipelines.train import run_training

    result = run_training(_cfg(dataset, tmp_path, "crash_at_step=3", "max_failures=1", "validate_every=4"))
    # the drill crashes again on any attempt that did not restore a checkpoint, and max_failures=1 allows
    # one restart: success means the restarted worker continued from the step-2 checkpoint
    assert result.error is None
    assert _state(result.checkpoint.path)["step"] == 4
    assert (tmp_path / "stage1" / "final" / "model.safetensors").is_file()
