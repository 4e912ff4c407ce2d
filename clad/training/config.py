"""`TrainConfig`: everything one training stage needs, typed and frozen.

A YAML file for `clad train` looks like

    stage: stage1
    dataset_dir: outputs/quickstart/dataset
    model_preset: cpu            # optional: start from a named model size ...
    model: {dynamics: {tau: 4}}  # ... and override fields of it
    steps: 2000
    batch_size: 64

The resolved config (preset + overrides) is what gets saved beside every checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal

import pydantic

from clad.config import FrozenConfig, deep_merge, load_config
from clad.errors import ConfigError
from clad.model.config import ModelConfig
from clad.training.closed_loop import ClosedLoopConfig
from clad.training.optim import OptimConfig

Stage = Literal["stage1", "stage2"]


class DataLoaderConfig(FrozenConfig):
    """How windows stream out of the preprocessed dataset."""

    # keep every stride-th step as a window centre (1 = every step)
    window_stride: int = pydantic.Field(1, ge=1)
    val_window_stride: int = pydantic.Field(4, ge=1)
    # windows mixed across episodes before batching (per worker); 0 disables the local shuffle
    shuffle_buffer: int = pydantic.Field(2048, ge=0)
    # [ours] where windows come from. "memory": each worker reads its share of the episodes once and gathers
    # windows by index (no per-epoch re-read/decode, no shuffle-buffer refill); "stream": Ray Data streams
    # them (datasets larger than memory); "auto": memory when a worker's share fits memory_budget_gb.
    source: Literal["auto", "memory", "stream"] = "auto"
    memory_budget_gb: float = pydantic.Field(4.0, ge=0.0)
    # a feature set written by `clad features` (the frozen encoder's fp16 features): windows carry feat_*
    # instead of images. Stage 2 (frozen stage-1 CNN or frozen backbone) and stage 1 with a frozen backbone.
    feature_set: str | None = None


class TrainConfig(FrozenConfig):
    stage: Stage = "stage1"
    dataset_dir: str
    # each run lives in <output_dir>/<run_name>/ (Ray's checkpoints) with the final export in .../final/
    output_dir: str = "outputs/train"
    run_name: str | None = None
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    loader: DataLoaderConfig = DataLoaderConfig()
    steps: int = pydantic.Field(1000, ge=1)
    # stop this invocation early (with a checkpoint) at this step; the schedule still spans `steps`, so a
    # later run of the same config resumes exactly where this one stopped
    stop_at_step: int | None = pydantic.Field(None, ge=1)
    batch_size: int = pydantic.Field(64, ge=1)  # global batch, split evenly over the workers
    seed: int = 0
    log_every: int = pydantic.Field(20, ge=1)
    checkpoint_every: int = pydantic.Field(500, ge=1)
    keep_checkpoints: int = pydantic.Field(2, ge=1)
    # stage 2: every keep_models_every steps (a multiple of checkpoint_every) the checkpoint's model (the
    # weights `final/` would hold, no optimizer state) is also written to <run>/models/step_NNNNNNN/ and never
    # deleted, so `clad eval-checkpoints` can roll out a finished run's intermediate checkpoints (Ray's
    # keep_checkpoints prunes checkpoint_* folders). None = every checkpoint, 0 = off. [ours]
    keep_models_every: int | None = pydantic.Field(None, ge=0)
    validate_every: int = pydantic.Field(250, ge=1)
    val_batches: int = pydantic.Field(8, ge=1)
    # closed-loop evaluation during training (stage 2): every eval_every steps (a multiple of
    # checkpoint_every; 0 = off) the new checkpoint is rolled out asynchronously (docs/closed-loop.md)
    eval_every: int = pydantic.Field(0, ge=0)
    closed_loop: ClosedLoopConfig = ClosedLoopConfig()
    # stage 2: exponential moving average of the policy weights (diffusion_policy's EMA); 0 disables it
    policy_ema_decay: float = pydantic.Field(0.999, ge=0.0, lt=1.0)
    stage1_checkpoint: str | None = None  # stage 2: a stage-1 `final/` (or checkpoint) directory
    # Ray Train: data-parallel workers (gloo on CPU, NCCL on GPU); cpus_per_worker None = sized from the cluster
    num_workers: int = pydantic.Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float | None = pydantic.Field(None, gt=0)
    max_failures: int = pydantic.Field(2, ge=0)  # restarts from the last checkpoint after a lost worker
    # fault drill: the rank-0 worker process dies at this step (once: not after a restore), to check that
    # `max_failures` brings the run back from its last checkpoint. Leave unset for real runs.
    crash_at_step: int | None = pydantic.Field(None, ge=1)
    # MLflow: parent run to nest under (set by `clad pipeline` / `clad tune`), and where the store is
    tracking_uri: str | None = None
    mlflow_experiment: str = "clad"
    parent_run_id: str | None = None

    @pydantic.model_validator(mode="after")
    def _check(self):
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by num_workers ({self.num_workers})")
        if self.stage == "stage2" and self.model.has_dynamics and not self.stage1_checkpoint:
            raise ValueError("stage 2 with foresight needs stage1_checkpoint (a stage-1 output directory); "
                             "set it, or set model.policy.foresight=none for the policy-only variant")
        if self.stage == "stage2" and self.model.needs_stage1_checkpoint and not self.stage1_checkpoint:
            raise ValueError("model.policy.obs_vision=frozen_stage1 reads the frozen stage-1 CNN: set "
                             "stage1_checkpoint to the stage-1 output directory of the CLaD run it is matched to")
        if self.stage == "stage1" and not self.model.has_dynamics:
            raise ValueError("stage 1 trains the dynamics model, but model.policy.foresight=none has none")
        if self.keep_models_every and self.keep_models_every % self.checkpoint_every:
            raise ValueError(f"keep_models_every ({self.keep_models_every}) must be a multiple of checkpoint_every "
                             f"({self.checkpoint_every}): only checkpoints have a model to keep; set keep_models_every="
                             f"{max(1, round(self.keep_models_every / self.checkpoint_every)) * self.checkpoint_every}"
                             " (or 0 to keep none)")
        if self.eval_every:
            if self.stage != "stage2":
                raise ValueError(f"eval_every={self.eval_every}: stage 1 has no policy to roll out; set eval_every "
                                 "on stage 2 (or the policy-only run), or eval_every=0")
            if self.eval_every % self.checkpoint_every:
                raise ValueError(f"eval_every ({self.eval_every}) must be a multiple of checkpoint_every "
                                 f"({self.checkpoint_every}): only checkpoints can be rolled out; set eval_every="
                                 f"{max(1, round(self.eval_every / self.checkpoint_every)) * self.checkpoint_every}")
            if not self.closed_loop.suite:
                raise ValueError("eval_every > 0 needs closed_loop.suite (the LIBERO suite to roll out on, "
                                 "e.g. -o closed_loop.suite=libero_object)")
        return self

    @property
    def name(self) -> str:
        return self.run_name or self.stage

    @property
    def run_dir(self) -> Path:
        """The run folder on a local (or mounted) file system; see `run_location` for URIs."""
        return Path(self.output_dir).resolve() / self.name

    @property
    def run_location(self) -> str:
        """The run folder as an absolute local path or an object-storage URI (clad/storage.py)."""
        from clad import storage

        return storage.join(storage.normalize(self.output_dir), self.name)

    @property
    def models_every(self) -> int:
        """The resolved keep_models_every: stage-2 models kept at this cadence (0: none; stage 1 keeps none)."""
        if self.stage != "stage2":
            return 0
        return self.checkpoint_every if self.keep_models_every is None else self.keep_models_every

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers


def resolve_model_section(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Expand `model_preset: NAME` into the preset's fields, with `model:` overriding them."""
    data = dict(data)
    preset = data.pop("model_preset", None)
    if preset is None:
        return data
    from clad.model.sizes import model_preset

    try:
        base = model_preset(preset).to_dict()
    except (KeyError, ValueError) as err:
        raise ConfigError(f"{source}: field 'model_preset': {err}") from None
    data["model"] = deep_merge(base, data.get("model") or {})
    return data


def load_train_config(path: str | Path | None, overrides: Iterable[str] = (), base: dict | None = None) -> TrainConfig:
    return load_config(TrainConfig, path, overrides, base=base, transform=resolve_model_section)
