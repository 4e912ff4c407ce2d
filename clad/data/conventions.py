"""Image orientation: a recorded property of a dataset (manifest `image_orientation`) and of a model
(ModelConfig.image_orientation, saved in its checkpoint), applied to the simulator's frames at evaluation.

    opengl   LIBERO's HDF5 files and the raw simulator: the frame is rotated by 180 degrees
    upright  public LeRobot LIBERO datasets (their converters rotate every frame by 180 degrees)

Rotating by 180 degrees is its own inverse, so converting either way is the same operation.
"""

from __future__ import annotations

from typing import Literal, Mapping

import numpy as np

from clad.errors import ConfigError

Orientation = Literal["opengl", "upright"]
OPENGL: Orientation = "opengl"
UPRIGHT: Orientation = "upright"
ORIENTATIONS = (OPENGL, UPRIGHT)
SIMULATOR_ORIENTATION: Orientation = OPENGL  # what clad.libero.env returns (the demo-file layout)


def reorient(images: np.ndarray, src: str, dst: str) -> np.ndarray:
    """(..., H, W, C) images from orientation `src` to `dst` (a view; no copy when they agree)."""
    for o in (src, dst):
        if o not in ORIENTATIONS:
            raise ValueError(f"unknown image orientation {o!r}: choose from {ORIENTATIONS}")
    if src == dst:
        return images
    return images[..., ::-1, ::-1, :]


def dataset_orientation(manifest: Mapping) -> Orientation:
    """The orientation of a preprocessed dataset's frames (manifests before this field: HDF5, opengl)."""
    return manifest.get("image_orientation", OPENGL)


def resolve_model_orientation(requested: str | None, manifest: Mapping, dataset_dir: str) -> Orientation:
    """The orientation a model trained on this dataset sees: the dataset's. An explicit, different request
    is an error rather than a silent mismatch between training and evaluation frames."""
    have = dataset_orientation(manifest)
    if requested is not None and requested != have:
        raise ConfigError(f"model.image_orientation={requested!r} but {dataset_dir} stores {have!r} frames "
                          f"(manifest.json image_orientation); leave the field unset to take the dataset's")
    return have
