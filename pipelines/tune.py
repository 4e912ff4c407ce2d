"""`clad tune`: hyperparameter sweeps (foresight horizon tau x EMA decay m) on Ray Tune.

    clad tune --space tune_spaces/tau_ema.yaml --config my_train.yaml [-o steps=2000] [--name sweep1]

Pattern (the one Ray's documentation recommends for Ray Train V2): each Tune trial is a light driver
function (0.05 CPU) that launches its own TorchTrainer with `TuneReportCallback`, so the trainer's
validation reports reach the Tune scheduler (ASHA stops weak trials early; PBT is available). Concurrency
is derived from the resources a trial's workers need and what the cluster has.

Outputs in <output_dir>/<name>/: Tune's state (re-running the same command resumes an interrupted sweep),
`results.csv` (trial, swept values, objective, steps), `best_config.yaml` (a TrainConfig that
`clad train` accepts), and an MLflow parent run with one nested run per trial.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from clad import storage
from clad.config import FrozenConfig, apply_overrides, config_from_dict, read_yaml
from clad.errors import ConfigError
from clad.training.closed_loop import ClosedLoopConfig
from clad.training.config import TrainConfig, load_train_config, resolve_model_section
from pipelines.cli_args import add_cluster_args, add_overrides

log = logging.getLogger(__name__)

# objective name -> (stages a trial trains, metric reported by the last stage)
OBJECTIVES = {
    "recon_at_horizon": (("stage1",), "val/recon_at_horizon"),
    "stage2_action_error": (("stage1", "stage2"), "val/action_mse"),
    # closed loop: a short stage 2 whose checkpoints are rolled out while it trains; one report per
    # success round (every `eval_every` steps), so ASHA stops trials on success (docs/closed-loop.md)
    "closed_loop_success": (("stage1", "stage2"), "closed_loop/success_rate"),
}
CLOSED_LOOP = "closed_loop_success"
DRIVER_CPUS = 0.05  # a trial's driver only waits on its trainer


class SchedulerConfig(FrozenConfig):
    type: Literal["asha", "pbt", "fifo"] = "asha"
    max_t: int = pydantic.Field(8, ge=1)  # in validation reports
    grace_period: int = pydantic.Field(2, ge=1)
    reduction_factor: float = pydantic.Field(2, gt=1)
    perturbation_interval: int = pydantic.Field(2, ge=1)  # PBT only


class TrialResources(FrozenConfig):
    num_workers: int = pydantic.Field(1, ge=1)
    cpus_per_worker: float = pydantic.Field(0.9, gt=0)
    gpus_per_worker: float = pydantic.Field(0, ge=0)


class SweepSpace(FrozenConfig):
    name: str
    objective: Literal["recon_at_horizon", "stage2_action_error", "closed_loop_success"] = "recon_at_horizon"
    mode: Literal["min", "max"] = "min"
    num_samples: int = pydantic.Field(8, ge=1)
    resources_per_trial: TrialResources = TrialResources()
    scheduler: SchedulerConfig = SchedulerConfig()
    # dotted TrainConfig field -> one sampler: {choice: [...]}, {uniform: [a, b]}, {loguniform: [a, b]},
    # {one_minus_loguniform: [a, b]} (samples x log-uniformly in [a, b] and uses 1 - x: EMA decays)
    space: dict[str, dict[str, Any]]
    # closed_loop_success only: stage 2 of every trial runs `stage2_steps` steps (None = the base config's
    # steps) and rolls out its checkpoint every `eval_every` steps with these settings
    stage2_steps: int | None = pydantic.Field(None, ge=1)
    eval_every: int = pydantic.Field(0, ge=0)
    closed_loop: ClosedLoopConfig = ClosedLoopConfig()

    @pydantic.model_validator(mode="after")
    def _closed_loop(self):
        if self.objective == CLOSED_LOOP:
            if not self.eval_every or not self.closed_loop.suite:
                raise ValueError("objective closed_loop_success needs eval_every (steps between success rounds) "
                                 "and closed_loop.suite (e.g. libero_object) in the space file")
            if self.mode != "max":
                raise ValueError("objective closed_loop_success is a success rate: set mode: max")
            if self.closed_loop.policy_mode != "in_actor":
                raise ValueError("closed_loop.policy_mode=server: the sweep's shared env pool runs each policy in "
                                 "its env actors; set closed_loop.policy_mode: in_actor")
        return self

    @pydantic.field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        kinds = {"choice", "uniform", "loguniform", "one_minus_loguniform"}
        for key, spec in v.items():
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in kinds:
                raise ValueError(f"space.{key} must be one of {sorted(kinds)} with its arguments, e.g. {{choice: [2, 4]}}")
            kind, args = next(iter(spec.items()))
            if kind != "choice" and (not isinstance(args, list) or len(args) != 2 or not args[0] < args[1]):
                raise ValueError(f"space.{key}.{kind} needs [low, high] with low < high, got {args}")
            if kind in ("loguniform", "one_minus_loguniform") and args[0] <= 0:
                raise ValueError(f"space.{key}.{kind} needs a positive low bound, got {args[0]}")
        return v


def load_space(path: str | Path) -> SweepSpace:
    return config_from_dict(SweepSpace, read_yaml(path), str(path))


def _sampler(kind: str, args):
    from ray import tune

    if kind == "choice":
        return tune.choice(list(args))
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    lo, hi = math.log(args[0]), math.log(args[1])

    def one_minus(_spec):
        import random

        return 1.0 - math.exp(random.uniform(lo, hi))

    return tune.sample_from(one_minus)


def param_space(space: SweepSpace) -> dict[str, Any]:
    # Tune keys cannot contain dots in nested lookups; keep them flat and apply as overrides in the driver
    return {key: _sampler(*next(iter(spec.items()))) for key, spec in space.space.items()}


def trial_train_config(base: dict[str, Any], sampled: dict[str, Any], stage: str, trial_id: str,
                       sweep_dir: str | Path,
                       parent_run_id: str | None, resources: TrialResources,
                       closed_loop: dict[str, Any] | None = None) -> TrainConfig:
    if stage == "stage2" and closed_loop:  # the closed-loop objective's short stage 2 with rollouts
        base = {**base, **closed_loop}
    overrides = [f"{k}={v}" for k, v in sampled.items()] + [
        f"stage={stage}", f"run_name={trial_id}-{stage}", f"output_dir={storage.join(sweep_dir, 'trials')}",
        f"num_workers={resources.num_workers}", f"cpus_per_worker={resources.cpus_per_worker}",
        f"use_gpu={resources.gpus_per_worker > 0}",
    ]
    if parent_run_id:
        overrides.append(f"parent_run_id={parent_run_id}")
    if stage == "stage2":
        overrides.append(f"stage1_checkpoint={storage.join(sweep_dir, 'trials', f'{trial_id}-stage1')}")
    data = apply_overrides(base, overrides, source="sweep")
    return config_from_dict(TrainConfig, resolve_model_section(data, "sweep trial"), f"sweep trial {trial_id}")


def trial_driver(config: dict[str, Any]) -> None:
    """One Tune trial: train the objective's stages with the sampled values; the last one reports to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.tracking import Tracking
    from pipelines.train import run_training

    ctx = config["__clad__"]
    sampled = {k: v for k, v in config.items() if k != "__clad__"}
    trial_id = tune.get_context().get_trial_id()
    stages, _ = OBJECTIVES[ctx["objective"]]
    tracking = Tracking(**ctx["tracking"]) if ctx.get("tracking") else None
    for i, stage in enumerate(stages):
        cfg = trial_train_config(ctx["base"], sampled, stage, trial_id, ctx["sweep_dir"], ctx.get("parent_run_id"),
                                 TrialResources.model_validate(ctx["resources"]), ctx.get("closed_loop"))
        last = i == len(stages) - 1
        if last and ctx["objective"] == CLOSED_LOOP:
            from pipelines.shared_pool import SharedRollouts

            _closed_loop_stage(cfg, tracking, SharedRollouts(ctx["env_pool"], trial_id) if ctx.get("env_pool") else None)
            continue
        result = run_training(cfg, tracking=tracking, callbacks=[TuneReportCallback()] if last else [])
        if result.error:
            raise result.error


def _closed_loop_stage(cfg: TrainConfig, tracking, rollouts=None) -> None:
    """Train stage 2 in a thread while this (the trial's) thread reports each checkpoint's success to Tune
    as it arrives: a trial ASHA stops is killed with its trainer (Ray actors share their owner's fate), and
    the sweep's driver drops its queued episodes from the shared env pool (`rollouts`), the others keep
    training."""
    import queue
    import threading

    from ray import tune

    from pipelines.train import run_training

    results: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["result"] = run_training(cfg, tracking=tracking, on_eval_result=results.put, rollouts=rollouts)
        except BaseException as err:  # re-raised in the trial thread
            outcome["error"] = err
        finally:
            results.put(None)

    threading.Thread(target=train, name="closed-loop-trial", daemon=True).start()
    reported = 0
    while (record := results.get()) is not None:
        reported += 1
        tune.report({"closed_loop/success_rate": record["rate"], "closed_loop/ci95_low": record["ci95"][0],
                     "closed_loop/ci95_high": record["ci95"][1], "closed_loop/episodes": record["n"],
                     "closed_loop/successes": record["successes"], "step": record["step"],
                     **{k: v for k, v in record["val"].items()}})
    if "error" in outcome:
        raise outcome["error"]
    if outcome["result"].error:
        raise outcome["result"].error
    if not reported:
        raise RuntimeError(f"no checkpoint of {cfg.run_dir} finished its closed-loop evaluation (see the trial's "
                           "log for why); the trial has no success to report")


def check_report_cadence(cfg: TrainConfig, source: str) -> None:
    """Training reports at checkpoint and at validation steps; Tune's scheduler needs the objective (a
    validation metric) in every report, so in a sweep every checkpoint step must also be a validation step."""
    if cfg.checkpoint_every % cfg.validate_every:
        raise ConfigError(
            f"{source}: checkpoint_every ({cfg.checkpoint_every}) must be a multiple of validate_every "
            f"({cfg.validate_every}) in a sweep, or the reports at checkpoint-only steps reach the Tune scheduler "
            f"without the objective: set -o checkpoint_every={cfg.validate_every} (or a multiple)")


def closed_loop_overrides(space: SweepSpace) -> dict[str, Any] | None:
    """TrainConfig fields the closed-loop objective sets on every trial's stage 2."""
    if space.objective != CLOSED_LOOP:
        return None
    out: dict[str, Any] = {"eval_every": space.eval_every, "closed_loop": space.closed_loop.to_dict()}
    if space.stage2_steps is not None:
        out["steps"] = space.stage2_steps
    return out


def check_closed_loop(space: SweepSpace, base: dict[str, Any], source: str) -> None:
    """The closed-loop objective's stage-2 config must validate (eval_every a multiple of checkpoint_every, ...)
    before any trial starts."""
    if space.objective != CLOSED_LOOP:
        return
    data = {**base, **closed_loop_overrides(space), "stage": "stage2", "stage1_checkpoint": "<the trial's stage 1>"}
    config_from_dict(TrainConfig, data, f"{source} + the space file's eval_every/closed_loop (a trial's stage 2)")


def max_concurrent(resources: TrialResources, env_cpus: float = 0.0, shared_env_cpus: float = 0.0) -> int:
    """Trials that fit at once. `env_cpus`: env actors each trial starts itself; `shared_env_cpus`: the sweep's
    shared env pool, reserved once for all trials."""
    import ray

    total = ray.cluster_resources()
    per_trial_cpu = resources.num_workers * resources.cpus_per_worker + DRIVER_CPUS + env_cpus
    if shared_env_cpus > total.get("CPU", 0) + 1e-9:
        raise ConfigError(f"the shared env pool needs {shared_env_cpus:g} CPU (closed_loop.actors x "
                          f"closed_loop.cpus_per_actor) but the cluster has {total.get('CPU', 0):g}: lower them in "
                          "the space file")
    n = int((total.get("CPU", 1) - shared_env_cpus + 1e-9) // per_trial_cpu)
    if resources.gpus_per_worker > 0:
        n = min(n, int(total.get("GPU", 0) // (resources.num_workers * resources.gpus_per_worker)))
    if n < 1:
        raise ConfigError(f"one trial needs {per_trial_cpu:.2f} CPU and {resources.gpus_per_worker * resources.num_workers} GPU "
                          f"but the cluster has {total.get('CPU', 0)} CPU / {total.get('GPU', 0)} GPU"
                          + (f" of which the shared env pool takes {shared_env_cpus:g} CPU" if shared_env_cpus else "")
                          + ": lower resources_per_trial (or closed_loop.actors) in the space file")
    return n


def resource_check(space: SweepSpace) -> tuple[int, float, str]:
    """(trials at a time, CPUs of the shared env pool, the line the driver prints)."""
    import ray

    r = space.resources_per_trial
    pool_cpus = space.closed_loop.actors * space.closed_loop.cpus_per_actor if space.objective == CLOSED_LOOP else 0.0
    n = max_concurrent(r, shared_env_cpus=pool_cpus)
    per = r.num_workers * r.cpus_per_worker + DRIVER_CPUS
    line = f"resource check: cluster {ray.cluster_resources().get('CPU', 0):g} CPU"
    if pool_cpus:
        line += (f"; shared env pool {space.closed_loop.actors} actors x {space.closed_loop.cpus_per_actor:g} CPU = "
                 f"{pool_cpus:g} CPU, reserved once for all trials")
    line += f"; each trial {per:.2f} CPU -> {n} trials at a time"
    return n, pool_cpus, line


def _pool_name(sweep_dir) -> str:
    """Deterministic per sweep folder, so a resumed sweep's trials find the pool under the same name."""
    import hashlib

    from pipelines.shared_pool import service_name

    return service_name(hashlib.sha256(storage.normalize(sweep_dir).encode()).hexdigest()[:12])


def _scheduler(space: SweepSpace, metric: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = space.scheduler
    if s.type == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=s.max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    if s.type == "pbt":
        # exploit copies the donor's whole config; architecture-changing keys (tau) come back with its checkpoint
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                                       hyperparam_mutations=param_space(space))
    return FIFOScheduler()


def run_sweep(space: SweepSpace, base: dict[str, Any], sweep_dir: str | Path, tracking=None,
              parent_run_id: str | None = None):
    """Run (or resume) the sweep; returns the Tune ResultGrid."""
    from ray import tune

    _, metric = OBJECTIVES[space.objective]
    storage.makedirs(sweep_dir)  # a local folder or a URI (clad/storage.py)
    concurrent, pool_cpus, line = resource_check(space)
    print(line)
    log.info(line)
    ctx = {"base": base, "objective": space.objective, "sweep_dir": str(sweep_dir),
           "resources": space.resources_per_trial.to_dict(), "parent_run_id": parent_run_id,
           "tracking": tracking.__dict__ if tracking else None, "closed_loop": closed_loop_overrides(space)}
    pool = None
    callbacks = []
    if space.objective == CLOSED_LOOP:  # one env-actor pool for every trial (pipelines/shared_pool.py)
        from pipelines.shared_pool import PoolCleanupCallback, start_service

        cl = space.closed_loop
        ctx["env_pool"] = _pool_name(sweep_dir)
        pool = start_service(ctx["env_pool"], cl.suite, cl.actors, cl.cpus_per_actor, cl.camera_size,
                             cl.rollout_resource)
        callbacks.append(PoolCleanupCallback.make(ctx["env_pool"]))
    try:
        return _fit_sweep(space, sweep_dir, ctx, metric, concurrent, callbacks)
    finally:
        if pool is not None:
            _close_pool(pool, sweep_dir)


def _close_pool(pool, sweep_dir) -> None:
    """Record what the shared pool did (env_pool.json) and stop it."""
    from pipelines.shared_pool import close_service

    close_service(pool, storage.join(sweep_dir, "env_pool.json"))


def _fit_sweep(space: SweepSpace, sweep_dir, ctx: dict, metric: str, concurrent: int, callbacks: list):
    from ray import tune

    trainable = tune.with_resources(trial_driver, {"CPU": DRIVER_CPUS})
    tune_path = storage.join(sweep_dir, "tune")
    if tune.Tuner.can_restore(str(tune_path)):
        log.info("resuming the sweep in %s", tune_path)
        tuner = tune.Tuner.restore(str(tune_path), trainable=trainable, resume_errored=True,
                                   param_space={**param_space(space), "__clad__": ctx})
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={**param_space(space), "__clad__": ctx},
            tune_config=tune.TuneConfig(metric=metric, mode=space.mode, num_samples=space.num_samples,
                                        scheduler=_scheduler(space, metric),
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), callbacks=callbacks),
        )
    return tuner.fit()


def write_outputs(results, space: SweepSpace, base: dict[str, Any], sweep_dir: str | Path) -> tuple[str, str, list[dict]]:
    """results.csv (one row per trial) and best_config.yaml (the best trial's TrainConfig for `clad train`)."""
    _, metric = OBJECTIVES[space.objective]
    rows = []
    for r in results:
        m = r.metrics or {}
        cfg = r.config or {}
        row = {"trial": m.get("trial_id", Path(r.path).name if r.path else "?"),
               **{k: cfg.get(k) for k in space.space},
               "objective": m.get(metric), "steps": m.get("step"), "status": "error" if r.error else "ok"}
        if space.objective == CLOSED_LOOP:  # the success of the trial's last round with its interval
            row.update({"successes": m.get("closed_loop/successes"), "episodes": m.get("closed_loop/episodes"),
                        "ci95_low": m.get("closed_loop/ci95_low"), "ci95_high": m.get("closed_loop/ci95_high")})
        rows.append(row)
    rows.sort(key=lambda row: (row["objective"] is None, (row["objective"] or 0) * (1 if space.mode == "min" else -1)))
    table = storage.join(sweep_dir, "results.csv")
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(table, buf.getvalue())
    best_path = storage.join(sweep_dir, "best_config.yaml")
    scored = [row for row in rows if row["objective"] is not None]
    if scored:
        best = scored[0]
        data = apply_overrides(base, [f"{k}={best[k]}" for k in space.space], source="best trial")
        data = resolve_model_section(data, "best trial")
        data.pop("run_name", None)
        data.pop("parent_run_id", None)
        storage.write_text(best_path, f"# best trial {best['trial']}: {metric} = {best['objective']:.6g} ({space.mode})\n"
                             + yaml.safe_dump(config_from_dict(TrainConfig, data, "best trial").to_dict(), sort_keys=False))
    return table, best_path, rows


# --------------------------------------------------------------------------------------------------------
# CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="sweep hyperparameters (tau x EMA decay) with Ray Tune",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True, help="search-space YAML (see tune_spaces/)")
    p.add_argument("--config", help="base TrainConfig YAML/JSON shared by every trial")
    add_overrides(p, "-o steps=2000")
    p.add_argument("--name", help="sweep name (default: the space's name); re-use it to resume")
    add_cluster_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import mlflow

    from pipelines.ray_runtime import init_ray
    from pipelines.tracking import resolve_tracking, start_run

    space = load_space(args.space)
    base_cfg = load_train_config(args.config, args.overrides)  # validates the base before any trial starts
    check_report_cadence(base_cfg, args.config or "the default train config")
    check_closed_loop(space, base_cfg.to_dict(), args.config or "the default train config")
    base = base_cfg.to_dict()
    sweep_dir = storage.join(storage.normalize(base_cfg.output_dir), args.name or space.name)  # path or URI
    storage.check_writable(sweep_dir, "output_dir")  # before any trial starts
    from pipelines import logs

    logs.attach_log_file(sweep_dir if not storage.is_remote(sweep_dir)
                         else storage.cache_root() / "logs" / (args.name or space.name))
    init_ray(address=args.address)
    tracking = resolve_tracking(base_cfg.output_dir, uri=args.tracking_uri or base_cfg.tracking_uri,
                                experiment=base_cfg.mlflow_experiment)
    run_id_file = storage.join(sweep_dir, "mlflow_run_id")
    previous = storage.read_text(run_id_file).strip() if storage.is_file(run_id_file) else None
    with start_run(tracking, f"sweep-{args.name or space.name}", run_id=previous, params={"space": space.to_dict()},
                   tags={"clad.kind": "sweep"}) as run:
        storage.write_text(run_id_file, run.info.run_id)
        results = run_sweep(space, base, sweep_dir, tracking=tracking, parent_run_id=run.info.run_id)
        table, best, rows = write_outputs(results, space, base, sweep_dir)
        mlflow.log_text(storage.read_text(table), "results.csv")
        if storage.is_file(best):
            mlflow.log_text(storage.read_text(best), "best_config.yaml")
    _print_table(rows)
    print(f"\nresults: {table}\nbest config: {best if storage.is_file(best) else '(no trial finished)'}")
    print(f"MLflow: {tracking.ui_command()}")
    return 0


def _print_table(rows: list[dict]) -> None:
    if not rows:
        print("no trials")
        return
    keys = list(rows[0])
    width = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(width[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r[k]).ljust(width[k]) for k in keys))


def _fmt(v) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)
