"""Training state (optimiser, scheduler, RNG, step counters) saved without pickle.

Tensors go to `training_state.safetensors`; everything else (hyper-parameters of the param groups,
scheduler counters, Python RNG state) to `training_state.json`. Loading needs neither pickle nor the
objects' classes, so a checkpoint written on a GPU cluster resumes on a laptop and vice versa.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from clad.errors import CheckpointError

TENSORS_FILE = "training_state.safetensors"
META_FILE = "training_state.json"


def _split_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure by a reference string; collect the tensors."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_json_key(k), _split_state(v, f"{prefix}.{k}" if prefix else str(k), tensors)]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        kind = "__tuple__" if isinstance(obj, tuple) else "__list__"
        return {kind: [_split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at '{prefix}' in a training state")


def _json_key(k: Any) -> Any:
    if isinstance(k, (int, str)):
        return k
    raise TypeError(f"unsupported state-dict key {k!r}")


def _join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _join_state(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join_state(v, tensors) for v in obj["__tuple__"])
        if "__list__" in obj:
            return [_join_state(v, tensors) for v in obj["__list__"]]
    return obj


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and Python's random, as storable structures."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _python_rng_to_json(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_python_rng_from_json(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_rng_to_json(st: tuple) -> list:
    version, internal, gauss = st
    return [version, list(internal), gauss]


def _python_rng_from_json(st: list | tuple) -> tuple:
    version, internal, gauss = st
    return (version, tuple(internal), gauss)


def save_training_state(directory: str | Path, *, step: int, optimizer: torch.optim.Optimizer | None = None,
                        scheduler: Any = None, extra: dict[str, Any] | None = None, rng: bool = True) -> Path:
    """Write the resumable training state into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    payload: dict[str, Any] = {"step": int(step)}
    if optimizer is not None:
        payload["optimizer"] = _split_state(optimizer.state_dict(), "optimizer", tensors)
    if scheduler is not None:
        # LambdaLR stores plain-function lambdas as None: the schedule itself is rebuilt from the config
        payload["scheduler"] = _split_state(scheduler.state_dict(), "scheduler", tensors)
    if rng:
        payload["rng"] = _split_state(capture_rng(), "rng", tensors)
    if extra:
        payload["extra"] = _split_state(extra, "extra", tensors)
    save_file(tensors, str(directory / TENSORS_FILE))
    (directory / META_FILE).write_text(json.dumps(payload, indent=1))
    return directory


def load_training_state(directory: str | Path, *, optimizer: torch.optim.Optimizer | None = None,
                        scheduler: Any = None, rng: bool = True) -> dict[str, Any]:
    """Restore what `save_training_state` wrote; returns {"step": int, "extra": {...}}."""
    directory = Path(directory)
    meta_path, tensor_path = directory / META_FILE, directory / TENSORS_FILE
    if not meta_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"{directory} has no training state ({META_FILE} + {TENSORS_FILE}); "
                              "pass a checkpoint directory written by `clad train`")
    payload = json.loads(meta_path.read_text())
    tensors = load_file(str(tensor_path))
    if optimizer is not None:
        if "optimizer" not in payload:
            raise CheckpointError(f"{meta_path} holds no optimizer state")
        try:
            optimizer.load_state_dict(_join_state(payload["optimizer"], tensors))
        except ValueError as err:
            raise CheckpointError(f"optimizer state in {directory} does not fit the model: {err}") from None
    if scheduler is not None and "scheduler" in payload:
        scheduler.load_state_dict(_join_state(payload["scheduler"], tensors))
    if rng and "rng" in payload:
        restore_rng(_join_state(payload["rng"], tensors))
    return {"step": int(payload["step"]), "extra": _join_state(payload.get("extra", {}), tensors)}
