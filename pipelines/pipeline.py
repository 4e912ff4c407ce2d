"""`clad pipeline`: demonstrations -> preprocessing -> stage 1 -> stage 2 -> parallel evaluation -> summary.

    clad pipeline                                   # the embedded default: a ~15 min smoke run on 2 CPU cores
    clad pipeline --config clad/configs/libero10_paper.yaml -o eval.actors=64
    clad pipeline --config my.yaml --address auto   # on a running Ray cluster

Everything runs under one MLflow parent run. Each step is skipped when its output already exists for the
same inputs and config, and resumes when it was interrupted: demos skip finished task files, preprocessing
is a no-op on an unchanged input folder and config, a training stage lives in a folder named after a hash
of its config (same config: resume or skip; changed config: a fresh folder), and evaluation skips the
episodes already in its log. The config of each step is saved beside its output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import pydantic

from clad import storage
from clad.config import FrozenConfig, apply_overrides, config_from_dict, deep_merge, read_yaml
from clad.data.preprocess_config import PreprocessConfig
from clad.errors import ConfigError
from clad.eval.config import EvalConfig
from clad.training.config import TrainConfig, resolve_model_section
from pipelines.cli_args import add_cluster_args, add_overrides

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "quickstart"
# fields of a TrainConfig that do not change what is trained (left out of the stage folder's hash)
_UNHASHED = {"parent_run_id", "tracking_uri", "mlflow_experiment", "output_dir", "run_name", "stop_at_step", "crash_at_step",
             "num_workers", "cpus_per_worker", "use_gpu", "max_failures", "log_every"}


class DemosStep(FrozenConfig):
    """Scripted demonstrations in the real simulator (used only when `input_dir` is not set)."""

    suite: str = "libero_object"
    tasks: list[str] | None = None  # task indices or names; None = every task of the suite
    episodes_per_task: int = pydantic.Field(10, ge=1)
    image_size: int = pydantic.Field(128, ge=16)
    actors: int | None = pydantic.Field(None, ge=1)
    # init states first_init.. are used for demos; evaluation episode k runs init state k, so with
    # first_init >= eval.episodes_per_task every evaluated scene is one the policy never saw
    first_init: int = pydantic.Field(0, ge=0, le=49)


class PipelineConfig(FrozenConfig):
    name: str = DEFAULT_CONFIG
    output_dir: str = "outputs/quickstart"
    tracking_uri: str | None = None
    mlflow_experiment: str = "clad"
    # a folder of LIBERO demonstration files (your download); when set, no demonstrations are scripted
    input_dir: str | None = None
    demos: DemosStep = DemosStep()
    preprocess: PreprocessConfig = PreprocessConfig()
    # TrainConfig fields shared by both stages (model_preset / model go here), then per-stage overrides
    train: dict[str, Any] = {}
    stage1: dict[str, Any] = {}
    stage2: dict[str, Any] = {}
    # EvalConfig fields; `policy` is filled in with the stage-2 model
    eval: dict[str, Any] = {}
    # [ours] stage 2 reads the frozen stage-1 encoder's cached fp16 features (`clad features`, extracted once
    # before stage 2) instead of encoding images every step; no image augmentation then (docs/feature-cache.md)
    cache_features: bool = False
    # which stage-2 model step 5 evaluates: `final/`, or `best/` (the best checkpoint by closed-loop
    # success, which needs stage2.eval_every > 0; docs/closed-loop.md)
    eval_checkpoint: str = "final"

    @pydantic.model_validator(mode="after")
    def _check_steps(self):
        # fail now, not after an hour of demos, if a stage or the evaluation config is wrong
        # (a bucket output_dir reaches the stages, whose checks refuse what needs a local folder)
        runs = storage.join(self.output_dir, "train") if storage.is_remote(self.output_dir) else Path("<runs>")
        for stage in self.stages:
            self.stage_config(stage, Path("<dataset>"), runs)
        if self.cache_features:  # else a wrong variant fails only after stage 1 has trained
            from clad.training.data_source import feature_training_error

            why = feature_training_error(self.stage_config("stage2", Path("<dataset>"), runs))
            if why:
                raise ValueError(f"cache_features: {why}; or set cache_features=false")
        self.eval_config(Path("<model>"))
        if self.eval_checkpoint not in ("final", "best"):
            raise ValueError(f"eval_checkpoint must be 'final' or 'best', got {self.eval_checkpoint!r}")
        if self.eval_checkpoint == "best" and not self.stage_config("stage2", Path("<dataset>"), Path("<runs>")).eval_every:
            raise ValueError("eval_checkpoint=best needs evaluation during training: set stage2.eval_every (and "
                             "stage2.closed_loop.suite), or eval_checkpoint=final")
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir).resolve()

    @property
    def location(self) -> str:
        """`output_dir` as an absolute local path or an object-storage URI (clad/storage.py)."""
        return storage.normalize(self.output_dir)

    @property
    def stages(self) -> tuple[str, ...]:
        probe = self._stage_dict("stage2", Path("<dataset>"), Path("<runs>"), None)
        foresight = probe.get("model", {}).get("policy", {}).get("foresight", "both")
        return ("stage2",) if foresight == "none" else ("stage1", "stage2")

    def _stage_dict(self, stage: str, dataset: str | Path, runs: str | Path,
                    stage1_dir: str | Path | None) -> dict[str, Any]:
        data = deep_merge(dict(self.train), dict(getattr(self, stage)))
        data.update(stage=stage, dataset_dir=str(dataset), output_dir=str(runs))
        if stage1_dir is not None:
            data["stage1_checkpoint"] = str(stage1_dir)
        return resolve_model_section(data, f"pipeline config '{self.name}', {stage}")

    def stage_config(self, stage: str, dataset: str | Path, runs: str | Path, stage1_dir: str | Path | None = None,
                     parent_run_id: str | None = None) -> TrainConfig:
        data = self._stage_dict(stage, dataset, runs,
                                stage1_dir or (storage.join(runs, "stage1") if stage == "stage2" else None))
        if parent_run_id:
            data["parent_run_id"] = parent_run_id
        cfg = config_from_dict(TrainConfig, data, f"pipeline config '{self.name}', section {stage}")
        if stage == "stage2" and not cfg.model.has_dynamics:
            cfg = cfg.replace(stage1_checkpoint=None)
        return cfg.replace(run_name=f"{stage}-{config_hash(cfg)}")

    def eval_config(self, model_dir: str | Path) -> EvalConfig:
        data = deep_merge({"policy": {"kind": "clad", "checkpoint": str(model_dir)}}, dict(self.eval))
        return config_from_dict(EvalConfig, data, f"pipeline config '{self.name}', section eval")


def config_hash(cfg: TrainConfig) -> str:
    data = {k: v for k, v in cfg.to_dict().items() if k not in _UNHASHED}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def load_pipeline_config(name_or_path: str | None, overrides=()) -> PipelineConfig:
    """A shipped config by name (`clad/configs/<name>.yaml`) or a YAML file, plus dotted overrides."""
    name_or_path = name_or_path or DEFAULT_CONFIG
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        shipped = resources.files("clad") / "configs" / f"{name_or_path}.yaml"
        if not shipped.is_file():
            names = sorted(p.name[:-5] for p in (resources.files("clad") / "configs").iterdir() if p.name.endswith(".yaml"))
            raise ConfigError(f"no pipeline config named '{name_or_path}': pass a YAML file or one of {names}")
        path = Path(str(shipped))
    data = read_yaml(path)
    overrides = list(overrides)
    source = str(path) + (" + command-line overrides" if overrides else "")
    if overrides:
        data = apply_overrides(data, overrides)
    return config_from_dict(PipelineConfig, data, source)


# --------------------------------------------------------------------------------------------------------


def _stage_done(cfg: TrainConfig) -> bool:
    run = cfg.run_location  # the weights are written last, so a final/ with weights is complete
    final, saved = storage.join(run, "final", "model.safetensors"), storage.join(run, "train_config.json")
    if not (storage.is_file(final) and storage.is_file(saved)):
        return False
    saved_cfg = TrainConfig.model_validate(storage.read_json(saved))
    if saved_cfg.model.image_orientation != cfg.model.image_orientation:
        from pipelines.train import with_dataset_conventions

        # run_training fills in the dataset's conventions before saving: compare like with like
        cfg = with_dataset_conventions(cfg)
    return config_hash(saved_cfg) == config_hash(cfg)


def check_pipeline_inputs(cfg: PipelineConfig) -> str:
    """What the config alone cannot check, before any output, Ray or MLflow run. Returns output_dir's location."""
    out = cfg.location  # an absolute local path or a URI
    if cfg.input_dir and storage.is_remote(cfg.input_dir):
        from pipelines.preprocess import check_input_dir

        check_input_dir(cfg.input_dir, "input_dir")  # a wrong bucket, missing credentials or prefix fail here
    elif cfg.input_dir and not Path(cfg.input_dir).expanduser().is_dir():
        raise ConfigError(f"input_dir {cfg.input_dir} is not a folder: point it at a folder of LIBERO *_demo.hdf5 "
                          "files (or a LeRobot dataset), or drop input_dir to script demonstrations")
    storage.check_writable(out, "output_dir")  # a wrong bucket or missing credentials fail before any work
    return out


def run_pipeline(cfg: PipelineConfig, *, address: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Run (or resume) every step; returns the summary that is also written to <output_dir>/summary.json."""
    import mlflow

    from pipelines.demos import run_demos
    from pipelines.evaluate import run_evaluation
    from pipelines.preprocess import run_preprocess
    from pipelines.ray_runtime import init_ray
    from pipelines.tracking import check_tracking, resolve_tracking, start_run
    from pipelines.train import run_training

    out = check_pipeline_inputs(cfg)
    tracking = resolve_tracking(out, uri=tracking_uri or cfg.tracking_uri, experiment=cfg.mlflow_experiment)
    check_tracking(tracking)  # an unreachable tracking server fails here, naming the URI, not after the demos
    storage.write_json(storage.join(out, "pipeline_config.json"), cfg.to_dict(), indent=2, sort_keys=True)
    init_ray(address=address)
    run_file = storage.join(out, "mlflow_run_id")
    previous = storage.read_text(run_file).strip() if storage.is_file(run_file) else None
    summary: dict[str, Any] = {"name": cfg.name, "output_dir": str(out), "steps": {}}

    with start_run(tracking, f"pipeline-{cfg.name}", run_id=previous, params=cfg.to_dict(),
                   tags={"clad.kind": "pipeline"}) as run:
        storage.write_text(run_file, run.info.run_id)
        parent = run.info.run_id

        # 1. demonstrations (only without a user dataset)
        if cfg.input_dir:
            from pipelines.preprocess import check_input_dir

            input_dir = check_input_dir(cfg.input_dir, "input_dir")  # a path or a URI
            summary["steps"]["demos"] = {"skipped": "input_dir given", "input_dir": str(input_dir)}
        else:
            d = cfg.demos
            input_dir = storage.join(out, "demos", d.suite)  # in a bucket: each file uploaded when finished
            log.info("step 1/5: scripted demonstrations -> %s", input_dir)
            storage.write_json(storage.join(out, "demos", "demos_config.json"), d.to_dict(), indent=2, sort_keys=True)
            report = run_demos(d.suite, d.tasks, d.episodes_per_task, input_dir, actors=d.actors,
                               image_size=d.image_size, first_init=d.first_init, address=address)
            summary["steps"]["demos"] = {"dir": str(input_dir), "tasks": report}
            mlflow.log_metrics({f"expert_success/task_{r['task_index']}": float(r.get("success_rate", 0.0))
                                for r in report if "success_rate" in r})
            if not any(r.get("demos", 1) for r in report):
                raise RuntimeError(f"the scripted expert produced no successful demonstration in {input_dir}")

        # 2. preprocessing (a no-op when inputs and config are unchanged)
        dataset = storage.join(out, "dataset")
        log.info("step 2/5: preprocessing %s -> %s", input_dir, dataset)
        pre = run_preprocess(input_dir, dataset, cfg.preprocess, ray_address=address)
        summary["steps"]["preprocess"] = {"dir": str(dataset), "up_to_date": pre.noop, "counts": pre.manifest["counts"]}
        mlflow.set_tag("clad.dataset_hash", pre.manifest.get("fingerprint", ""))

        # 3-4. training stages
        runs = storage.join(out, "train")
        stage_dirs: dict[str, str] = {}
        for i, stage in enumerate(cfg.stages, start=3):
            scfg = cfg.stage_config(stage, dataset, runs, stage_dirs.get("stage1"), parent_run_id=parent)
            if stage == "stage2" and cfg.cache_features:
                scfg = _with_feature_cache(scfg, dataset, summary)
            stage_dirs[stage] = scfg.run_location
            if _stage_done(scfg):
                log.info("step %d/5: %s already trained in %s (skipped)", i, stage, scfg.run_location)
                summary["steps"][stage] = {"dir": scfg.run_location, "skipped": True}
                continue
            log.info("step %d/5: %s (%d steps) -> %s", i, stage, scfg.steps, scfg.run_location)
            result = run_training(scfg, tracking=tracking)
            if result.error:
                raise result.error
            summary["steps"][stage] = {"dir": scfg.run_location, "metrics": _floats(result.metrics)}

        # 5. parallel evaluation (resumes from its episode log)
        model_dir = storage.join(stage_dirs["stage2"], cfg.eval_checkpoint)
        ecfg = cfg.eval_config(model_dir)
        log.info("step 5/5: evaluating %s on %s", model_dir, ecfg.suite)
        report = run_evaluation(ecfg, storage.join(out, "eval"), tracking_uri=tracking.uri, experiment=cfg.mlflow_experiment,
                                address=address, parent_run_id=parent)
        summary["steps"]["eval"] = {"dir": report.paths.get("remote", str(report.out_dir)), "summary": report.summary["summary"]}
        summary["table"] = report.table
        overall = report.summary["summary"]["overall"]
        mlflow.log_metric("success_rate/overall", overall["rate"])
        summary["mlflow"] = {"uri": tracking.uri, "run_id": parent, "ui": tracking.ui_command()}
        text = json.dumps(summary, indent=2, default=str) + "\n"
        storage.write_text(storage.join(out, "summary.json"), text)
        mlflow.log_text(text, "summary.json")
    return summary


def _with_feature_cache(scfg: TrainConfig, dataset: Path, summary: dict) -> TrainConfig:
    """Extract (or reuse) the frozen encoder's feature set and point stage 2 at it (its own stage folder)."""
    from clad.training.data_source import feature_training_error, model_encoder_spec
    from pipelines.features import extract_features

    why = feature_training_error(scfg)
    spec = model_encoder_spec(scfg)
    if why or spec is None:
        raise ConfigError(f"cache_features: {why or 'the frozen backbone has no weights (vision.checkpoint_dir)'}")
    log.info("step 4/5: caching the frozen encoder's features of %s", dataset)
    res = extract_features(dataset, spec)
    summary["steps"]["features"] = res
    cfg = scfg.replace(loader=scfg.loader.replace(feature_set=res["root"]))
    return cfg.replace(run_name=f"stage2-{config_hash(cfg)}")


def _floats(metrics: dict | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}


# --------------------------------------------------------------------------------------------------------
# CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="demos -> preprocess -> stage 1 -> stage 2 -> parallel eval, in one command",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"a shipped config name (clad/configs/*.yaml) or a YAML file (default: {DEFAULT_CONFIG})")
    add_overrides(p, "-o train.steps=100 -o eval.actors=8")
    add_cluster_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipelines import logs

    cfg = load_pipeline_config(args.config, args.overrides)
    check_pipeline_inputs(cfg)  # refused before the log, Ray or an MLflow run starts
    log_file = logs.attach_log_file(cfg.location)  # a bucket output_dir: in this machine's cache (pipelines/logs.py)
    summary = run_pipeline(cfg, address=args.address, tracking_uri=args.tracking_uri)
    print()
    print(summary["table"])
    print(f"\noutputs: {summary['output_dir']}  (summary.json, eval/summary.json, eval/success.png, eval/videos/)")
    print(f"MLflow:  {summary['mlflow']['ui']}")
    print(f"log:     {log_file}  (clad --verbose pipeline ... shows it all on the console)")
    if cfg.name == DEFAULT_CONFIG:
        print("\nThis was a smoke run: a few scripted demos and minutes of training on a small model. For real runs"
              " see clad/configs/ (libero10_paper.yaml) and README 'Configs'.")
    return 0
