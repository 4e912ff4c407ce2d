"""Checkpoints without pickle: a directory per stage holding

    model.safetensors   weights + normaliser buffers (metadata: stage, format and the identity below)
    config.json         the resolved ModelConfig
    stats.json          the normalisation statistics (also inside the weights, kept readable here)

stage1 holds the normaliser, the (trainable) backbone, its EMA copy and the dynamics; stage2 holds everything.
A frozen pretrained backbone is never copied in: it is reloaded from `vision.checkpoint_dir`.

    save_checkpoint(model, "runs/x/stage1", "stage1")
    model = load_checkpoint("runs/x/stage2")                       # config from the directory
    load_checkpoint("runs/x/stage1", model=model)                  # into a model being trained in stage 2
    info = inspect_checkpoint("runs/x/stage2", expect_stage="stage2")  # header only: what a command checks first

Identity (safetensors metadata, all strings): `variant` (policy.foresight), `proprio_dim`, `lang_dim`, and,
when the trainer passes them, `dataset_fingerprint` and `instructions` (JSON list, row = task index).
Checkpoints written before these fields existed carry only stage and format; checks skip what is absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from clad import storage
from clad.config import config_from_dict, save_config
from clad.data.conventions import OPENGL
from clad.errors import CheckpointError, ConfigError
from clad.model.config import RUNTIME_FIELDS, ModelConfig
from clad.model.model import CladModel
from clad.model.normalizer import check_stats

Stage = Literal["stage1", "stage2"]
FORMAT = "clad-model-v1"
WEIGHTS, CONFIG, STATS = "model.safetensors", "config.json", "stats.json"


def _stage_keys(model: CladModel, stage: str) -> list[str]:
    keys = []
    for k in model.state_dict():
        if k.startswith("vision.backbone."):  # frozen pretrained weights live in vision.checkpoint_dir
            continue
        if stage == "stage1" and k.startswith("policy."):
            continue
        keys.append(k)
    return keys


def dataset_identity(dataset_dir: str | Path) -> dict[str, str]:
    """The identity fields a checkpoint trained on `dataset_dir` records: fingerprint and instruction table."""
    manifest_path = storage.join(dataset_dir, "manifest.json")  # a local folder or a bucket URI
    if not storage.is_file(manifest_path):
        return {}
    manifest = storage.read_json(manifest_path)
    tasks = (manifest.get("language") or {}).get("tasks") or manifest.get("tasks") or []
    instructions = [t.get("instruction", "") if isinstance(t, dict) else str(t) for t in tasks]
    return {"dataset_fingerprint": str(manifest.get("fingerprint", "")), "instructions": json.dumps(instructions)}


def save_checkpoint(model: CladModel, directory: str | Path, stage: Stage,
                    identity: Mapping[str, str] | None = None) -> Path:
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"stage must be 'stage1' or 'stage2', got {stage!r}")
    if stage == "stage1" and model.dynamics is None:
        raise CheckpointError("policy.foresight='none' has no stage 1 to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    tensors = {k: state[k].detach().contiguous().cpu() for k in _stage_keys(model, stage)}
    cfg = model.cfg
    meta = {**(identity or {}), "stage": stage, "format": FORMAT, "variant": cfg.policy.foresight,
            "proprio_dim": str(cfg.proprio_dim), "lang_dim": str(cfg.lang_dim)}
    save_file(tensors, str(directory / WEIGHTS), metadata=meta)
    save_config(model.cfg, directory / CONFIG)
    (directory / STATS).write_text(json.dumps(model.normalizer.stats(), indent=2) + "\n")
    return directory


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def config_differences(saved: ModelConfig, requested: ModelConfig, stage: str) -> list[str]:
    """Dotted fields whose values differ, ignoring run-time fields (and the policy for a stage-1 checkpoint)."""
    a, b = _flatten(saved.to_dict()), _flatten(requested.to_dict())
    for d in (a, b):  # unset = HDF5 (opengl) frames: checkpoints from before the field, models built directly
        d["image_orientation"] = d.get("image_orientation") or OPENGL
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k in RUNTIME_FIELDS or (stage == "stage1" and k.startswith("policy.")):
            continue
        if a.get(k) != b.get(k):
            diffs.append(f"field '{k}': checkpoint has {a.get(k)!r}, config requests {b.get(k)!r}")
    return diffs


def read_checkpoint_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {Path(directory)} is not a clad model checkpoint")
    try:
        return config_from_dict(ModelConfig, json.loads(path.read_text()), str(path))
    except (json.JSONDecodeError, ConfigError) as err:
        raise CheckpointError(f"{path} does not hold a valid ModelConfig: {err}") from None


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint is, read from its header and config.json without loading any tensor."""

    directory: Path
    stage: str
    config: ModelConfig
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def dataset_fingerprint(self) -> str | None:
        return self.metadata.get("dataset_fingerprint") or None

    @property
    def instructions(self) -> list[str] | None:
        raw = self.metadata.get("instructions")
        return json.loads(raw) if raw else None


STAGE_HINT = {"stage1": "`clad train stage1` (latent dynamics, no trained policy)",
              "stage2": "`clad train stage2` (the policy)"}


def inspect_checkpoint(directory: str | Path, expect_stage: str | None = None, flag: str = "checkpoint") -> CheckpointInfo:
    """Check a checkpoint directory from its header alone: config.json valid, model.safetensors complete (the
    header must cover the whole file, so a truncated copy fails here) and written by clad, its stage the one
    the command needs. Raises CheckpointError naming `flag`, the file and the fix."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{flag} {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"{flag} {directory} is a file: pass the checkpoint folder (holding {WEIGHTS})")
    if not (directory / CONFIG).is_file() and (directory / "final" / WEIGHTS).is_file():
        raise CheckpointError(f"{flag} {directory} is a training run folder: pass its model, {directory / 'final'}")
    cfg = read_checkpoint_config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing: {flag} must be a final/ or checkpoint_* folder written by "
                              "`clad train`")
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights} is not a complete safetensors file ({err}); it was probably truncated "
                              "while copying: copy it again or re-export the checkpoint") from None
    stage = meta.get("stage")
    if meta.get("format") != FORMAT or stage not in ("stage1", "stage2"):
        raise CheckpointError(f"{weights} was not written by clad.model.checkpoint (metadata {meta})")
    if expect_stage is not None and stage != expect_stage:
        raise CheckpointError(f"{flag} {directory} is a {stage} checkpoint, written by {STAGE_HINT[stage]}; this "
                              f"command needs a {expect_stage} checkpoint: pass the final/ folder of "
                              f"{STAGE_HINT[expect_stage].split(' (')[0]}")
    for key, want in (("proprio_dim", cfg.proprio_dim), ("lang_dim", cfg.lang_dim), ("variant", cfg.policy.foresight)):
        if key in meta and meta[key] != str(want):
            raise CheckpointError(f"{weights} records {key}={meta[key]} but {directory / CONFIG} says {want}: "
                                  "the two files come from different checkpoints")
    return CheckpointInfo(directory, stage, cfg, meta)


def load_checkpoint(
    directory: str | Path,
    cfg: ModelConfig | None = None,
    model: CladModel | None = None,
    device: str | torch.device = "cpu",
) -> CladModel:
    """Load a stage-1 or stage-2 checkpoint into `model` (or a new CladModel built from `cfg` / the saved config).

    Raises CheckpointError naming the config field(s) that differ from the saved config, or the parameter(s)
    whose shapes differ, or missing files/keys.
    """
    directory = Path(directory)
    saved_cfg = read_checkpoint_config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {err}") from None
    stage = meta.get("stage")
    if meta.get("format") != FORMAT or stage not in ("stage1", "stage2"):
        raise CheckpointError(f"{weights} was not written by clad.model.checkpoint (metadata {meta})")
    if (directory / STATS).is_file():
        check_stats(json.loads((directory / STATS).read_text()), str(directory / STATS))

    requested = model.cfg if model is not None else cfg
    if requested is not None:
        diffs = config_differences(saved_cfg, requested, stage)
        if diffs:
            raise CheckpointError(
                f"checkpoint {directory} ({stage}) does not match the requested config:\n  " + "\n  ".join(diffs)
            )
    if model is None:
        model = CladModel(requested or saved_cfg).to(device)

    expected = _stage_keys(model, stage)
    state = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in state]
    shapes = [
        f"'{k}': checkpoint {tuple(v.shape)} vs model {tuple(state[k].shape)}"
        for k, v in tensors.items()
        if k in state and tuple(v.shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch for parameter(s) " + "; ".join(shapes[:10]))
        if missing:
            parts.append(f"missing parameter(s) {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected parameter(s) {unexpected[:10]}")
        raise CheckpointError(f"checkpoint {directory} does not fit the model: " + " | ".join(parts))
    model.load_state_dict(tensors, strict=False)
    if stage == "stage2" and model.has_stage1:
        model.freeze_stage1()  # a stage-2 model is always used with stage 1 frozen
    return model


# fields the frozen stage-1 CNN's features depend on: they must agree between the stage-1 checkpoint and the
# matched-vision control that reads it
_VISION_FIELDS = ("vision.",)


def load_stage1_vision(directory: str | Path, model: CladModel) -> CladModel:
    """Load only the CNN (and the normaliser) of a stage-1 checkpoint into `model`: the matched-vision control
    (policy.foresight='none', policy.obs_vision='frozen_stage1') reads the frozen encoder CLaD's policy reads.
    The caller freezes it (`model.freeze_stage1()`)."""
    directory = Path(directory)
    saved_cfg = read_checkpoint_config(directory)
    weights = directory / WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            stage = (f.metadata() or {}).get("stage")
        tensors = load_file(str(weights), device=str(model.device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {err}") from None
    if stage != "stage1":
        raise CheckpointError(f"{weights} is a {stage} checkpoint: policy.obs_vision='frozen_stage1' reads the "
                              "CNN of a stage-1 checkpoint (stage1_checkpoint = the CLaD run's stage-1 output)")
    diffs = [d for d in config_differences(saved_cfg, model.cfg, stage)
             if d.startswith(tuple(f"field '{f}" for f in _VISION_FIELDS + ("proprio_",)))]
    if diffs:
        raise CheckpointError(f"stage-1 checkpoint {directory} does not match the requested vision:\n  "
                              + "\n  ".join(diffs))
    state = model.state_dict()
    part = {k: v for k, v in tensors.items() if k.startswith(("vision.", "normalizer."))}
    missing = [k for k in state if k.startswith("vision.") and not k.startswith("vision.backbone.") and k not in part]
    shapes = [k for k, v in part.items() if k in state and tuple(v.shape) != tuple(state[k].shape)]
    if missing or shapes or not part:
        raise CheckpointError(f"stage-1 checkpoint {directory} does not fit the model's CNN: missing {missing[:10]}, "
                              f"shape mismatch {shapes[:10]}")
    model.load_state_dict(part, strict=False)
    return model
