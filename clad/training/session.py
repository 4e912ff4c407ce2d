"""One training stage in plain PyTorch: model, optimiser, schedule, EMA, step, validation, checkpoints.

The Ray Train loop (`pipelines/train.py`) feeds it batches and decides when to validate, checkpoint and
report; everything that touches tensors lives here, so it is testable without Ray.

A training checkpoint directory holds

    model.safetensors, config.json, stats.json   the model (stage 2: with the policy's EMA weights swapped in)
    training_state.safetensors / .json           optimiser, scheduler, RNG, step, policy EMA, MLflow run id
    train_config.json                            the resolved TrainConfig
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from clad import storage
from clad.config import save_config
from clad.errors import CheckpointError, DataError
from clad.model.checkpoint import dataset_identity, load_checkpoint, load_stage1_vision, save_checkpoint
from clad.model.model import CladModel
from clad.model.task_table import TASK_TABLE, write_task_table
from clad.training.config import TrainConfig
from clad.training.objectives import StageObjective, validate_stage1, validate_stage2
from clad.training.optim import build_optimizer, build_scheduler
from clad.training.state import load_training_state, save_training_state

log = logging.getLogger(__name__)

TRAIN_CONFIG = "train_config.json"


def model_stats(dataset_dir: str | Path, proprio_keys: Iterable[str]) -> dict[str, dict[str, list[float]]]:
    """The normaliser's statistics from a preprocessed dataset's stats.json: the configured proprio keys
    concatenated in order, and the actions."""
    path = storage.join(dataset_dir, "stats.json")  # a local folder or a URI
    if not storage.is_file(path):
        raise DataError(f"{path} is missing: {dataset_dir} is not a dataset written by `clad preprocess`")
    per_key = storage.read_json(path)["keys"]
    missing = [k for k in [*proprio_keys, "actions"] if k not in per_key]
    if missing:
        raise DataError(f"{path} has no statistics for {missing}; re-run `clad preprocess` or change model.proprio_keys")

    def concat(keys: list[str]) -> dict[str, list[float]]:
        return {s: [v for k in keys for v in per_key[k][s]] for s in ("min", "max", "mean", "std")}

    return {"proprio": concat(list(proprio_keys)), "actions": concat(["actions"])}


class PolicyEMA:
    """diffusion_policy-style EMA of the stage-2 weights (diffusers' EMAModel with warm-up)."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        from diffusers.training_utils import EMAModel

        self.params = params
        self.ema = EMAModel(params, decay=decay, use_ema_warmup=True, power=0.75)

    def step(self) -> None:
        self.ema.step(self.params)

    @contextlib.contextmanager
    def swapped_in(self):
        """The EMA weights are in the model inside the block, the training weights again after it."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def state(self) -> dict[str, Any]:
        sd = self.ema.state_dict()
        return {"optimization_step": int(sd["optimization_step"]), "cur_decay_value": sd.get("cur_decay_value"),
                "shadow_params": [p.detach().cpu() for p in sd["shadow_params"]]}

    def load(self, state: Mapping[str, Any]) -> None:
        self.ema.optimization_step = int(state["optimization_step"])
        self.ema.cur_decay_value = state.get("cur_decay_value")
        for dst, src in zip(self.ema.shadow_params, state["shadow_params"]):
            dst.data.copy_(src.to(dst.device))


class TrainingSession:
    """Everything one stage trains, on one device. `wrap` turns the objective into its data-parallel form."""

    def __init__(self, cfg: TrainConfig, stats: Mapping, device: torch.device | str = "cpu",
                 wrap: Callable[[nn.Module], nn.Module] | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        model = CladModel(cfg.model, stats)
        if cfg.stage == "stage2" and cfg.model.has_dynamics:
            load_checkpoint(_model_dir(cfg.stage1_checkpoint), model=model)
            model.freeze_stage1()
            model.init_policy_vision()
        elif cfg.stage == "stage2" and cfg.model.needs_stage1_checkpoint:
            # the matched-vision control: only the frozen stage-1 CNN, no dynamics, no foresight
            load_stage1_vision(_model_dir(cfg.stage1_checkpoint), model)
            model.freeze_stage1()
        if cfg.stage == "stage1":
            model.policy.requires_grad_(False)  # trained in stage 2
        self.model = model.to(self.device)
        self.objective = StageObjective(self.model, cfg.stage)
        named = [(n, p) for n, p in self.objective.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(named, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.steps)
        self.params = [p for _, p in named]
        self.policy_ema = PolicyEMA(self.params, cfg.policy_ema_decay) if (
            cfg.stage == "stage2" and cfg.policy_ema_decay > 0) else None
        self.runner: nn.Module = wrap(self.objective) if wrap else self.objective
        self.step = 0
        self.mlflow_run_id: str | None = None
        self.scaler = torch.amp.GradScaler("cuda") if (cfg.model.autocast == "fp16" and self.device.type == "cuda") else None

    # ------------------------------------------------------------------------------------------------------

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        self.model.train()
        loss, metrics = self.runner(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip_norm)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.cfg.stage == "stage1":
            self.model.update_ema()  # EMA targets follow the online encoders
        elif self.policy_ema is not None:
            self.policy_ema.step()
        self.step += 1
        metrics = dict(metrics)
        metrics.update(grad_norm=float(grad_norm), lr=lr)
        if not all(map(_finite, metrics.values())):
            raise FloatingPointError(f"non-finite training metrics at step {self.step}: {metrics}")
        return metrics

    def validate(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
        if self.cfg.stage == "stage1":
            return validate_stage1(self.model, batches)
        if self.policy_ema is not None:
            with self.policy_ema.swapped_in():
                return validate_stage2(self.model, batches, seed=self.cfg.seed)
        return validate_stage2(self.model, batches, seed=self.cfg.seed)

    # ------------------------------------------------------------------------------------------------------

    def export_model(self, directory: str | Path) -> Path:
        """The model directory users evaluate (stage 2: EMA weights), recording the dataset it was trained on and
        its instruction table (the strings training conditioned on; evaluation conditions on the same,
        clad/model/task_table.py)."""
        identity = dataset_identity(self.cfg.dataset_dir)
        if self.policy_ema is not None:
            with self.policy_ema.swapped_in():
                out = save_checkpoint(self.model, directory, self.cfg.stage, identity)
        else:
            out = save_checkpoint(self.model, directory, self.cfg.stage, identity)
        if storage.is_file(storage.join(self.cfg.dataset_dir, TASK_TABLE)):  # a bucket dataset too
            write_task_table(out, self.cfg.dataset_dir)
        return out

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.export_model(directory)
        extra: dict[str, Any] = {"mlflow_run_id": self.mlflow_run_id or ""}
        if self.policy_ema is not None:
            extra["policy_ema"] = self.policy_ema.state()
        # raw (non-EMA) trainable weights: model.safetensors may hold the EMA swap
        extra["train_weights"] = {str(i): p.detach().cpu() for i, p in enumerate(self.params)}
        save_training_state(directory, step=self.step, optimizer=self.optimizer, scheduler=self.scheduler, extra=extra)
        save_config(self.cfg, directory / TRAIN_CONFIG)
        return directory

    def restore(self, directory: str | Path) -> int:
        directory = Path(directory)
        load_checkpoint(directory, model=self.model)
        info = load_training_state(directory, optimizer=self.optimizer, scheduler=self.scheduler)
        extra = info["extra"]
        weights = extra.get("train_weights", {})
        if len(weights) != len(self.params):
            raise CheckpointError(f"{directory}: training state has {len(weights)} trainable tensors, the model "
                                  f"{len(self.params)}; was it written for another stage or model config?")
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(weights[str(i)].to(p.device))
        if self.policy_ema is not None and "policy_ema" in extra:
            self.policy_ema.load(extra["policy_ema"])
        self.mlflow_run_id = extra.get("mlflow_run_id") or None
        self.step = info["step"]
        return self.step


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _model_dir(path: str | Path | None) -> Path:
    """A stage output directory may be given as the run directory; the model lives in its `final/`."""
    if path is None:
        raise CheckpointError("no stage-1 checkpoint given (TrainConfig.stage1_checkpoint)")
    p = str(path)  # a local folder or a URI; a remote one is copied to this node's cache once
    if storage.is_file(storage.join(p, "model.safetensors")):
        return storage.local_copy(p)
    if storage.is_file(storage.join(p, "final", "model.safetensors")):
        return storage.local_copy(storage.join(p, "final"))
    raise CheckpointError(f"{p} holds no model.safetensors (nor {storage.join(p, 'final')}): pass the directory written by "
                          "`clad train stage1` (its final/ folder or a checkpoint folder)")


class Throughput:
    """Samples per second and the fraction of wall time spent waiting for data."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.samples = 0
        self.wait = 0.0
        self.start = time.perf_counter()

    def record(self, samples: int, wait_s: float) -> None:
        self.samples += samples
        self.wait += wait_s

    def summary(self) -> dict[str, float]:
        dt = max(time.perf_counter() - self.start, 1e-9)
        return {"samples_per_s": self.samples / dt, "data_wait_frac": self.wait / dt}
