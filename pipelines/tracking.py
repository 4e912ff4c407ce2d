"""The one place that sets up MLflow tracking for every clad command.

Where runs go, in order of precedence:
1. `--tracking-uri` on the command line (e.g. `http://mlflow.internal:5000` on a cluster);
2. `$MLFLOW_TRACKING_URI`;
3. a local SQLite store under the output root: `<root>/mlflow/mlflow.db`, with artifacts in
   `<root>/mlflow/artifacts` (an explicit folder, never Ray's temporary session directory; MLflow 3 has put
   the plain file store in maintenance mode).

Runs nest across processes through the `mlflow.parentRunId` tag, so a Ray worker or a Tune trial can open
a child of the driver's run without sharing its Python state.

Failure policy: `check_tracking` reaches the store once, without retries, before a command starts any work
(an unreachable server is a clear error naming the URI, not minutes of retries inside a worker). During a
run, `GuardedTracking` turns a tracking failure into one warning: results never depend on MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
from mlflow.tracking import MlflowClient

from clad.errors import CladError

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "clad"
PARENT_TAG = "mlflow.parentRunId"
# MLflow's HTTP defaults (7 retries, exponential back-off, 120 s timeout) turn an outage into minutes of
# silence; a clad command retries a little and then reports (users can still override these variables).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
for _k, _v in HTTP_DEFAULTS.items():
    os.environ.setdefault(_k, _v)


class TrackingUnavailable(CladError):
    """The MLflow tracking store cannot be reached or written."""


@dataclass(frozen=True)
class Tracking:
    """A resolved tracking target: pass it (it is plain data) to Ray workers and trials."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT
    artifact_location: str | None = None

    def activate(self) -> str:
        """Point this process's MLflow at the store; create the experiment if needed. Returns its id."""
        mlflow.set_tracking_uri(self.uri)
        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            experiment_id = exp.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(self.experiment, artifact_location=self.artifact_location)
            except mlflow.exceptions.MlflowException:  # created concurrently by another process
                experiment_id = client.get_experiment_by_name(self.experiment).experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)
        return experiment_id

    def ui_command(self) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.uri} in a browser"
        return f"mlflow ui --backend-store-uri {self.uri} --port 5000   # then open http://127.0.0.1:5000"


def check_tracking(tracking: Tracking, timeout_s: float = 5.0, no_tracking_hint: str = "") -> None:
    """Reach the store once, with no retries and a short timeout, before any work starts (no global MLflow
    state is changed). Raises TrackingUnavailable naming the URI and the fix."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, timeout_s)))
    try:
        MlflowClient(tracking.uri).get_experiment_by_name(tracking.experiment)
    except Exception as err:  # MlflowException, requests errors, sqlalchemy errors: all mean "cannot track"
        text = str(err).strip()
        reason = ("connection refused" if "Connection refused" in text else
                  "timed out" if "timed out" in text.lower() else text.splitlines()[0][:300] if text else "")
        if tracking.uri.startswith(("http://", "https://")):
            fix = (f"start the server (e.g. `mlflow server --host 0.0.0.0 --port 5000`) or pass a reachable "
                   f"--tracking-uri / $MLFLOW_TRACKING_URI; without either, runs go to a local SQLite store")
        else:
            fix = "check that the path exists and is writable, or pass another --tracking-uri"
        raise TrackingUnavailable(f"MLflow tracking store {tracking.uri} cannot be used ({type(err).__name__}"
                                  f"{': ' + reason if reason else ''}): {fix}{no_tracking_hint}. Nothing was started.") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class GuardedTracking:
    """MLflow calls of a long run that must never fail the run: the first failure is logged once (with what
    was lost) and later calls are skipped. A tracking outage is a tracking problem, not a training failure,
    so it must never reach Ray Train's restart logic."""

    def __init__(self, what: str = "training"):
        self.what = what
        self.enabled = True
        self.error: str | None = None

    def call(self, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            self.enabled = False
            self.error = f"{type(err).__name__}: {str(err).strip()[:300]}"
            log.warning("MLflow tracking failed (%s); %s continues without tracking (checkpoints and Ray Train's "
                        "results are unaffected)", self.error, self.what)
            return None


def terminate_run(uri: str, run_id: str, status: str = "KILLED") -> bool:
    """Mark a run that will not continue (e.g. after Ctrl-C) so that it does not stay RUNNING."""
    try:
        client = MlflowClient(uri)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)
        return True
    except Exception as err:  # best effort: the user is already stopping
        log.warning("could not mark MLflow run %s as %s: %s", run_id, status, err)
        return False


def resolve_tracking(output_root: str | Path, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> Tracking:
    """Decide where runs go (see the module docstring)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return Tracking(uri=uri, experiment=experiment)
    from clad import storage

    if storage.is_remote(output_root):
        # SQLite cannot live in a bucket: keep the store on this machine (workers of a multi-node cluster
        # cannot reach it; there, pass --tracking-uri http://<head>:5000 with proxied artifacts)
        root = storage.cache_root().parent / "mlflow" / storage.name(output_root)
        log.warning("output %s is in object storage and no tracking URI is set: MLflow runs go to %s on this "
                    "machine; on a multi-node cluster pass --tracking-uri http://<head>:5000", output_root, root)
    else:
        root = Path(output_root).resolve() / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    artifacts = root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    return Tracking(uri=f"sqlite:///{root / 'mlflow.db'}", experiment=experiment, artifact_location=artifacts.as_uri())


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"}; MLflow params are flat strings of at most 6000 chars."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def git_commit(path: str | Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path or Path(__file__).resolve().parent, text=True,
                              capture_output=True, check=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def start_run(tracking: Tracking, name: str, *, parent_run_id: str | None = None, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open (or re-open, with `run_id`) a run, as a child of `parent_run_id` when given."""
    tracking.activate()
    all_tags = {"clad.git_commit": git_commit()}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    all_tags.update(tags or {})
    # nested=True lets a process that already has an active run open a child in-process
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else name, tags=all_tags, nested=True) as run:
        if params and run_id is None:
            mlflow.log_params(flatten_params(params))
        yield run


def child_runs(tracking: Tracking, parent_run_id: str) -> list[mlflow.entities.Run]:
    client = MlflowClient(tracking.uri)
    exp = client.get_experiment_by_name(tracking.experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
