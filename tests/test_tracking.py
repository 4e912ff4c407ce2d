"""MLflow tracking against a real local SQLite store: experiment, params, metrics, nesting, artifacts."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines.tracking import child_runs, flatten_params, resolve_tracking, start_run


def test_flatten_params():
    assert flatten_params({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "x"}


@pytest.mark.slow
def test_local_store_nesting_and_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = resolve_tracking(tmp_path, experiment="test-exp")
    assert tracking.uri.startswith("sqlite:///") and str(tmp_path) in tracking.uri
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with start_run(tracking, "parent", params={"model": {"hidden": 8}}) as parent:
        mlflow.log_metric("x", 1.0, step=0)
        with start_run(tracking, "child", parent_run_id=parent.info.run_id, tags={"stage": "stage1"}) as child:
            mlflow.log_metric("loss", 0.5, step=3)
            mlflow.log_artifact(str(note))
    client = MlflowClient(tracking.uri)
    run = client.get_run(parent.info.run_id)
    assert run.data.params == {"model.hidden": "8"}
    kids = child_runs(tracking, parent.info.run_id)
    assert [k.info.run_id for k in kids] == [child.info.run_id]
    assert kids[0].data.tags["stage"] == "stage1"
    assert client.get_metric_history(child.info.run_id, "loss")[0].step == 3
    # artifacts land in the explicit folder under the output root, not in a temporary directory
    assert (tmp_path / "mlflow" / "artifacts").exists()
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["note.txt"]
    assert "mlflow ui --backend-store-uri sqlite:///" in tracking.ui_command()
