"""`clad train stage1|stage2`: both training stages on Ray Train (TorchTrainer, data parallel).

    clad train stage1 --config my_train.yaml -o steps=2000 -o num_workers=2
    clad train stage2 --config my_train.yaml -o stage1_checkpoint=outputs/train/stage1

The same command runs on a laptop (gloo on CPU) and on a GPU cluster (`-o use_gpu=true`, NCCL). Windows
stream from the preprocessed Parquet dataset through Ray Data; the train split is sharded over the workers,
the validation split is read by rank 0 only. Re-running with the same output_dir/run_name resumes from the
latest checkpoint (Ray Train restores its checkpoint manager from the run directory); `--resume-from DIR`
starts from a given checkpoint instead. A lost worker restarts the group from the last checkpoint
(FailureConfig.max_failures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clad import storage
from clad.errors import ConfigError
from clad.training.config import TrainConfig, load_train_config
from pipelines import signals
from pipelines.cli_args import add_cluster_args, add_overrides

log = logging.getLogger(__name__)

WINDOW_MAX_BATCH = 64
RUN_DIR_TAG = "clad.final_dir"


def _window_spec(cfg: TrainConfig, split: str):
    """Windows for this model. A frozen backbone reads the features preprocessing stored, when there are any."""
    from clad.data.manifest import read_manifest
    from clad.data.windows import WindowSpec

    m = cfg.model
    stored_features = bool(read_manifest(cfg.dataset_dir).get("feature_backbone"))
    cached = cfg.loader.feature_set is not None  # a feature set of `clad features`
    if not m.vision.trainable and not stored_features and m.vision.checkpoint_dir is None and not cached:
        raise ConfigError(f"model.vision.backbone={m.vision.backbone} is frozen but has no weights "
                          f"(model.vision.checkpoint_dir) and {cfg.dataset_dir} stores no features: set one of them "
                          "(or loader.feature_set)")
    return WindowSpec(
        tau=m.dynamics.tau,
        chunk=m.policy.chunk_length,
        views=tuple(m.vision.cameras),
        proprio_keys=tuple(m.proprio_keys),
        use_features=cached or (not m.vision.trainable and stored_features),
        stride=cfg.loader.window_stride if split == "train" else cfg.loader.val_window_stride,
    )


def build_datasets(cfg: TrainConfig, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Lazy Ray Datasets of window samples for the splits that stream (default: train and validation)."""
    from pipelines.dataset import dataset_windows

    sources = sources or {"train": "stream", "val": "stream"}
    feats = cfg.loader.feature_set
    datasets = {}
    if sources.get("train") == "stream":
        datasets["train"] = dataset_windows(cfg.dataset_dir, "train", _window_spec(cfg, "train"), feature_root=feats,
                                            episode_shuffle=True, max_batch=WINDOW_MAX_BATCH)
    if sources.get("val") == "stream":
        try:
            datasets["val"] = dataset_windows(cfg.dataset_dir, "val", _window_spec(cfg, "val"), feature_root=feats,
                                              max_batch=WINDOW_MAX_BATCH)
        except Exception as err:  # a dataset without validation episodes still trains
            log.warning("no validation split (%s): validation is skipped", err)
    return datasets


def data_sources(cfg: TrainConfig) -> dict[str, str]:
    """Driver side: check the feature set (if any), then 'memory' or 'stream' per split (val only if it exists)."""
    from clad.data.store import split_files
    from clad.training.data_source import check_feature_set, resolve_source

    meta = check_feature_set(cfg)
    dim = int(meta["feature_dim"]) if meta else None
    sources = {"train": resolve_source(cfg, "train", _window_spec(cfg, "train"), dim)}
    if split_files(cfg.dataset_dir, "val"):
        sources["val"] = resolve_source(cfg, "val", _window_spec(cfg, "val"), dim)
    else:
        log.warning("%s has no validation episodes: validation is skipped", cfg.dataset_dir)
    return sources


def _memory_windows(cfg: TrainConfig, split: str):
    from clad.data.memory_windows import InMemoryWindows

    wins = InMemoryWindows.load(cfg.dataset_dir, split, _window_spec(cfg, split), cfg.loader.feature_set)
    log.info("%s windows of '%s' in memory: %d windows, %.1f MB", "feature" if wins.features else "image",
             split, len(wins), wins.nbytes / 1e6)
    return wins


def _epochs(shard, batch_size: int, shuffle_buffer: int):
    """Endless stream of batches over the worker's shard, reshuffled every epoch."""
    while True:
        empty = True
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True,
                                              local_shuffle_buffer_size=shuffle_buffer or None):
            empty = False
            yield batch
        if empty:
            raise RuntimeError(f"the training split yields no batch of {batch_size} windows per worker: "
                               "lower batch_size or window_stride, or add episodes")


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import mlflow
    import ray.train
    import ray.train.torch
    import torch

    from clad.training.session import Throughput, TrainingSession, model_stats
    from pipelines.tracking import GuardedTracking, Tracking, start_run

    cfg = TrainConfig.model_validate(loop_config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(loop_config.get("threads_per_worker", 1))))

    def wrap(objective):
        if world == 1:
            return objective
        return ray.train.torch.prepare_model(objective, move_to_device=False,
                                             parallel_strategy_kwargs={"find_unused_parameters": True})

    session = TrainingSession(cfg, model_stats(cfg.dataset_dir, cfg.model.proprio_keys), device=device, wrap=wrap)
    # per-rank randomness for masks and augmentation, after the identical initialisation
    torch.manual_seed(cfg.seed * 1000 + rank + 1)

    ckpt = ray.train.get_checkpoint()
    restored = ckpt is not None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            session.restore(d)
        log.info("rank %d resumed from step %d", rank, session.step)
    elif loop_config.get("resume_from"):
        session.restore(storage.local_copy(loop_config["resume_from"]))  # a URI is cached on this node
        # another run's checkpoint (e.g. continuing to more steps): this run logs to its own MLflow run
        session.mlflow_run_id = None
        log.info("rank %d resumed from %s at step %d", rank, loop_config["resume_from"], session.step)

    tracking = Tracking(**loop_config["tracking"]) if loop_config.get("tracking") else None
    guard = GuardedTracking()  # a tracking outage never fails (and so never restarts) the workers
    run_ctx = None
    if rank == 0 and tracking is not None:  # only rank 0 logs
        run_ctx = start_run(tracking, cfg.name, parent_run_id=cfg.parent_run_id, run_id=session.mlflow_run_id,
                            params=cfg.to_dict(),
                            tags={"clad.stage": cfg.stage, "clad.dataset_hash": loop_config.get("dataset_hash", ""),
                                  **({"clad.resumed_from": str(loop_config["resume_from"])}
                                     if loop_config.get("resume_from") and not restored else {})})
        run = guard.call(run_ctx.__enter__)
        if run is None:
            run_ctx = None
        else:
            session.mlflow_run_id = run.info.run_id
            # lets the driver find (and mark KILLED) this run if the user stops the command
            guard.call(mlflow.set_tag, RUN_DIR_TAG, loop_config["final_dir"])

    sources = loop_config.get("sources") or {"train": "stream", "val": "stream"}
    if sources["train"] == "memory":  # read once; windows gathered by index, reshuffled every epoch
        train_batches = _memory_windows(cfg, "train").batches(cfg.per_worker_batch, seed=cfg.seed,
                                                               shard=(rank, world))
    else:
        train_batches = _epochs(ray.train.get_dataset_shard("train"), cfg.per_worker_batch, cfg.loader.shuffle_buffer)
    val_shard = None
    if rank == 0 and "val" in loop_config["splits"]:
        val_shard = (_MemoryShard(_memory_windows(cfg, "val")) if sources.get("val") == "memory"
                     else ray.train.get_dataset_shard("val"))
    val_cache: list = []  # the same held-out windows at every validation, so the curves are comparable
    last_step = min(cfg.steps, cfg.stop_at_step or cfg.steps)
    meter = Throughput()
    metrics: dict[str, float] = {}
    started, first_step = time.perf_counter(), session.step  # for the ETA in the log line
    try:
        while session.step < last_step:
            t0 = time.perf_counter()
            batch = next(train_batches)
            waited = time.perf_counter() - t0
            metrics = session.train_step(batch)
            if cfg.crash_at_step == session.step and rank == 0 and not restored:
                # a crash some time after the last checkpoint: let the controller collect the pending report
                # (it polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default), then die
                log.warning("fault drill: rank 0 exits at step %d (crash_at_step)", session.step)
                time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)))
                os._exit(1)
            meter.record(cfg.batch_size, waited)
            step = session.step
            if step % cfg.log_every == 0 or step == last_step:
                metrics.update(meter.summary())
                meter.reset()
                if rank == 0:
                    log.info("%s step %d/%d  eta %s  %s", cfg.stage, step, cfg.steps,
                             _eta(time.perf_counter() - started, step - first_step, last_step - step),
                             "  ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
                    if run_ctx is not None:
                        guard.call(mlflow.log_metrics, {f"train/{k}": v for k, v in metrics.items()}, step=step)
            report: dict[str, float] = {}
            checkpoint_now = step % cfg.checkpoint_every == 0 or step == last_step
            validate_now = step % cfg.validate_every == 0 or step == last_step
            if val_shard is not None and validate_now:
                if not val_cache:
                    val_cache.extend(_take(val_shard.iter_torch_batches(batch_size=cfg.per_worker_batch), cfg.val_batches))
                report.update(session.validate(val_cache))
                if run_ctx is not None:
                    guard.call(mlflow.log_metrics, report, step=step)
            if checkpoint_now or validate_now:
                # every rank reports at the same steps (report is collective); rank 0 attaches the checkpoint
                report.update({f"train/{k}": v for k, v in metrics.items()})
                report["step"] = step
                with tempfile.TemporaryDirectory() as tmp:
                    checkpoint = None
                    if checkpoint_now and rank == 0:
                        session.save(tmp)
                        checkpoint = ray.train.Checkpoint.from_directory(tmp)
                        if cfg.models_every and step % cfg.models_every == 0:
                            keep_model(tmp, loop_config["models_dir"], step, report, session.mlflow_run_id)
                    ray.train.report(report, checkpoint=checkpoint)
        if rank == 0 and session.step == cfg.steps:
            final = loop_config["final_dir"]  # a local folder or a URI
            with tempfile.TemporaryDirectory() as tmp:
                session.export_model(tmp)
                # the weights last: `final/` counts as finished (pipeline, clad eval) once they are there
                storage.upload_dir(tmp, final, last=["model.safetensors"])
                if run_ctx is not None:
                    guard.call(mlflow.log_artifacts, tmp, artifact_path="model")
                    guard.call(mlflow.set_tag, "clad.checkpoint", final)
    except BaseException as err:  # the run ends FAILED (a restored attempt re-opens it as RUNNING)
        if run_ctx is not None:
            guard.call(run_ctx.__exit__, type(err), err, err.__traceback__)
            run_ctx = None
        raise
    finally:
        if run_ctx is not None:
            guard.call(run_ctx.__exit__, None, None, None)


def keep_model(checkpoint_dir: str | Path, models_dir: str, step: int, report: dict, mlflow_run_id: str | None) -> str:
    """Copy a checkpoint's model (no optimizer state) to <models_dir>/step_NNNNNNN/ with the validation metrics
    reported with it, for `clad eval-checkpoints`. The weights go last: a folder with model.safetensors is whole."""
    from pipelines.eval_during_training import MODEL_FILES, OPTIONAL_MODEL_FILES, step_name

    src = Path(checkpoint_dir)
    loc = storage.join(models_dir, step_name(step))
    storage.write_json(storage.join(loc, "metrics.json"),
                       {"step": step, "mlflow_run_id": mlflow_run_id or None,
                        "val": {k: float(v) for k, v in report.items() if k.startswith("val/")}}, indent=1)
    for name in [*(n for n in OPTIONAL_MODEL_FILES if (src / n).is_file()), *MODEL_FILES[::-1]]:
        storage.upload_file(src / name, storage.join(loc, name))  # streamed; model.safetensors last
    return loc


def _eta(elapsed_s: float, done: int, remaining: int) -> str:
    """Time left at the average pace of this run so far, as 1h02m, 4m05s or 12s."""
    seconds = int(elapsed_s / done * remaining) if done > 0 else 0
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"


class _MemoryShard:
    """In-memory validation windows with the one method the loop calls on a Ray dataset shard (fixed order)."""

    def __init__(self, wins):
        self.wins = wins

    def iter_torch_batches(self, batch_size: int):
        return self.wins.batches(batch_size, shuffle=False, drop_last=False, epochs=1)


def _take(iterable, n: int):
    for i, item in enumerate(iterable):
        if i >= n:
            break
        yield item


def worker_pool(cfg: TrainConfig):
    """CPUs per Train worker, leaving room for at least one Ray Data window task.

    Workers hold their CPUs for the whole run; if they take every CPU, the window tasks that feed them
    (WINDOW_CPUS each) never get scheduled and training waits forever without an error (ray-stack.md,
    deadlock 2: two 1-CPU workers on a 2-CPU machine).
    """
    import ray

    from pipelines.dataset import WINDOW_CPUS
    from pipelines.ray_runtime import PoolSize, size_pool

    pool = size_pool(cfg.num_workers, cfg.cpus_per_worker)
    total = float(ray.cluster_resources().get("CPU", 1.0))
    n = pool.num_actors
    fits = (total - WINDOW_CPUS) / n
    if n * pool.cpus_per_actor <= total - WINDOW_CPUS + 1e-9:
        return pool
    if fits <= 0.01:
        raise ConfigError(f"num_workers={n}: the cluster has {total:g} CPUs, too few for {n} Train workers plus "
                          f"the Ray Data tasks that feed them ({WINDOW_CPUS} CPU): lower num_workers")
    if cfg.cpus_per_worker is not None:
        raise ConfigError(f"num_workers={n} x cpus_per_worker={cfg.cpus_per_worker:g} claims {n * cfg.cpus_per_worker:g} "
                          f"of the cluster's {total:g} CPUs and leaves less than {WINDOW_CPUS} for the Ray Data tasks "
                          f"that feed the workers: training would wait for data forever. Set cpus_per_worker <= "
                          f"{fits:.2f} (or leave it unset) or use fewer workers")
    return PoolSize(num_actors=n, cpus_per_actor=round(fits, 3), gpus_per_actor=pool.gpus_per_actor)


def check_resume_dir(path: str | Path) -> Path:
    """A `--resume-from` directory as an absolute path; a clear error, on the driver, if it is no training checkpoint."""
    from clad.training.state import META_FILE

    if storage.is_remote(path):
        return storage.check_readable(storage.normalize(path), "--resume-from", expect=META_FILE)
    directory = Path(path).expanduser().resolve()
    if not (directory / META_FILE).is_file():
        hint = ""
        if directory.is_dir():
            found = sorted(p.parent.name for p in directory.glob(f"checkpoint_*/{META_FILE}"))
            hint = f"; checkpoints inside it: {found}" if found else ""
        raise ConfigError(f"--resume-from {path}: {directory / META_FILE} is missing, so this is not a training "
                          f"checkpoint (pass a run's checkpoint_* folder; `final/` holds weights only){hint}")
    return directory


def check_stage1_checkpoint(cfg: TrainConfig, manifest: dict):
    """stage1_checkpoint must be a complete stage-1 checkpoint of this model config, trained on this dataset."""
    from clad.errors import CheckpointError
    from clad.model.checkpoint import config_differences, inspect_checkpoint
    from clad.training.session import _model_dir

    info = inspect_checkpoint(_model_dir(cfg.stage1_checkpoint), expect_stage="stage1", flag="stage1_checkpoint")
    diffs = config_differences(info.config, cfg.model, "stage1")
    if diffs:
        raise CheckpointError(f"stage1_checkpoint {info.directory} was trained with another model config:\n  "
                              + "\n  ".join(diffs) + "\nset these fields as in the checkpoint, or train stage 1 again")
    here = str(manifest.get("fingerprint") or "")
    if info.dataset_fingerprint is None:
        log.info("stage1_checkpoint %s predates dataset fingerprints in checkpoints: its dataset is not checked",
                 info.directory)
    elif here and info.dataset_fingerprint != here:
        raise CheckpointError(f"stage1_checkpoint {info.directory} was trained on dataset {info.dataset_fingerprint[:12]}"
                              f", but dataset_dir {cfg.dataset_dir} is {here[:12]}: its normaliser and latent dynamics "
                              "belong to the other data. Point dataset_dir at the dataset stage 1 used, or train stage 1 "
                              "on this one")
    return info


def check_training_inputs(cfg: TrainConfig, resume_from: str | None = None) -> dict:
    """Everything a run reads, checked on the driver before any worker starts, so that a deterministic mistake
    fails once with its reason instead of inside every worker of every `max_failures` attempt.
    Returns the dataset manifest."""
    from clad.data.manifest import read_manifest
    from clad.training.session import model_stats
    from pipelines.locking import check_folder_arg

    manifest = read_manifest(cfg.dataset_dir)
    model_stats(cfg.dataset_dir, cfg.model.proprio_keys)
    views = manifest.get("views")
    missing = [c for c in cfg.model.vision.cameras if views is not None and c not in views]
    if missing:
        raise ConfigError(f"field 'model.vision.cameras': {missing} not in {cfg.dataset_dir} (views {views}); "
                          "use the dataset's views or preprocess with these views")
    _window_spec(cfg, "train")
    if cfg.stage == "stage2" and cfg.model.has_dynamics:
        # compared with the dataset's conventions filled in, as run_training will save them
        check_stage1_checkpoint(with_dataset_conventions(cfg), manifest)
    if cfg.loader.feature_set is not None:  # before Ray starts and the log is opened, not only in _fit
        from clad.training.data_source import check_feature_set

        check_feature_set(cfg)
    if resume_from is not None:
        check_resume_dir(resume_from)
    check_folder_arg(cfg.run_location, "output_dir")
    return manifest


def with_dataset_conventions(cfg: TrainConfig) -> TrainConfig:
    """The config with the dataset's recorded conventions filled in (model.image_orientation), so the
    checkpoint carries what evaluation must reproduce."""
    from clad.data.conventions import OPENGL, resolve_model_orientation
    from clad.data.manifest import read_manifest

    orientation = resolve_model_orientation(cfg.model.image_orientation, read_manifest(cfg.dataset_dir),
                                            cfg.dataset_dir)
    if orientation == cfg.model.image_orientation or (cfg.model.image_orientation is None and orientation == OPENGL):
        return cfg  # unset means OpenGL (LIBERO's HDF5 and the raw simulator): the config and its hash stay as given
    model = cfg.model.model_copy(update={"image_orientation": orientation})
    return cfg.model_copy(update={"model": model})


def run_training(cfg: TrainConfig, *, tracking=None, resume_from: str | None = None, callbacks=(),
                 storage_path: str | None = None, run_name: str | None = None, on_eval_result=None,
                 rollouts=None):
    """Launch one stage on the current Ray cluster and return its `ray.train.Result`.

    A deterministic failure inside a worker (a CladError) is not retried and is raised as itself.
    With `cfg.eval_every`, checkpoints are rolled out while training runs and this returns once every
    evaluation is done; `on_eval_result(record)` is called (on the driver) after each one. `rollouts`
    (pipelines/shared_pool.py SharedRollouts) sends those rollouts to `clad tune`'s shared env pool."""
    from pipelines.locking import lock_folder

    manifest = check_training_inputs(cfg, resume_from)
    if resume_from is not None:
        resume_from = str(check_resume_dir(resume_from))  # absolute: Ray workers run in another directory
    cfg = with_dataset_conventions(cfg)
    with lock_folder(cfg.run_location, f"clad train {cfg.stage}", flag="output_dir/run_name"):
        return _fit(cfg, manifest, tracking=tracking, resume_from=resume_from, callbacks=callbacks,
                    storage_path=storage_path, run_name=run_name, on_eval_result=on_eval_result, rollouts=rollouts)


def _fit(cfg: TrainConfig, manifest: dict, *, tracking, resume_from, callbacks, storage_path, run_name,
         on_eval_result=None, rollouts=None):
    run_dir = cfg.run_location  # an absolute local path or a URI (checked writable in check_training_inputs)
    storage.write_json(storage.join(run_dir, "train_config.json"), cfg.to_dict(), indent=2, sort_keys=True)
    pool = worker_pool(cfg)  # before building datasets: a bad request fails at once
    sources = data_sources(cfg)  # a mismatched feature set fails here, before any worker starts
    datasets = build_datasets(cfg, sources)
    loop_config = {
        "train": cfg.to_dict(),
        "splits": sorted(s for s, src in sources.items() if src == "memory" or s in datasets),
        "sources": sources,
        "final_dir": storage.join(run_dir, "final"),
        "models_dir": storage.join(run_dir, "models"),  # cfg.keep_models_every
        "resume_from": resume_from,
        "tracking": tracking.__dict__ if tracking is not None else None,
        "dataset_hash": str(manifest.get("fingerprint", "")),
        "threads_per_worker": max(1, int(pool.cpus_per_actor + 0.5)),
    }
    with contextlib.ExitStack() as stack:
        evaluator = None
        if cfg.eval_every:  # closed-loop evaluation during training (pipelines/eval_during_training.py)
            from pipelines.eval_during_training import FOLDER, ClosedLoopEvaluator, closed_loop_dir, preflight

            preflight(cfg, train_cpus=cfg.num_workers * pool.cpus_per_actor, check_room=rollouts is None)
            # this run's own env actors, started once for all of its checkpoints (a policy server, for GPU
            # inference, is started per checkpoint by run_evaluation instead)
            if rollouts is None and cfg.closed_loop.policy_mode == "in_actor":
                from pipelines.shared_pool import run_rollouts

                rollouts = stack.enter_context(run_rollouts(
                    cfg.closed_loop, run_dir, report_to=str(closed_loop_dir(cfg) / FOLDER / "env_pool.json")))
            evaluator = ClosedLoopEvaluator(cfg, storage.join(storage_path or storage.parent(run_dir),
                                                              run_name or cfg.name),
                                            tracking=tracking, on_result=on_eval_result, rollouts=rollouts).start()
        return _fit_trainer(cfg, loop_config, pool, datasets, callbacks, storage_path, run_dir, run_name, evaluator)


def _fit_trainer(cfg: TrainConfig, loop_config: dict, pool, datasets: dict, callbacks, storage_path, run_dir,
                 run_name, evaluator):
    import ray.train
    from ray.train import TrainingFailedError

    from pipelines.failure_policy import CladTorchTrainer, training_error

    trainer = CladTorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": pool.cpus_per_actor, **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=run_name or cfg.name, storage_path=storage_path or storage.parent(run_dir),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            callbacks=list(callbacks)),
        datasets=datasets or None,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if "train" in datasets else []),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as err:
        found = training_error(err)
        if found is err:
            raise
        raise found from None
    if result.error is not None and training_error(result.error) is not result.error:
        raise training_error(result.error) from None
    if evaluator is not None:  # wait for the rollouts still running (an interrupt leaves them resumable)
        evaluator.finish()
    return result


# --------------------------------------------------------------------------------------------------------
# CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train stage 1 (latent dynamics) or stage 2 (diffusion policy) on Ray Train",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["stage1", "stage2"])
    p.add_argument("--config", help="TrainConfig YAML/JSON (fields: see clad/training/config.py)")
    add_overrides(p, "-o steps=100 -o model.dynamics.tau=4")
    p.add_argument("--resume-from", help="start from this checkpoint directory instead of the run's latest")
    add_cluster_args(p)
    p.set_defaults(func=main)


def load_cli_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of `clad train`. A saved train_config.json fed back as --config keeps its settings but
    not its run identity: its parent_run_id belongs to the store and pipeline it came from, and its run_name
    would silently resume (or collide with) that run. Pass -o run_name=... / -o parent_run_id=... to keep them."""
    from clad.config import read_yaml

    cfg = load_train_config(args.config, [f"stage={args.stage}", *args.overrides])
    if not args.config:
        return cfg
    path = Path(args.config)
    data = read_yaml(path) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    given = {o.split("=", 1)[0].strip() for o in args.overrides}
    dropped = {k: data[k] for k in ("parent_run_id", "run_name")
               if data.get(k) and k not in given and (k == "parent_run_id" or "parent_run_id" in data)}
    if dropped:
        log.warning("%s is a saved run config: not reusing its %s (pass -o KEY=VALUE to keep one)", path,
                    ", ".join(f"{k}={v!r}" for k, v in dropped.items()))
        cfg = cfg.replace(**{k: None for k in dropped})
    return cfg


def _local_log_dir(cfg: TrainConfig) -> Path:
    """clad.log beside the run, or in this machine's cache when the run lives in a bucket."""
    if storage.is_remote(cfg.run_location):
        return storage.cache_root() / "logs" / cfg.name
    return Path(cfg.run_location)


def _mark_killed(tracking, final_dir: str) -> None:
    """Ctrl-C: the workers are gone, so their MLflow run would stay RUNNING; mark it KILLED."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import terminate_run

    try:
        client = MlflowClient(tracking.uri)
        exp = client.get_experiment_by_name(tracking.experiment)
        runs = [] if exp is None else client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{final_dir}' and attributes.status = 'RUNNING'")
    except Exception as err:  # best effort: the user is stopping
        log.warning("could not look up the MLflow run to mark it KILLED: %s", err)
        return
    for run in runs:
        terminate_run(tracking.uri, run.info.run_id, "KILLED")


def main(args: argparse.Namespace) -> int:
    import ray

    from pipelines.ray_runtime import init_ray
    from pipelines.tracking import check_tracking, resolve_tracking

    cfg = load_cli_config(args)
    check_training_inputs(cfg, args.resume_from)  # before starting Ray
    tracking = resolve_tracking(cfg.output_dir, uri=args.tracking_uri or cfg.tracking_uri,
                                experiment=cfg.mlflow_experiment)
    check_tracking(tracking)
    if cfg.parent_run_id:
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(tracking.uri).get_run(cfg.parent_run_id)
        except Exception:
            raise ConfigError(f"parent_run_id {cfg.parent_run_id} is not a run in {tracking.uri}: drop it "
                              "(-o parent_run_id=null) or use the store it belongs to") from None
    from pipelines import logs

    log_file = logs.attach_log_file(_local_log_dir(cfg))  # only once every check passed: no folder left behind
    init_ray(address=args.address)
    try:
        result = run_training(cfg, tracking=tracking, resume_from=args.resume_from)
    except KeyboardInterrupt:
        ray.shutdown()  # stops the workers (and a local cluster) at once
        _mark_killed(tracking, storage.join(cfg.run_location, "final"))
        print(f"\ninterrupted: checkpoints so far are in {cfg.run_location}; run the same command again to resume",
              file=sys.stderr)
        return signals.interrupted_exit_code()
    if result.error:
        raise result.error
    final = storage.join(cfg.run_location, "final")
    done = "done" if storage.is_file(storage.join(final, "model.safetensors")) else f"stopped at step {cfg.stop_at_step} (re-run to resume)"
    print(f"\n{cfg.stage} {done}: {cfg.steps} steps planned. Model: {final}")
    print(f"Metrics: {({k: round(v, 5) for k, v in (result.metrics or {}).items() if isinstance(v, float)})}")
    if cfg.eval_every:
        from pipelines.eval_during_training import closed_loop_dir, print_closed_loop

        print_closed_loop(closed_loop_dir(cfg))
    print(f"MLflow: {tracking.ui_command()}")
    print(f"Log: {log_file}")
    return 0
