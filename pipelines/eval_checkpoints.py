"""`clad eval-checkpoints`: roll out a finished stage-2 run's saved checkpoints after the fact.

    clad eval-checkpoints --run outputs/train/stage2 --suite libero_object --tasks 0 1 --episodes-per-task 10

For runs trained without `eval_every`. Every model the run folder still holds is rolled out with the same
protocol as evaluation during training (fixed init states and seeds, so every checkpoint sees the same
scenes), and the same files are written in the run folder (docs/closed-loop.md):

    closed_loop/step_NNNNNNN/{checkpoint.json, eval/, result.json}   success with its Wilson 95 % interval
    closed_loop/rank_correlation.json    Spearman rho of each open-loop validation metric vs success
    best/, best_checkpoints.json         the top checkpoints by success

The models come from `models/step_*` (kept by `keep_models_every`, on by default for stage 2), the
`checkpoint_*` folders Ray Train still keeps (`keep_checkpoints`), and `final/`. The validation metrics of a
step are those reported with its checkpoint, completed from the stage's MLflow history. Re-running the same
command resumes: a checkpoint with a result is skipped, a half-evaluated one keeps its finished episodes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pydantic

from clad import storage
from clad.errors import ConfigError
from clad.training.closed_loop import ClosedLoopConfig

log = logging.getLogger(__name__)

__all__ = ["SavedCheckpoint", "find_checkpoints", "evaluate_checkpoints", "register"]


@dataclass
class SavedCheckpoint:
    step: int
    model_dir: Path            # a folder with model.safetensors, config.json, stats.json
    source: str                # "models", "checkpoint" or "final"
    val: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None
    time: float = 0.0          # when it was written


def _model_complete(d: Path) -> bool:
    from pipelines.eval_during_training import MODEL_FILES

    return all((d / n).is_file() for n in MODEL_FILES)


def find_checkpoints(run: Path, last_step: int) -> list[SavedCheckpoint]:
    """Every model of the run folder with its step, one per step (models/ first, then checkpoint_*, then final/)."""
    from pipelines.eval_during_training import SNAPSHOT, _mlflow_run_id

    found: dict[int, SavedCheckpoint] = {}

    def add(c: SavedCheckpoint) -> None:
        found.setdefault(c.step, c)

    for d in sorted((run / "models").glob("step_*")):
        if not _model_complete(d) or not (d / "metrics.json").is_file():
            continue  # cut off while being written: its training step will write it again
        meta = json.loads((d / "metrics.json").read_text())
        add(SavedCheckpoint(int(meta["step"]), d, "models", dict(meta.get("val") or {}), meta.get("mlflow_run_id"),
                            (d / "model.safetensors").stat().st_mtime))
    reported: dict[str, dict] = {}  # checkpoint_* name -> the metrics Ray recorded with it
    if (run / SNAPSHOT).is_file():
        for entry in json.loads((run / SNAPSHOT).read_text()).get("checkpoint_results", []):
            reported[entry["checkpoint_dir_name"]] = entry.get("metrics") or {}
    for d in sorted(run.glob("checkpoint_*")):
        if not _model_complete(d) or not (d / "training_state.json").is_file():
            continue
        metrics = reported.get(d.name, {})
        step = int(metrics.get("step", json.loads((d / "training_state.json").read_text())["step"]))
        add(SavedCheckpoint(step, d, "checkpoint", {k: v for k, v in metrics.items() if k.startswith("val/")},
                            _mlflow_run_id(d), (d / "model.safetensors").stat().st_mtime))
    final = run / "final"
    if _model_complete(final):
        add(SavedCheckpoint(last_step, final, "final", {}, None, (final / "model.safetensors").stat().st_mtime))
    return [found[s] for s in sorted(found)]


def _mlflow_val(tracking, run_ids: set[str]) -> dict[int, dict]:
    """{step: {val metric: value}} from the stage's MLflow run history (empty when the store has no such run)."""
    from mlflow.tracking import MlflowClient

    out: dict[int, dict] = {}
    client = MlflowClient(tracking.uri)
    for run_id in run_ids:
        try:
            keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("val/")]
            for key in keys:
                for m in client.get_metric_history(run_id, key):
                    out.setdefault(int(m.step), {})[key] = float(m.value)
        except Exception as err:  # another store, or unreachable: the metrics reported with checkpoints remain
            log.warning("MLflow run %s is not readable in %s (%s): validation metrics come from the checkpoints "
                        "only; pass --tracking-uri of the store the run logged to", run_id, tracking.uri,
                        str(err).splitlines()[0][:200])
    return out


def load_run_config(run: Path):
    from clad.training.config import TrainConfig

    path = run / "train_config.json"
    if not path.is_file():
        raise ConfigError(f"--run {run}: {path} is missing, so this is not a `clad train` run folder (pass the "
                          "stage-2 run folder, e.g. outputs/train/stage2, the one holding final/ and checkpoint_*)")
    cfg = TrainConfig.model_validate(json.loads(path.read_text()))
    if cfg.stage != "stage2":
        raise ConfigError(f"--run {run} is a {cfg.stage} run: only stage 2 has a policy to roll out; pass the "
                          "stage-2 run folder")
    return cfg


def _check_protocol(run: Path, cl: ClosedLoopConfig) -> None:
    """Refuse, before any rollout, settings that differ from episodes already in this run's closed_loop/."""
    from clad.eval.config import EvalConfig
    from pipelines.eval_during_training import FOLDER, eval_config

    for p in sorted((run / FOLDER).glob("step_*/eval/eval_config.json")):
        try:
            old = EvalConfig.model_validate(json.loads(p.read_text())).result_fields()
        except Exception:
            continue  # unreadable: run_evaluation's own check names it
        new = eval_config(cl, p.parent.parent / "model").result_fields()
        diff = [k for k in ("suite", "base_seed", "max_steps", "settle_steps", "camera_size") if old.get(k) != new.get(k)]
        if diff:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            raise ConfigError(f"--run {run}: {run / FOLDER} already holds rollouts with other settings ({detail}); "
                              "mixing them would compare checkpoints on different scenes: use the original settings, "
                              f"or move {run / FOLDER} aside to start over")


def resolve_tracking_for(run: Path, cfg, uri: str | None):
    """The MLflow store the run logged to: --tracking-uri, $MLFLOW_TRACKING_URI, the run's tracking_uri, or
    the default store under its output_dir when it exists; None (no MLflow) otherwise."""
    import os

    from pipelines.tracking import Tracking, resolve_tracking

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri:
        return Tracking(uri=uri, experiment=cfg.mlflow_experiment)
    if (run.parent / "mlflow" / "mlflow.db").is_file():
        return resolve_tracking(run.parent, experiment=cfg.mlflow_experiment)
    log.warning("no MLflow store found for %s (pass --tracking-uri): validation metrics come from the checkpoints "
                "and nothing is logged to MLflow", run)
    return None


def _refuse_remote(run: str) -> None:
    raise ConfigError(f"--run {run}: clad eval-checkpoints reads a local (or mounted) run folder; copy the run's "
                      f"models/, checkpoint_* and final/ locally (e.g. `aws s3 sync {run} ./run`) and pass that folder")


def evaluate_checkpoints(run: str | Path, cl: ClosedLoopConfig, *, tracking_uri: str | None = None,
                         address: str | None = None, steps: list[int] | None = None, use_mlflow: bool = True,
                         log_file: bool = False):
    """Roll out every saved checkpoint of a finished stage-2 run (or those at `steps`); returns the records.
    `log_file`: write clad.log into <run>/closed_loop/ (once every check passed)."""
    from pipelines.eval_during_training import (FOLDER, RESULT, ClosedLoopEvaluator, _step_dir, preflight,
                                                read_results, stage_checkpoint)
    from pipelines.locking import lock_folder

    if storage.is_remote(run):
        _refuse_remote(run)
    run = Path(run).expanduser().resolve()
    cfg = load_run_config(run)
    last_step = cfg.steps
    found = find_checkpoints(run, last_step)
    if steps:
        missing = sorted(set(steps) - {c.step for c in found})
        if missing:
            raise ConfigError(f"--steps {missing}: {run} has no model at these steps (it has "
                              f"{[c.step for c in found]})")
        found = [c for c in found if c.step in set(steps)]
    if not found:
        raise ConfigError(f"--run {run}: no saved model found (looked for models/step_*, checkpoint_* and final/); "
                          "train with keep_models_every (default: every checkpoint) to keep intermediate models")
    cfg = cfg.replace(closed_loop=cl)
    preflight(cfg, train_cpus=0.0, data_cpus=0.0)  # nothing trains now; tasks in the dataset, K <= init states, room for the env actors
    _check_protocol(run, cl)
    tracking = resolve_tracking_for(run, cfg, tracking_uri) if use_mlflow else None
    run_ids = {c.mlflow_run_id for c in found if c.mlflow_run_id}
    history = _mlflow_val(tracking, run_ids) if tracking is not None and run_ids else {}
    default_run_id = next(iter(sorted(run_ids)), None) if len(run_ids) == 1 else None
    log.info("%s: %d saved models at steps %s", run, len(found), [c.step for c in found])
    # the run folder itself: refused while `clad train` still writes this run
    with lock_folder(run, "clad eval-checkpoints", flag="--run"):
        if log_file:
            from pipelines import logs

            logs.attach_log_file(run / FOLDER)
        todo = [c for c in found if not (_step_dir(run, c.step) / RESULT).is_file()]
        for c in found:
            if c not in todo:
                log.info("step %d: already evaluated (%s)", c.step, _step_dir(run, c.step) / RESULT)
        with contextlib.ExitStack() as stack:
            rollouts = None
            if todo and cl.policy_mode == "in_actor":  # the simulators start once for all these checkpoints
                from pipelines.shared_pool import run_rollouts

                rollouts = stack.enter_context(run_rollouts(cl, run, report_to=str(run / FOLDER / "env_pool.json")))
            evaluator = ClosedLoopEvaluator(cfg, run, tracking=tracking, address=address, run_dir=run,
                                            rollouts=rollouts)
            for c in todo:
                d = _step_dir(run, c.step)
                if not ((d / "model" / "model.safetensors").is_file() and (d / "checkpoint.json").is_file()):
                    val = {**history.get(c.step, {}), **c.val}  # reported with the checkpoint wins
                    stage_checkpoint(run, c.step, c.model_dir, val, c.mlflow_run_id or default_run_id, c.time)
                evaluator.evaluate(c.step)
            evaluator.update_best()
    return read_results(run)


# ------------------------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-checkpoints", help="roll out a finished stage-2 run's saved checkpoints and rank "
                       "open-loop validation metrics against success", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the stage-2 run folder (holds final/, checkpoint_*, models/)")
    p.add_argument("--suite", required=True, help="LIBERO suite to roll out on")
    p.add_argument("--tasks", nargs="+", help="task indices or names (default: every task of the suite)")
    p.add_argument("--episodes-per-task", type=int, default=5, help="K: episode k starts from init state k")
    p.add_argument("--steps", type=int, nargs="+", help="only the models at these training steps")
    p.add_argument("--seed", type=int, default=0, help="base seed (the same for every checkpoint)")
    p.add_argument("--max-steps", type=int, help="step budget per episode (default: the suite's standard one)")
    p.add_argument("--settle-steps", type=int, default=10)
    p.add_argument("--camera-size", type=int, default=128)
    p.add_argument("--actors", type=int, default=1, help="env actors")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--rollout-resource", help="custom Ray resource that marks rollout nodes")
    p.add_argument("--video-episodes", type=int, default=0)
    p.add_argument("--keep-best", type=int, default=3)
    p.add_argument("--no-mlflow", action="store_true", help="neither read nor log MLflow")
    p.add_argument("--tracking-uri", help="the MLflow store the run logged to (default: $MLFLOW_TRACKING_URI, the "
                   "run's tracking_uri, or <output_dir>/mlflow)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a new local cluster)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipelines.eval_during_training import FOLDER, RANKS_FILE, print_closed_loop
    from pipelines.ray_runtime import init_ray

    try:
        cl = ClosedLoopConfig(suite=args.suite, tasks=tuple(args.tasks) if args.tasks else None,
                              episodes_per_task=args.episodes_per_task, base_seed=args.seed, max_steps=args.max_steps,
                              settle_steps=args.settle_steps, camera_size=args.camera_size, actors=args.actors,
                              cpus_per_actor=args.cpus_per_actor, rollout_resource=args.rollout_resource,
                              video_episodes=args.video_episodes, keep_best=args.keep_best)
    except pydantic.ValidationError as err:
        raise ConfigError("invalid options: " + "; ".join(
            f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in err.errors())) from None
    if storage.is_remote(args.run):
        _refuse_remote(args.run)
    run = Path(args.run).expanduser().resolve()
    load_run_config(run)  # before starting Ray
    init_ray(address=args.address)
    try:
        records = evaluate_checkpoints(run, cl, tracking_uri=args.tracking_uri, address=args.address,
                                       steps=args.steps, use_mlflow=not args.no_mlflow, log_file=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished episodes are kept in {run}/{FOLDER}; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(f"\n{len(records)} checkpoints evaluated in {run / FOLDER}:")
    print_closed_loop(run)
    print(f"rank correlation: {run / FOLDER / RANKS_FILE}")
    return 0 if all(r.get("complete", True) for r in records) else 1
