"""Closed-loop evaluation during training: roll out each new checkpoint while training continues.

`clad train stage2 -o eval_every=500 -o closed_loop.suite=libero_object ...` starts a `ClosedLoopEvaluator`
on the driver (the `clad train` process, not a Train worker) next to `TorchTrainer.fit()`:

* a watcher thread reads Ray Train's `checkpoint_manager_snapshot.json` (written only after a checkpoint
  is fully persisted, with the metrics reported alongside it) and, for every checkpoint at a multiple of
  `eval_every` (and the final one), copies its model into `<run>/closed_loop/step_NNNNNNN/model/` before
  Ray's `keep_checkpoints` can delete it;
* an evaluator thread rolls each copy out with `clad eval`'s machinery (pipelines/evaluate.py: a pool of
  env actors, per-episode log, resume) in `step_NNNNNNN/eval/`, so training never waits for a simulator;
  the env actors are ordinary Ray actors (on a cluster, `closed_loop.rollout_resource` pins them to the
  rollout nodes);
* each finished evaluation is logged to the stage's MLflow run at `step=<checkpoint step>`
  (`closed_loop/success_rate`, its Wilson 95 % interval, per-task rates, the checkpoint-to-log delay), the
  top-k checkpoints by success are kept and named (`<run>/best/`, `<run>/best_checkpoints.json`), and the
  Spearman correlation of every validation metric with success across checkpoints is written to
  `<run>/closed_loop/rank_correlation.json` and MLflow.

Interrupting and re-running the same command resumes: a step folder with a model but no `result.json` is
evaluated again (finished episodes are kept), and a metric already in MLflow at that step is not logged twice.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from clad import storage
from clad.errors import ConfigError
from clad.training.closed_loop import ClosedLoopConfig, rank_correlations, select_best, should_evaluate
from clad.training.config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["ClosedLoopEvaluator", "preflight", "eval_config", "read_results", "SNAPSHOT", "FOLDER"]

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's checkpoint manager state
FOLDER = "closed_loop"
RESULT = "result.json"
BEST_DIR = "best"
BEST_FILE = "best_checkpoints.json"
RANKS_FILE = "rank_correlation.json"
MODEL_FILES = ("model.safetensors", "config.json", "stats.json")
# copied when present: the instruction table, so rollouts and best/ condition on the training instructions
OPTIONAL_MODEL_FILES = ("tasks.json",)  # clad/model/task_table.py TASK_TABLE
SUCCESS_KEY = "closed_loop/success_rate"


# ------------------------------------------------------------------------------------------- config
def eval_config(cl: ClosedLoopConfig, model_dir: str | Path):
    """The `clad eval` config of one checkpoint's rollouts."""
    from clad.eval.config import EvalConfig
    from clad.eval.policy import PolicySpec

    return EvalConfig(suite=cl.suite, tasks=cl.tasks, episodes_per_task=cl.episodes_per_task, base_seed=cl.base_seed,
                      max_steps=cl.max_steps, settle_steps=cl.settle_steps, camera_size=cl.camera_size,
                      policy=PolicySpec(kind="clad", checkpoint=str(model_dir)), policy_mode=cl.policy_mode,
                      actors=cl.actors, cpus_per_actor=cl.cpus_per_actor, rollout_resource=cl.rollout_resource,
                      video_episodes=cl.video_episodes)


def preflight(cfg: TrainConfig, train_cpus: float, data_cpus: float | None = None, check_room: bool = True) -> None:
    """Refuse, before training starts, what would only fail at the first evaluation: tasks the dataset does
    not hold, more episodes per task than init states, no room on the cluster for the env actors."""
    import ray

    from clad.data.manifest import TASKS
    from clad.libero.suites import get_task, list_tasks, load_init_states
    from pipelines.dataset import WINDOW_CPUS

    cl = cfg.closed_loop
    wanted = cl.tasks if cl.tasks is not None else [str(i) for i in range(len(list_tasks(cl.suite)))]
    specs = [get_task(cl.suite, t) for t in wanted]  # a bad suite or task raises a CladError naming it
    tasks_file = storage.join(cfg.dataset_dir, TASKS)  # the dataset may be in a bucket
    if storage.is_file(tasks_file):
        have = {t["name"] for t in storage.read_json(tasks_file).get("tasks", [])}
        missing = [s.name for s in specs if s.name not in have]
        if missing:
            raise ConfigError(f"closed_loop.tasks: {cl.suite} tasks {missing} are not in the dataset "
                              f"({tasks_file} lists {sorted(have)}): the policy was never shown them; set "
                              "closed_loop.tasks to tasks of the dataset (indices or names)")
    for s in specs:
        n = len(load_init_states(s))
        if cl.episodes_per_task > n:
            raise ConfigError(f"closed_loop.episodes_per_task={cl.episodes_per_task} but {cl.suite}/{s.name} has "
                              f"{n} init states: successive checkpoints must see the same fixed scenes, so set "
                              f"closed_loop.episodes_per_task <= {n}")
    need = cl.actors * cl.cpus_per_actor
    if not check_room:  # the env actors exist already (`clad tune`'s shared pool, reserved by the sweep)
        return
    if cl.rollout_resource:
        nodes = [n for n in ray.nodes() if n.get("Alive") and cl.rollout_resource in n.get("Resources", {})]
        room = sum(n["Resources"].get("CPU", 0.0) for n in nodes)
        where = f"nodes with the resource '{cl.rollout_resource}'"
    else:
        data_cpus = WINDOW_CPUS if data_cpus is None else data_cpus
        room = float(ray.cluster_resources().get("CPU", 0.0)) - train_cpus - data_cpus
        where = (f"the cluster after training ({train_cpus:g} CPU) and its data tasks ({data_cpus:g} CPU)"
                 if train_cpus or data_cpus else "the cluster")
    if need > room + 1e-9:
        raise ConfigError(f"closed_loop: {cl.actors} env actors x {cl.cpus_per_actor:g} CPU = {need:g} CPU, but "
                          f"{where} leave {max(room, 0):g} CPU: lower closed_loop.actors / closed_loop.cpus_per_actor"
                          f" or cpus_per_worker, or add rollout nodes")


# ------------------------------------------------------------------------------------------- records
def step_name(step: int) -> str:
    return f"step_{step:07d}"


def _step_dir(root: Path, step: int) -> Path:
    return root / FOLDER / step_name(step)


def stage_checkpoint(run_dir: Path, step: int, src: str | Path, val: dict, mlflow_run_id: str | None,
                     checkpoint_time: float) -> Path:
    """Copy a checkpoint's model into <run>/closed_loop/step_NNNNNNN/model/ and record what the evaluation
    of it needs (its validation metrics, the stage's MLflow run); the evaluator then rolls it out."""
    target = _step_dir(run_dir, step)
    _copy_dir(src, target / "model")
    meta = {"step": step, "checkpoint": str(src), "mlflow_run_id": mlflow_run_id,
            "val": {k: v for k, v in val.items() if k.startswith("val/") and isinstance(v, (int, float))},
            # when the checkpoint was persisted (its last file), for the checkpoint-to-log delay
            "checkpoint_time": checkpoint_time, "copied_time": time.time()}
    (target / "checkpoint.json").write_text(json.dumps(meta, indent=1) + "\n")
    return target


def read_results(run_dir: str | Path) -> list[dict]:
    """Every finished checkpoint evaluation of a run, by step."""
    out = []
    for p in sorted((Path(run_dir) / FOLDER).glob(f"step_*/{RESULT}")):
        try:
            out.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            log.warning("%s is unreadable; its checkpoint is evaluated again", p)
    return sorted(out, key=lambda r: r["step"])


def _mlflow_run_id(checkpoint_dir: str | Path) -> str | None:
    """The stage's MLflow run id, from the checkpoint's training_state.json (read without its tensors)."""
    try:
        payload = json.loads(storage.read_text(storage.join(checkpoint_dir, "training_state.json")))
    except (OSError, json.JSONDecodeError):  # StorageError is an OSError
        return None
    for key, value in (payload.get("extra") or {}).get("__dict__", []):
        if key == "mlflow_run_id":
            return value or None
    return None


def _copy_dir(src: str | Path, dst: Path, files=MODEL_FILES) -> None:
    """Copy `files` of src (a local folder or a URI) into dst atomically (a half-copied model is never seen
    as a model)."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if storage.is_remote(src):  # a checkpoint of a run in object storage: only the model files are fetched
        for name in files:
            if not storage.is_file(storage.join(src, name)):
                raise FileNotFoundError(storage.join(src, name))
            (tmp / name).write_bytes(storage.read_bytes(storage.join(src, name)))
        for name in OPTIONAL_MODEL_FILES:
            if storage.is_file(storage.join(src, name)):
                (tmp / name).write_bytes(storage.read_bytes(storage.join(src, name)))
    else:
        src = Path(src)
        for name in files:
            shutil.copy2(src / name, tmp / name)
        for name in OPTIONAL_MODEL_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------- evaluator
class ClosedLoopEvaluator:
    """Watches a training run's checkpoints and rolls them out on env actors, off the training path.

    `experiment_dir` is Ray Train's run folder (storage_path/name), where checkpoint_* and the snapshot
    live; everything this writes goes under `cfg.run_dir`. `on_result(record)` is called after each
    checkpoint's result is logged (the sweep's hook and tests')."""

    def __init__(self, cfg: TrainConfig, experiment_dir: str | Path, tracking=None, address: str | None = None,
                 on_result: Callable[[dict], None] | None = None, run_dir: str | Path | None = None,
                 rollouts=None):
        self.cfg = cfg
        self.cl = cfg.closed_loop
        # Ray Train's run folder: a local path or, for an output_dir in object storage, a URI
        self.experiment_dir = str(experiment_dir) if storage.is_remote(experiment_dir) else Path(experiment_dir)
        # an output_dir in object storage: everything is written in a local working folder and uploaded to
        # `self.location` after each checkpoint's evaluation (RunMirror)
        self.mirror = RunMirror(cfg.run_location) if run_dir is None and storage.is_remote(cfg.run_location) else None
        self.run_dir = (Path(run_dir) if run_dir is not None  # `clad eval-checkpoints`: the given folder
                        else self.mirror.local if self.mirror else cfg.run_dir)
        self.tracking = tracking
        self.address = address
        self.on_result = on_result
        self.rollouts = rollouts  # `clad tune`'s shared env pool (pipelines/shared_pool.py SharedRollouts), or None
        self.last_step = min(cfg.steps, cfg.stop_at_step or cfg.steps)
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._queued: set[int] = set()
        self._training_done = threading.Event()
        self._watcher: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self.errors: list[str] = []
        self.timings: dict[str, float] = {}
        self.missed: list[str] = []   # checkpoints deleted by Ray before they could be copied

    # -- lifecycle
    def start(self) -> "ClosedLoopEvaluator":
        if self.mirror is not None:
            self.mirror.pull()  # results of an interrupted run, so its finished checkpoints are not evaluated again
        (self.run_dir / FOLDER).mkdir(parents=True, exist_ok=True)
        # resume: copied checkpoints of an interrupted run without a result are evaluated first
        for d in sorted((self.run_dir / FOLDER).glob("step_*")):
            step = int(d.name.split("_")[1])
            if (d / RESULT).is_file():
                self._queued.add(step)
            elif (d / "model" / MODEL_FILES[0]).is_file() and (d / "checkpoint.json").is_file():
                self._enqueue(step)
        for r in read_results(self.run_dir):  # finished but perhaps not yet logged (killed in between)
            self._log_mlflow(r)
        self._watcher = threading.Thread(target=self._watch, name="closed-loop-watch", daemon=True)
        self._worker = threading.Thread(target=self._work, name="closed-loop-eval", daemon=True)
        self._watcher.start()
        self._worker.start()
        return self

    def finish(self, timeout: float | None = None) -> list[dict]:
        """Training is over: pick up its last checkpoints, wait for every pending evaluation, return all results."""
        t0 = time.time()
        self._training_done.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        self.update_best()
        if self.errors or self.missed:
            log.error("closed-loop evaluation incomplete in %s: %s%s; re-run the same command to retry the "
                      "unfinished checkpoints", self.run_dir / FOLDER, "; ".join(self.errors),
                      f"; deleted before they could be copied: {self.missed}" if self.missed else "")
        # how long `clad train` waited for rollouts after training ended (the part that did not overlap)
        self.timings = {"training_end": t0, "wait_after_training_s": time.time() - t0}
        (self.run_dir / FOLDER / "timings.json").write_text(json.dumps(self.timings) + "\n")
        if self.mirror is not None:
            self.mirror.push()
        return read_results(self.run_dir)

    def _enqueue(self, step: int) -> None:
        if step not in self._queued:
            self._queued.add(step)
            self._queue.put(step)

    # -- watcher: snapshot -> model copies
    def _watch(self) -> None:
        while True:
            done = self._training_done.is_set()
            try:
                self.scan()
            except Exception as err:  # never take training down; say why evaluation stalled
                log.exception("closed-loop watcher: %s", err)
                self.errors.append(f"watcher: {err}")
            if done:
                return
            self._training_done.wait(self.cl.poll_s)

    def scan(self) -> list[int]:
        """Copy the models of newly persisted checkpoints that are due for evaluation; returns their steps."""
        snap = storage.join(self.experiment_dir, SNAPSHOT)
        if not storage.is_file(snap):
            return []
        try:
            state = json.loads(storage.read_text(snap))
        except json.JSONDecodeError:  # caught mid-write; the next poll reads it whole
            return []
        new = []
        for entry in state.get("checkpoint_results", []):
            metrics = entry.get("metrics") or {}
            step = int(metrics.get("step", -1))
            if step < 0 or not should_evaluate(step, self.cfg.eval_every, self.cfg.steps) or step in self._queued:
                continue
            target = _step_dir(self.run_dir, step)
            if (target / RESULT).is_file():
                self._queued.add(step)
                continue
            src = storage.join(self.experiment_dir, entry["checkpoint_dir_name"])
            try:
                # when the checkpoint was persisted; for a bucket, when it was seen (object times cost a request each)
                checkpoint_time = (time.time() if storage.is_remote(src) else
                                   max(p.stat().st_mtime for p in Path(src).iterdir()))
                stage_checkpoint(self.run_dir, step, src, metrics, _mlflow_run_id(src), checkpoint_time)
            except FileNotFoundError:
                self.missed.append(entry["checkpoint_dir_name"])
                log.warning("checkpoint %s (step %d) was deleted before it could be copied for evaluation: "
                            "raise keep_checkpoints", src, step)
                self._queued.add(step)
                continue
            self._enqueue(step)
            new.append(step)
        return new

    # -- worker: model copies -> rollouts -> MLflow, best-k, rank correlation
    def _work(self) -> None:
        while True:
            step = self._queue.get()
            if step is None:
                return
            try:
                self.evaluate(step)
            except Exception as err:  # a failed evaluation stays resumable (no result.json)
                log.exception("closed-loop evaluation of step %d failed: %s", step, err)
                self.errors.append(f"step {step}: {err}")

    def evaluate(self, step: int) -> dict:
        from pipelines.evaluate import run_evaluation

        d = _step_dir(self.run_dir, step)
        meta = json.loads((d / "checkpoint.json").read_text())
        # a run in object storage: env actors (on any node) read the model from the bucket, not this disk
        model = self.mirror.upload_model(step) if self.mirror is not None else d / "model"
        cfg = eval_config(self.cl, model)
        factory = None
        if self.rollouts is not None:
            factory = lambda _pool_cfg, spec: self.rollouts.client(spec, cfg.max_attempts)  # noqa: E731
        report = run_evaluation(cfg, d / "eval", address=self.address, use_mlflow=False, progress=False,
                                pool_factory=factory)
        s = report.summary["summary"]
        o = s["overall"]
        record = {"step": step, "successes": o["successes"], "n": o["n"], "rate": o["rate"], "ci95": o["ci95"],
                  "goal_progress": o.get("goal_progress"), "errors": o["errors"],
                  "complete": report.summary["complete"],
                  "tasks": {str(t["task_index"]): t["rate"] for t in s["tasks"]},
                  "val": meta["val"], "mlflow_run_id": meta.get("mlflow_run_id"), "model": str(d / "model"),
                  "eval_dir": str(d / "eval"), "checkpoint_time": meta["checkpoint_time"],
                  "eval_wall_s": report.summary["timings"]["wall_s"]}
        record["delay_s"] = time.time() - meta["checkpoint_time"]
        (d / RESULT).write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
        self._log_mlflow(record)
        self.update_best()
        if self.mirror is not None:
            self.mirror.push()
        log.info("closed loop: step %d success %d/%d (%.1f %%, 95%% CI %.1f-%.1f), %.0f s after the checkpoint",
                 step, o["successes"], o["n"], 100 * o["rate"], 100 * o["ci95"][0], 100 * o["ci95"][1],
                 record["delay_s"])
        if self.on_result is not None:
            self.on_result(record)
        return record

    def _log_mlflow(self, record: dict) -> None:
        run_id = record.get("mlflow_run_id")
        if self.tracking is None or not run_id:
            return
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking.uri)
        step = int(record["step"])
        # idempotent: a resumed run whose result was logged before it was killed logs nothing twice
        if any(m.step == step for m in client.get_metric_history(run_id, SUCCESS_KEY)):
            return
        now = int(time.time() * 1000)
        values = {"closed_loop/ci95_low": record["ci95"][0], "closed_loop/ci95_high": record["ci95"][1],
                  "closed_loop/episodes": record["n"], "closed_loop/delay_s": record.get("delay_s", 0.0),
                  **({"closed_loop/goal_progress": record["goal_progress"]}
                     if record.get("goal_progress") is not None else {}),
                  **{f"closed_loop/task_{t}": r for t, r in record.get("tasks", {}).items()}}
        # the success rate goes last: its presence marks the step as logged
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()] + \
                  [Metric(SUCCESS_KEY, float(record["rate"]), now, step)]
        for attempt in range(5):  # the SQLite store is shared with the training worker: retry a locked write
            try:
                client.log_batch(run_id, metrics=metrics)
                return
            except Exception as err:
                if attempt == 4:
                    log.warning("MLflow logging of step %d failed (%s); the result is in %s", step, err,
                                record.get("eval_dir"))
                    return
                time.sleep(1 + attempt)

    def _best_location(self) -> str:
        """Where users find best/: in the bucket for a run in object storage."""
        return storage.join(self.mirror.location, BEST_DIR) if self.mirror else str(self.run_dir / BEST_DIR)

    def update_best(self) -> None:
        records = read_results(self.run_dir)
        if not records:
            return
        best = select_best(records, self.cl.keep_best, self.cl.tie_break)
        if best:
            top = Path(best[0]["model"])
            pointer_file = self.run_dir / BEST_FILE
            old = json.loads(pointer_file.read_text()) if pointer_file.is_file() else {}
            if old.get("best", [{}])[0].get("step") != best[0]["step"] or not (self.run_dir / BEST_DIR).is_dir():
                _copy_dir(top, self.run_dir / BEST_DIR)
            doc = {"ranked_by": ["closed_loop success rate (higher)", f"{self.cl.tie_break} (lower)", "step (later)"],
                   "best_dir": self._best_location(),
                   "best": [{"rank": i + 1, **{k: r[k] for k in ("step", "successes", "n", "rate", "ci95", "model")},
                             self.cl.tie_break: r["val"].get(self.cl.tie_break)} for i, r in enumerate(best)],
                   "evaluated_steps": [r["step"] for r in records]}
            pointer_file.write_text(json.dumps(doc, indent=1) + "\n")
            if self.cl.prune_models:
                keep = {r["step"] for r in best}
                for r in records:
                    if r["step"] not in keep:
                        shutil.rmtree(Path(r["model"]), ignore_errors=True)
                        if self.mirror is not None:
                            self.mirror.delete_model(r["step"])
        ranks = rank_correlations(records)
        (self.run_dir / FOLDER / RANKS_FILE).write_text(json.dumps(
            {"what": "Spearman rho (with its permutation p-value) between each validation metric (lower = better) "
                     "and closed-loop success across this run's checkpoints, and under goal_progress the same "
                     "against the mean fraction of goal predicates met; agreement shows as rho near -1",
             "metrics": ranks, "success": {str(r["step"]): r["rate"] for r in records},
             "checkpoints": [{k: r.get(k) for k in ("step", "successes", "n", "rate", "ci95", "goal_progress", "val",
                                                    "complete")}
                             for r in records]}, indent=1) + "\n")
        run_id = next((r.get("mlflow_run_id") for r in records if r.get("mlflow_run_id")), None)
        if self.tracking is not None and run_id:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.tracking.uri)
            last = records[-1]["step"]
            try:
                for name, v in ranks.items():
                    if v["rho"] is not None and math.isfinite(v["rho"]):
                        client.log_metric(run_id, f"closed_loop/spearman/{name}", v["rho"], step=last)
                    g = v.get("goal_progress") or {}
                    if g.get("rho") is not None and math.isfinite(g["rho"]):
                        client.log_metric(run_id, f"closed_loop/spearman_goal_progress/{name}", g["rho"], step=last)
                if best:
                    client.set_tag(run_id, "clad.best_checkpoint", self._best_location())
                    client.set_tag(run_id, "clad.best_step", str(best[0]["step"]))
            except Exception as err:
                log.warning("MLflow logging of the rank correlation failed (%s)", err)


class RunMirror:
    """The closed-loop outputs of a run whose output_dir is in object storage: written in a local working folder
    (with the run folder's layout) and uploaded after each checkpoint's evaluation: closed_loop/ without the
    model copies, best_checkpoints.json, and best/ when the best checkpoint changes."""

    def __init__(self, location: str):
        import hashlib

        self.location = storage.normalize(location)
        digest = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        self.local = storage.cache_root().parent / "work" / f"{storage.name(self.location)}-{digest}"
        self.local.mkdir(parents=True, exist_ok=True)
        self._pushed: dict[str, tuple[int, int]] = {}
        self._best_step = None

    def pull(self) -> None:
        """Fetch closed_loop/ from the bucket; a local file at least as long (a log not yet uploaded) is kept."""
        base = storage.join(self.location, FOLDER)
        for loc in storage.list_files(base, recursive=True):  # [] for a new run
            rel = loc[len(base):].lstrip("/")
            dst = self.local / FOLDER / rel
            data = storage.read_bytes(loc)
            if dst.is_file() and dst.stat().st_size >= len(data):
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)

    def _model_location(self, step: int) -> str:
        return storage.join(self.location, FOLDER, step_name(step), "model")

    def upload_model(self, step: int) -> str:
        """The step's model copy in the bucket (uploaded once, weights last); returns its location."""
        loc = self._model_location(step)
        if not storage.is_file(storage.join(loc, MODEL_FILES[0])):
            storage.upload_dir(self.local / FOLDER / step_name(step) / "model", loc, last=[MODEL_FILES[0]])
        return loc

    def delete_model(self, step: int) -> None:
        storage.delete(self._model_location(step))

    def push(self) -> None:
        """Upload what changed; model copies stay local (best/ carries the best one); result.json last per step."""
        files = [p for p in sorted((self.local / FOLDER).rglob("*")) if p.is_file()
                 and "model" not in p.relative_to(self.local / FOLDER).parts[1:2] and not p.name.startswith(".")
                 and ".tmp" not in p.parent.name and p.name != "lock" and "mlflow" not in p.parts]
        files.sort(key=lambda p: p.name == RESULT)  # a result in the bucket always has its episodes there
        for p in files:
            rel = p.relative_to(self.local).as_posix()
            stat = p.stat()
            if self._pushed.get(rel) == (stat.st_size, stat.st_mtime_ns):
                continue
            storage.upload_file(p, storage.join(self.location, rel))
            self._pushed[rel] = (stat.st_size, stat.st_mtime_ns)
        best_file = self.local / BEST_FILE
        if best_file.is_file():
            step = json.loads(best_file.read_text())["best"][0]["step"]
            if step != self._best_step and (self.local / BEST_DIR / MODEL_FILES[0]).is_file():
                storage.upload_dir(self.local / BEST_DIR, storage.join(self.location, BEST_DIR),
                                   last=[MODEL_FILES[0]])
                self._best_step = step
            storage.write_json(storage.join(self.location, BEST_FILE), json.loads(best_file.read_text()), indent=1)


def closed_loop_dir(cfg: TrainConfig) -> Path:
    """The local folder that holds a run's closed-loop outputs (a working copy for a run in a bucket)."""
    return RunMirror(cfg.run_location).local if storage.is_remote(cfg.run_location) else cfg.run_dir


def print_closed_loop(run_dir: str | Path) -> None:
    """The end-of-training summary: success per checkpoint, the best one, the rank correlations."""
    run_dir = Path(run_dir)
    for r in read_results(run_dir):
        lo, hi = r["ci95"]
        progress = "" if r.get("goal_progress") is None else f"  goal progress {r['goal_progress']:.2f}"
        print(f"  step {r['step']:>7}: success {r['successes']}/{r['n']} = {100 * r['rate']:.1f} % "
              f"[{100 * lo:.1f}, {100 * hi:.1f}]{progress}  val/loss {r['val'].get('val/loss', float('nan')):.4g}")
    best = run_dir / BEST_FILE
    if best.is_file():
        top = json.loads(best.read_text())["best"][0]
        print(f"Best checkpoint: step {top['step']} ({best}); `clad eval --checkpoint {run_dir / BEST_DIR}`")
    ranks = run_dir / FOLDER / RANKS_FILE
    if ranks.is_file():
        metrics = json.loads(ranks.read_text())["metrics"]

        def fmt(v: dict) -> str:
            if v.get("rho") is None:
                return "n/a"
            return f"{v['rho']:+.2f}" + ("" if v.get("p") is None else f" (p {v['p']:.2g})")

        print("Spearman rho (validation metric vs success; -1 = the metric ranks checkpoints as success does): "
              + ", ".join(f"{k} {fmt(v)}" for k, v in metrics.items()))
        if any("goal_progress" in v for v in metrics.values()):
            print("Spearman rho (validation metric vs goal progress): "
                  + ", ".join(f"{k} {fmt(v['goal_progress'])}" for k, v in metrics.items() if "goal_progress" in v))
