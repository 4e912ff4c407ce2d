"""`clad pipeline` on its embedded default at a reduced size: real LIBERO demos, Ray Data, Ray Train, the
Ray actor pool and MLflow, end to end; then the same command again skips every finished step."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from clad.errors import ConfigError

pytestmark = [pytest.mark.libero, pytest.mark.ray, pytest.mark.slow]

SMALL = [
    "demos.episodes_per_task=2", "demos.image_size=64",
    "train.model_preset=tiny", "train.batch_size=8", "train.checkpoint_every=4", "train.validate_every=4",
    "train.val_batches=1", "train.log_every=2", "train.optim.warmup_steps=1",
    "stage1.steps=4", "stage2.steps=4",
    "eval.episodes_per_task=1", "eval.max_steps=20", "eval.camera_size=64", "eval.actors=1", "eval.video_episodes=1",
    "preprocess.val_fraction=0.5",
]


def test_bad_pipeline_config_names_section_and_field():
    from pipelines.pipeline import load_pipeline_config

    with pytest.raises(ConfigError, match="section eval:\n  field 'actorz'"):
        load_pipeline_config(None, ["eval.actorz=3"])
    with pytest.raises(ConfigError, match="no pipeline config named 'nope'"):
        load_pipeline_config("nope")


def test_a_missing_input_dir_is_refused_before_any_output_ray_or_mlflow_run(tmp_path):
    from pipelines.pipeline import load_pipeline_config, run_pipeline

    cfg = load_pipeline_config(None, [f"input_dir={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'out'}",
                                      f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    with pytest.raises(ConfigError, match=r"input_dir .*nowhere is not a folder: point it at a folder of LIBERO"):
        run_pipeline(cfg)
    assert not (tmp_path / "out" / "pipeline_config.json").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_finished_stage_is_found_done_although_its_saved_config_has_the_dataset_conventions(tmp_path):
    """train_config.json holds model.image_orientation filled in from the dataset; the pipeline's own stage
    config leaves it unset. A re-run must still skip the finished stage (it retrained every stage)."""
    from pipelines.pipeline import _stage_done, load_pipeline_config
    from pipelines.train import with_dataset_conventions

    ds = tmp_path / "dataset"
    ds.mkdir()
    (ds / "manifest.json").write_text(json.dumps({"fingerprint": "f" * 64, "image_orientation": "opengl"}))
    cfg = load_pipeline_config(None, [f"output_dir={tmp_path}"]).stage_config("stage1", ds, tmp_path / "train")
    assert cfg.model.image_orientation is None
    (cfg.run_dir / "final").mkdir(parents=True)
    (cfg.run_dir / "final" / "model.safetensors").write_bytes(b"weights")
    (cfg.run_dir / "train_config.json").write_text(json.dumps(with_dataset_conventions(cfg).to_dict()))
    assert _stage_done(cfg)
    assert not _stage_done(cfg.replace(steps=cfg.steps + 1))


def test_shipped_configs_load():
    from pipelines.pipeline import load_pipeline_config

    paper = load_pipeline_config("libero10_paper")
    assert paper.stages == ("stage1", "stage2")
    policy_only = load_pipeline_config(None, ["train.model.policy.foresight=none"])
    assert policy_only.stages == ("stage2",)


def test_embedded_default_end_to_end(ray_session, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "qs"
    argv = ["pipeline", "-o", f"output_dir={out}", *sum((["-o", o] for o in SMALL), [])]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pick_up_the_alphabet_soup" in printed and "smoke run" in printed and "mlflow ui" in printed

    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert manifest["counts"]["episodes"] == {"train": 1, "val": 1}
    (stage1,) = (out / "train").glob("stage1-*")
    (stage2,) = (out / "train").glob("stage2-*")
    for d in (stage1, stage2):
        assert {"model.safetensors", "config.json", "stats.json"} <= {p.name for p in (d / "final").iterdir()}
    ev = json.loads((out / "eval" / "summary.json").read_text())
    assert ev["complete"] and ev["summary"]["overall"]["n"] == 1
    assert ev["config"]["policy"]["checkpoint"] == str(stage2 / "final")
    assert list((out / "eval" / "videos").glob("*.mp4"))

    client = MlflowClient(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    parent_id = (out / "mlflow_run_id").read_text().strip()
    parent = client.get_run(parent_id)
    assert parent.data.tags["clad.kind"] == "pipeline" and parent.data.tags["clad.dataset_hash"]
    assert "success_rate/overall" in parent.data.metrics
    exp = parent.info.experiment_id
    kids = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    kinds = sorted(r.data.tags.get("clad.stage") or r.data.tags.get("clad.kind") for r in kids)
    assert kinds == ["eval", "stage1", "stage2"]

    # the same command again: every step is found done and skipped, under the same MLflow run
    stamp = (stage2 / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "mlflow_run_id").read_text().strip() == parent_id
    assert (stage2 / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"]["stage1"]["skipped"] and summary["steps"]["stage2"]["skipped"]
    assert all(t.get("skipped") for t in summary["steps"]["demos"]["tasks"])
    assert len(client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")) == 3
