"""A pretrained backbone directory: `model.safetensors` + `config.json`; nothing is unpickled."""

from __future__ import annotations

import json
from pathlib import Path

from clad import storage
from clad.errors import CheckpointError, ConfigError


def read_pretrained_dir(directory: str | None, backbone: str) -> tuple[Path, dict]:
    """(directory, parsed config.json) of `vision.checkpoint_dir`, checked before any weights are read."""
    if directory is None:
        raise ConfigError(f"vision.checkpoint_dir must be set for vision.backbone='{backbone}'")
    for name in ("model.safetensors", "config.json"):
        if not storage.is_file(storage.join(directory, name)):
            raise CheckpointError(
                f"vision.checkpoint_dir={directory}: missing {name} (a pretrained backbone directory holds "
                "model.safetensors + config.json; convert .pth/.pt weights to safetensors once)"
            )
    path = storage.local_copy(directory)  # a URI: this node's cached copy (downloaded once per node)
    try:
        meta = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {err}") from None
    return path, meta
