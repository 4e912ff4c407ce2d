"""`clad tune` on a real local Ray and MLflow: a 2-trial tau x EMA-decay sweep, its results table, the
best-config file (which `clad train` accepts), nesting in MLflow, and resuming a finished sweep."""

from __future__ import annotations


import pytest
from mlflow.tracking import MlflowClient

from clad.errors import ConfigError
from tiny_sweep import run_sweep, write_sweep_inputs

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_space_file_errors_name_the_field(tmp_path):
    from pipelines.tune import load_space

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nspace:\n  model.dynamics.tau: {choise: [2, 4]}\n")
    with pytest.raises(ConfigError, match="space.model.dynamics.tau"):
        load_space(bad)
    bad.write_text("name: x\nspace:\n  model.dynamics.ema_decay: {one_minus_loguniform: [0.01, 0.001]}\n")
    with pytest.raises(ConfigError, match="low < high"):
        load_space(bad)


def test_shipped_space_samples_the_paper_ranges():
    from pathlib import Path

    from pipelines.tune import load_space

    space = load_space(Path(__file__).resolve().parents[1] / "tune_spaces" / "tau_ema.yaml")
    assert space.space["model.dynamics.tau"] == {"choice": [2, 4, 6, 8, 12, 16]}
    lo, hi = space.space["model.dynamics.ema_decay"]["one_minus_loguniform"]
    assert (1 - hi, 1 - lo) == pytest.approx((0.99, 0.9995))


def test_checkpoints_between_validations_are_refused_before_the_sweep_starts(tmp_path):
    from clad.training.config import load_train_config
    from pipelines.tune import check_report_cadence

    check_report_cadence(load_train_config(None, ["dataset_dir=ds", "checkpoint_every=1000", "validate_every=500"]), "base.yaml")
    with pytest.raises(ConfigError, match=r"base.yaml: checkpoint_every \(500\) must be a multiple of validate_every "
                                          r"\(200\).*-o checkpoint_every=200"):
        check_report_cadence(load_train_config(None, ["dataset_dir=ds", "checkpoint_every=500", "validate_every=200"]), "base.yaml")


def test_two_trial_sweep(ray_session, tmp_path, monkeypatch):
    from clad.training.config import load_train_config

    base, space = write_sweep_inputs(tmp_path, ["task_0", "task_1"], {
        "name": "tiny", "num_samples": 2, "resources_per_trial": {"num_workers": 1, "cpus_per_worker": 0.45},
        "scheduler": {"type": "asha", "max_t": 2, "grace_period": 1},
        "space": {"model.dynamics.tau": {"choice": [2, 3]},
                  "model.dynamics.ema_decay": {"one_minus_loguniform": [0.0005, 0.01]}}}, validate_every=1)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store: <output_dir>/mlflow
    sweep, rows = run_sweep(base, space)
    assert len(rows) == 2
    for row in rows:
        assert int(row["model.dynamics.tau"]) in (2, 3)
        assert 0.99 <= float(row["model.dynamics.ema_decay"]) <= 0.9995
        assert float(row["objective"]) > 0 and int(row["steps"]) >= 1
    best = load_train_config(sweep / "best_config.yaml")  # `clad train` accepts it
    assert best.model.dynamics.tau == int(rows[0]["model.dynamics.tau"])
    assert best.model.dynamics.ema_decay == pytest.approx(float(rows[0]["model.dynamics.ema_decay"]))

    # MLflow: one sweep run holding one stage-1 run per trial, with the sampled values as params
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("clad")
    sweeps = client.search_runs([exp.experiment_id], "tags.`clad.kind` = 'sweep'")
    assert len(sweeps) == 1
    trials = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{sweeps[0].info.run_id}'")
    assert sorted(r.data.params["model.dynamics.tau"] for r in trials) == sorted(r["model.dynamics.tau"] for r in rows)
    assert [a.path for a in client.list_artifacts(sweeps[0].info.run_id)] == ["best_config.yaml", "results.csv"]

    # running the same command again restores the finished sweep instead of training new trials
    before = {p.name for p in (sweep / "trials").iterdir()}
    _, again = run_sweep(base, space)
    assert {p.name for p in (sweep / "trials").iterdir()} == before
    assert len(again) == 2
