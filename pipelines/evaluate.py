"""`clad eval`: evaluate a policy on a LIBERO suite with a pool of Ray env actors.

    clad eval --checkpoint runs/clad/stage2 --suite libero_10 --episodes-per-task 50 --actors 8
    clad eval --policy expert --suite libero_object --tasks 0 2 --episodes-per-task 10 --out outputs/eval/expert

Outputs in --out (re-running with the same --out resumes and skips finished episodes):
    episodes.jsonl   one record per finished episode, streamed as episodes finish
    summary.json     per task / suite / overall success with n and Wilson 95 % CI, timings, pool stats, config
    success.png      bar chart of per-task success
    videos/*.mp4     the first --video-episodes episodes of each task, outcome in the file name
    eval_config.json the resolved config (a resumed run must match it on every result-changing field)
and everything is logged to MLflow (pipelines/tracking.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pydantic

from clad import storage
from clad.errors import CheckpointError, CladError, ConfigError
from clad.eval.config import RESULT_FIELDS, EvalConfig
from clad.eval.policy import PolicySpec
from clad.eval.results import EPISODES_FILE, EpisodeResult
from pipelines import signals

__all__ = ["register", "run_evaluation", "EvalReport", "config_from_args", "default_out_dir"]

log = logging.getLogger(__name__)

MLFLOW_FAILED = 3  # exit code: the evaluation finished but its MLflow logging did not


@dataclass
class EvalReport:
    out_dir: Path
    summary: dict
    table: str
    paths: dict[str, str] = field(default_factory=dict)
    episodes_run: int = 0      # episodes run by this invocation (not counting resumed ones)


# ------------------------------------------------------------------------------------------- helpers
def _check_resume(out: Path, cfg: EvalConfig) -> None:
    """Refuse to mix episodes of different settings in one output dir."""
    path = out / "eval_config.json"
    episodes = out / EPISODES_FILE
    if not path.is_file() or not episodes.is_file() or episodes.stat().st_size == 0:
        return  # no episodes to mix with: the new settings simply replace the old file
    try:
        old = EvalConfig.model_validate(json.loads(path.read_text()))
    except Exception as err:
        raise ConfigError(f"{path} is unreadable ({err}): use a new --out directory") from None
    a, b = old.result_fields(), cfg.result_fields()
    diff = [k for k in RESULT_FIELDS if a.get(k) != b.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff)
        raise ConfigError(f"{out} holds episodes of a run with different settings ({detail}); "
                          "resuming would mix them: use a new --out directory or the original settings")


def _resolve_tasks(cfg: EvalConfig) -> list:
    from clad.libero.suites import get_task, list_tasks

    names = list_tasks(cfg.suite)
    wanted = cfg.tasks if cfg.tasks is not None else [str(i) for i in range(len(names))]
    specs = [get_task(cfg.suite, t) for t in wanted]
    idx = [s.index for s in specs]
    if len(set(idx)) != len(idx):
        raise ConfigError(f"--tasks lists a task twice: {list(wanted)}")
    return specs


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)[:200]


def _log_mlflow(cfg: EvalConfig, out: Path, summary_doc: dict, paths: dict, tracking, experiment: str,
                parent_run_id: str | None = None) -> str:
    import mlflow

    from pipelines.tracking import start_run

    run_file = out / "mlflow_run.json"
    run_id = previous_run_id(run_file, tracking.uri)
    params = {"eval": cfg.to_dict()}
    s = summary_doc["summary"]
    metrics = {f"success_rate/{_metric_key(t['task'])}": t["rate"] for t in s["tasks"]}
    for suite, b in s["suites"].items():
        metrics[f"success_rate/{suite}"] = b["task_average"]
    metrics["success_rate/overall"] = s["overall"]["rate"]
    metrics["episodes"] = s["overall"]["n"]
    metrics["episode_errors"] = s["overall"]["errors"]
    for k, v in summary_doc["timings"].items():
        if isinstance(v, (int, float)):
            metrics[f"timing/{k}"] = float(v)

    def log_into(existing: str | None) -> str:
        with start_run(tracking, f"eval-{cfg.suite}", params=params, tags={"clad.kind": "eval"},
                       run_id=existing, parent_run_id=None if existing else parent_run_id) as run:
            mlflow.log_metrics(metrics)
            for key in ("summary", "plot", "episodes", "config"):
                if paths.get(key) and Path(paths[key]).is_file():
                    mlflow.log_artifact(paths[key])
            vids = Path(paths["videos"])
            if vids.is_dir() and any(vids.iterdir()):
                mlflow.log_artifacts(str(vids), artifact_path="videos")
            return run.info.run_id

    try:
        run_id = log_into(run_id)
    except mlflow.exceptions.MlflowException:
        if run_id is None:
            raise
        run_id = log_into(None)  # the earlier run was deleted: start a new one
    run_file.write_text(json.dumps({"tracking_uri": tracking.uri, "run_id": run_id, "experiment": experiment,
                                    "out": str(out.resolve())}) + "\n")
    return run_id


def previous_run_id(run_file: Path, tracking_uri: str) -> str | None:
    """The MLflow run a resumed evaluation keeps logging into: the one recorded in `run_file`, if it was made
    for this folder and this tracking URI. A copied folder (e.g. to extend a finished evaluation to more
    episodes and keep the original) records another folder, so it gets a run of its own."""
    if not run_file.is_file():
        return None
    try:
        prev = json.loads(run_file.read_text())
    except json.JSONDecodeError:
        return None
    same_folder = prev.get("out") in (None, str(run_file.parent.resolve()))  # None: written before "out" existed
    return prev.get("run_id") if same_folder and prev.get("tracking_uri") == tracking_uri else None


# ------------------------------------------------------------------------------------------- the run
def run_evaluation(cfg: EvalConfig, out_dir: str | Path, *, tracking_uri: str | None = None,
                   experiment: str = "clad-eval", address: str | None = None, use_mlflow: bool = True,
                   on_result: Callable[[EpisodeResult, object], None] | None = None,
                   progress: bool = True, parent_run_id: str | None = None, pool_factory=None) -> EvalReport:
    """Run (or resume) the evaluation described by `cfg`, writing everything to `out_dir`.

    `pool_factory(pool_config, policy_spec)` replaces the evaluation's own `RolloutPool` with another object
    of its interface (`clad tune`'s shared env pool, pipelines/shared_pool.py).

    The MLflow run is a child of `parent_run_id` when given (e.g. `clad pipeline`'s run).
    `on_result(result, pool)` is called on the driver after each episode is logged (hooks for tests).
    """
    from pipelines.locking import check_folder_arg, lock_folder

    t_start = time.perf_counter()
    # Every check that can fail runs before anything is written: a refused command leaves no state behind.
    check_policy(cfg)
    tasks = _resolve_tasks(cfg)
    # a URI --out: logs are written to a local working copy and uploaded (clad/storage.py WorkingCopy)
    mirror = storage.WorkingCopy(storage.check_writable(out_dir, "--out")) if storage.is_remote(out_dir) else None
    out = mirror.local if mirror else check_folder_arg(out_dir).resolve()
    tracking = None
    if use_mlflow:  # the default store lives in <out>/mlflow; an explicit one is checked before <out> is made
        from pipelines.tracking import check_tracking, resolve_tracking

        tracking = resolve_tracking(out, tracking_uri, experiment=experiment)
        check_tracking(tracking, no_tracking_hint=", or pass --no-mlflow")
    # a bucket --out: its working copy here, and the bucket folder itself across machines (pipelines/locking.py)
    with lock_folder(out, "clad eval"), (lock_folder(mirror.loc, "clad eval") if mirror else contextlib.nullcontext()):
        from pipelines import logs

        logs.attach_log_file(out)  # only once every check passed: a refused command leaves no folder behind
        # under the lock: the settings check and the write of eval_config.json are one step
        _check_resume(out, cfg)
        return _run_locked(cfg, out, tasks, t_start, mirror=mirror, address=address, tracking=tracking,
                           experiment=experiment,
                           on_result=on_result, progress=progress, parent_run_id=parent_run_id,
                           pool_factory=pool_factory)


def check_policy(cfg: EvalConfig) -> None:
    """A bad checkpoint or --runtime value fails here, on the driver, not in every env actor."""
    if cfg.policy.kind != "clad":
        return
    from clad.eval.agent_adapter import AgentInputAdapter, checkpoint_config
    from clad.model.checkpoint import inspect_checkpoint

    checkpoint = cfg.policy.checkpoint
    if storage.is_remote(checkpoint):  # wrong bucket / no credentials: say so; then read the node's cached copy
        checkpoint = str(storage.local_copy(storage.check_readable(checkpoint, "--checkpoint")))
    info = inspect_checkpoint(checkpoint, expect_stage="stage2", flag="--checkpoint")
    model_cfg = checkpoint_config(checkpoint, cfg.policy.runtime)
    try:
        AgentInputAdapter(model_cfg.vision.cameras, model_cfg.proprio_keys, model_cfg.lang_dim)
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"--checkpoint {info.directory}: the env cannot provide its inputs: {err}") from None
    if info.instructions is not None:
        log.info("checkpoint %s was trained on %d task instruction(s) (dataset %s)", info.directory,
                 len(info.instructions), (info.dataset_fingerprint or "?")[:12])


def _run_locked(cfg: EvalConfig, out: Path, tasks: list, t_start: float, *, mirror, address, tracking, experiment,
                on_result, progress, parent_run_id, pool_factory=None) -> EvalReport:
    from tqdm import tqdm

    from clad.config import save_config
    from clad.eval.protocol import plan_episodes
    from clad.eval.results import ResultLog
    from clad.eval.summary import format_table, plot_success, summarize
    from clad.eval.video import VideoWriter, video_name
    from clad.eval.worklist import WorkList
    from clad.libero.suites import MAX_STEPS
    from pipelines.ray_runtime import init_ray, size_pool
    from pipelines.rollout_pool import PoolConfig, RolloutPool

    paths = {"out": str(out), "episodes": str(out / EPISODES_FILE), "summary": str(out / "summary.json"),
             "plot": str(out / "success.png"), "videos": str(out / "videos"), "config": str(out / "eval_config.json")}
    save_config(cfg, paths["config"])

    task_names = {t.index: t.name for t in tasks}
    max_steps = cfg.max_steps or MAX_STEPS[cfg.suite]
    plan = plan_episodes(cfg.suite, [t.index for t in tasks], cfg.episodes_per_task, cfg.base_seed, max_steps,
                         cfg.settle_steps, cfg.video_episodes)
    planned = {s.key for s in plan}
    result_log = ResultLog(paths["episodes"])
    prior = [r for r in result_log.read() if r.key in planned]
    done = {r.key for r in prior}
    remaining = [s for s in plan if s.key not in done]
    if prior:
        log.info("resuming: %d of %d episodes already in %s", len(prior), len(plan), paths["episodes"])

    new_results: list[EpisodeResult] = []
    pool = None
    pool_info: dict = {}
    t_pool = time.perf_counter()
    if remaining:
        resources = init_ray(address=address)
        size = size_pool(cfg.actors, cfg.cpus_per_actor)
        num_actors = min(size.num_actors, len(remaining))
        server_gpus = cfg.server_gpus if cfg.server_gpus is not None else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
        pcfg = PoolConfig(suite=cfg.suite, num_actors=num_actors, cpus_per_actor=size.cpus_per_actor,
                          camera_size=cfg.camera_size, video_size=cfg.video_size,
                          rollout_resource=cfg.rollout_resource, env_gpus_per_actor=cfg.env_gpus_per_actor,
                          recycle_after=cfg.recycle_after,
                          episode_timeout_s=cfg.episode_timeout(max_steps),
                          max_actor_restarts=cfg.max_actor_restarts, policy_mode=cfg.policy_mode,
                          server_max_batch=cfg.server_max_batch, server_max_wait_ms=cfg.server_max_wait_ms,
                          server_gpus=server_gpus)
        pool = pool_factory(pcfg, cfg.policy) if pool_factory is not None else RolloutPool(pcfg, cfg.policy)
        log.info("rolling out %d episode(s) on %d env actor(s) x %.2f CPU", len(remaining), num_actors,
                 size.cpus_per_actor)
        worklist = WorkList(remaining, max_attempts=cfg.max_attempts)
        videos = VideoWriter(paths["videos"])
        bar = tqdm(total=len(plan), initial=len(prior), unit="ep", desc=f"eval {cfg.suite}", dynamic_ncols=True,
                   mininterval=1.0, disable=not progress)
        wins = [sum(r.success for r in prior)]

        def handle(result: EpisodeResult) -> None:
            # Runs on the driver as each result arrives: the actor is already busy with its next episode.
            if result.frames is not None:
                name = video_name(result.task_index, result.task_name, result.episode, result.success)
                result.video = str(Path("videos") / name)
                videos.submit(name, result.frames)
                result.frames = None
            result_log.append(result)
            if mirror is not None:
                mirror.push_throttled([EPISODES_FILE])  # complete objects only, at most every few seconds
            new_results.append(result)
            wins[0] += result.success
            bar.update(1)
            bar.set_postfix(success=f"{wins[0]}/{bar.n}", refresh=False)
            if on_result is not None:
                on_result(result, pool)

        try:
            pool.run(worklist, handle, task_names)
        finally:
            bar.close()
            videos.close()
            if mirror is not None:  # an interrupted run keeps every finished episode in the bucket too
                mirror.push([EPISODES_FILE])
        st = pool.stats
        pool_info = {"num_actors": num_actors, "cpus_per_actor": size.cpus_per_actor, "policy_mode": cfg.policy_mode,
                     "server_gpus": server_gpus, "actors_started": st.actors_started,
                     "actors_recycled": st.actors_recycled, "actors_lost": st.actors_lost,
                     "episodes_requeued": st.episodes_requeued, "hung": st.hung, "events": st.events[-50:],
                     "server": pool.server_final_stats, "cluster": {k: v for k, v in resources.items()
                                                                     if k in ("CPU", "GPU", "memory")}}
    pool_wall = time.perf_counter() - t_pool

    results = [r for r in result_log.read() if r.key in planned]
    summary = summarize(results, task_names={(cfg.suite, i): n for i, n in task_names.items()},
                        expected_per_task=cfg.episodes_per_task)
    steps_now = sum(r.steps for r in new_results)
    timings = {
        "wall_s": time.perf_counter() - t_start,
        "pool_wall_s": pool_wall,
        "episodes_run": len(new_results),
        "episodes_resumed": len(prior),
        "episodes_per_s": len(new_results) / pool_wall if new_results and pool_wall > 0 else 0.0,
        "env_steps": steps_now,
        "env_steps_per_s": steps_now / pool_wall if new_results and pool_wall > 0 else 0.0,
        "mean_episode_wall_s": (sum(r.wall_s for r in new_results) / len(new_results)) if new_results else 0.0,
        # over every logged episode, including those of earlier (interrupted) invocations
        "all_env_steps": sum(r.steps for r in results),
        "all_episode_wall_s_sum": sum(r.wall_s for r in results),
    }
    from pipelines.tracking import git_commit

    doc = {"suite": cfg.suite, "complete": len(results) == len(plan), "planned_episodes": len(plan),
           "summary": summary, "timings": timings, "pool": pool_info, "config": cfg.to_dict(),
           "max_steps": max_steps, "git_commit": git_commit(), "outputs": paths}
    Path(paths["summary"]).write_text(json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")
    plot_success(summary, paths["plot"], title=f"{cfg.suite}: {cfg.policy.kind} ({summary['overall']['n']} episodes)")
    table = format_table(summary)
    if mirror is not None:  # the summary last, so a summary in the bucket always describes uploaded episodes
        mirror.push(last=["summary.json"])
        paths["remote"] = mirror.loc
    if tracking is not None:
        try:
            paths["mlflow_run_id"] = _log_mlflow(cfg, out, doc, paths, tracking, experiment, parent_run_id)
        except Exception as err:  # tracking problems must not lose a finished evaluation
            paths["mlflow_error"] = (
                f"MLflow logging to {tracking.uri} failed ({type(err).__name__}: {str(err).strip()[:200]}). "
                f"The results are safe in {out}. To log them later, run the same command again once the store is "
                f"reachable: every finished episode is skipped, so it only logs")
            log.warning(paths["mlflow_error"])
    return EvalReport(out_dir=out, summary=doc, table=table, paths=paths, episodes_run=len(new_results))


# ------------------------------------------------------------------------------------------- CLI
def default_out_dir(suite: str, policy: PolicySpec, seed: int) -> Path:
    """Deterministic, so re-running the same command resumes: outputs/eval/<suite>-<policy>-s<seed>."""
    name = Path(policy.checkpoint).name if policy.kind == "clad" and policy.checkpoint else policy.kind
    return Path("outputs") / "eval" / f"{suite}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-s{seed}"


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    kind = args.policy or ("clad" if args.checkpoint else None)
    if kind is None:
        raise ConfigError("pass --checkpoint DIR (the CLaD agent) or --policy expert|tiny|zero")
    try:
        policy = PolicySpec(kind=kind, checkpoint=args.checkpoint, device=args.device,
                            runtime=tuple(getattr(args, "runtime", None) or ()))
        return EvalConfig(
            suite=args.suite, tasks=tuple(args.tasks) if args.tasks else None,
            episodes_per_task=args.episodes_per_task, base_seed=args.seed, max_steps=args.max_steps,
            settle_steps=args.settle_steps, camera_size=args.camera_size, policy=policy,
            policy_mode=args.policy_mode, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
            rollout_resource=args.rollout_resource, env_gpus_per_actor=args.env_gpus_per_actor,
            recycle_after=args.recycle_after,
            episode_timeout_s=args.episode_timeout, max_attempts=args.max_attempts,
            server_max_batch=args.server_max_batch, server_max_wait_ms=args.server_max_wait_ms,
            video_episodes=args.video_episodes)
    except pydantic.ValidationError as err:  # -> a message that names the flag, not pydantic's URL
        raise ConfigError("invalid eval options:\n  " + "\n  ".join(_flag_errors(err))) from None
    except CladError:
        raise
    except ValueError as err:
        raise ConfigError(f"invalid eval options: {err}") from None


# EvalConfig / PolicySpec field -> the `clad eval` flag that sets it
FLAGS = {"suite": "--suite", "tasks": "--tasks", "episodes_per_task": "--episodes-per-task", "base_seed": "--seed",
         "max_steps": "--max-steps", "settle_steps": "--settle-steps", "camera_size": "--camera-size",
         "policy_mode": "--policy-mode", "actors": "--actors", "cpus_per_actor": "--cpus-per-actor",
         "rollout_resource": "--rollout-resource", "env_gpus_per_actor": "--env-gpus-per-actor",
         "recycle_after": "--recycle-after", "episode_timeout_s": "--episode-timeout",
         "max_attempts": "--max-attempts", "server_max_batch": "--server-max-batch",
         "server_max_wait_ms": "--server-max-wait-ms", "video_episodes": "--video-episodes",
         "kind": "--policy", "checkpoint": "--checkpoint", "device": "--device", "runtime": "--runtime"}


def _flag_errors(err: pydantic.ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        names = [str(p) for p in e["loc"] if not isinstance(p, int)]
        flag = next((FLAGS[n] for n in reversed(names) if n in FLAGS), None)
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{flag} {e.get('input')!r}: {msg}" if flag and e["type"] != "value_error" else
                     (f"{flag}: {msg}" if flag else msg))
    return lines


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = args.out if args.out else default_out_dir(cfg.suite, cfg.policy, cfg.base_seed)  # a path or a URI
    try:
        report = run_evaluation(cfg, out, tracking_uri=args.tracking_uri, experiment=args.experiment,
                                address=args.address, use_mlflow=not args.no_mlflow, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished episodes are kept in {storage.join(out, 'episodes.jsonl')}; "
              "run the same command again to resume", file=sys.stderr)
        return signals.interrupted_exit_code()
    from pipelines import logs

    log_file = logs.log_file()  # attached by run_evaluation (in the local working copy for a URI --out)
    t = report.summary["timings"]
    print()
    print(report.table)
    print()
    print(f"episodes: {report.summary['summary']['overall']['n']} of {report.summary['planned_episodes']} "
          f"({report.episodes_run} run now, {t['episodes_resumed']} resumed); "
          f"{t['episodes_per_s']:.3f} episodes/s, {t['env_steps_per_s']:.1f} env steps/s")
    print(f"summary:  {report.paths['summary']}")
    print(f"episodes: {report.paths['episodes']}")
    print(f"plot:     {report.paths['plot']}")
    print(f"videos:   {report.paths['videos']}")
    print(f"log:      {log_file}")
    if report.paths.get("mlflow_run_id"):
        print(f"mlflow:   run {report.paths['mlflow_run_id']}")
    if report.paths.get("mlflow_error"):
        print(f"\n{report.paths['mlflow_error']}", file=sys.stderr)
        return MLFLOW_FAILED
    return 0 if report.summary["complete"] else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a policy on a LIBERO suite with a pool of Ray actors",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="CLaD checkpoint directory (model.safetensors, config.json, stats.json)")
    p.add_argument("--policy", choices=("clad", "expert", "tiny", "zero"),
                   help="policy kind (default: clad when --checkpoint is given)")
    p.add_argument("--device", default="cpu", help="torch device of the policy (the server picks cuda if present)")
    p.add_argument("--runtime", action="append", default=[], metavar="KEY=VALUE",
                   help="run the checkpoint with another run-time setting, e.g. policy.execution_horizon=3 or "
                        "policy.num_inference_steps=20 (repeatable; only fields that do not change the weights)")
    p.add_argument("--suite", default="libero_10")
    p.add_argument("--tasks", nargs="+", help="task indices or names (default: every task of the suite)")
    p.add_argument("--episodes-per-task", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="base seed; episode seeds derive from it (see clad/eval/protocol.py)")
    p.add_argument("--max-steps", type=int, help="step budget per episode (default: the suite's standard one)")
    p.add_argument("--settle-steps", type=int, default=10)
    p.add_argument("--camera-size", type=int, default=128)
    p.add_argument("--actors", type=int, help="env actors (default: one per CPU in the pool's share)")
    p.add_argument("--cpus-per-actor", type=float, help="CPUs each env actor claims (fractions allowed)")
    p.add_argument("--rollout-resource", help="custom Ray resource that marks rollout nodes")
    p.add_argument("--env-gpus-per-actor", type=float, default=0.0,
                   help="GPU share per env actor for rendering (e.g. 0.125); its EGL device is pinned")
    p.add_argument("--policy-mode", choices=("in_actor", "server"), default="in_actor")
    p.add_argument("--server-max-batch", type=int, default=64)
    p.add_argument("--server-max-wait-ms", type=float, default=5.0)
    p.add_argument("--recycle-after", type=int, default=25, help="restart an env actor after this many episodes")
    p.add_argument("--episode-timeout", type=float, help="seconds before an episode's actor counts as hung")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--video-episodes", type=int, default=2, help="record the first K episodes of each task")
    p.add_argument("--out", help="output directory (default: outputs/eval/<suite>-<policy>-s<seed>); reuse it to resume")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or <out>/mlflow)")
    p.add_argument("--experiment", default="clad-eval", help="MLflow experiment")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a local instance)")
    p.set_defaults(func=main)
