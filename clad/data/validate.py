"""Checks that decide whether a demo is accepted, and the rejection record that names file, demo and reason.

A rejected demo never stops the run: the scanner records a `Rejection` and moves on, and every rejection
lands in rejections.json and in the manifest's counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import h5py
import numpy as np

from clad.data.libero_layout import ACTION_DIM, LOWDIM_KEYS

# rejection kinds (stable strings: tests and downstream tooling match on them)
UNREADABLE = "unreadable"
MISSING_KEY = "missing_key"
LENGTH_MISMATCH = "length_mismatch"
BAD_SHAPE = "bad_shape"
IMAGE_FORMAT = "image_format"  # not (T, H, W, 3) uint8
IMAGE_SIZE = "image_size"  # H x W differs from the dataset's image size
NON_FINITE = "non_finite"
EMPTY = "empty"


@dataclass(frozen=True)
class Rejection:
    """One rejected file (demo None) or demo."""

    file: str  # path relative to the input folder
    demo: Optional[str]
    kind: str
    reason: str

    @property
    def message(self) -> str:
        where = self.file if self.demo is None else f"{self.file} {self.demo}"
        return f"{where}: {self.reason}"

    def to_json(self) -> dict:
        return asdict(self)


class DemoRejected(Exception):
    """Raised inside the checks; the scanner turns it into a Rejection."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _dataset(group: h5py.Group, key: str) -> h5py.Dataset:
    if key not in group:
        raise DemoRejected(MISSING_KEY, f"missing dataset '{key}'")
    obj = group[key]
    if not isinstance(obj, h5py.Dataset):
        raise DemoRejected(MISSING_KEY, f"'{key}' is a group, expected a dataset")
    return obj


def check_demo_header(demo: h5py.Group, image_keys: tuple[str, ...],
                      lowdim_keys: tuple[str, ...]) -> tuple[int, tuple[int, int]]:
    """Check keys, shapes, dtypes and lengths from the HDF5 headers alone (no data read).

    Returns (T, (H, W)). Raises DemoRejected.
    """
    actions = _dataset(demo, "actions")
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or actions.dtype.kind != "f":
        raise DemoRejected(BAD_SHAPE, f"actions has shape {actions.shape} dtype {actions.dtype}; "
                                      f"expected (T, {ACTION_DIM}) float")
    T = actions.shape[0]
    if T == 0:
        raise DemoRejected(EMPTY, "demo has 0 steps")
    lengths = {"actions": T}
    for key in lowdim_keys:
        ds = _dataset(demo, f"obs/{key}")
        width = LOWDIM_KEYS[key]
        if ds.ndim != 2 or ds.shape[1] != width or ds.dtype.kind != "f":
            raise DemoRejected(BAD_SHAPE, f"obs/{key} has shape {ds.shape} dtype {ds.dtype}; "
                                          f"expected (T, {width}) float")
        lengths[f"obs/{key}"] = ds.shape[0]
    sizes: dict[str, tuple[int, int]] = {}
    for key in image_keys:
        ds = _dataset(demo, f"obs/{key}")
        if ds.ndim != 4 or ds.shape[3] != 3 or ds.dtype != np.uint8:
            raise DemoRejected(IMAGE_FORMAT, f"obs/{key} has shape {ds.shape} dtype {ds.dtype}; "
                                             "expected (T, H, W, 3) uint8")
        sizes[f"obs/{key}"] = (int(ds.shape[1]), int(ds.shape[2]))
        lengths[f"obs/{key}"] = ds.shape[0]
    if len(set(sizes.values())) > 1:  # name every view: from one demo alone we cannot tell which is wrong
        detail = ", ".join(f"{k} is {h}x{w}" for k, (h, w) in sizes.items())
        raise DemoRejected(IMAGE_SIZE, f"its views differ in size ({detail}); every view of a demo must have one size")
    hw = next(iter(sizes.values()), None)
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise DemoRejected(LENGTH_MISMATCH, f"datasets have different lengths: {detail}")
    n = demo.attrs.get("num_samples")
    if n is not None and int(n) != T:
        raise DemoRejected(LENGTH_MISMATCH, f"attribute num_samples={int(n)} but the datasets have {T} steps")
    assert hw is not None
    return T, hw


def check_finite(name: str, x: np.ndarray) -> None:
    """Reject arrays holding NaN or +-Inf, naming the first bad step."""
    bad = ~np.isfinite(x)
    if bad.any():
        step = int(np.argwhere(bad)[0][0])
        raise DemoRejected(NON_FINITE, f"{name} has {int(bad.sum())} NaN/Inf value(s), first at step {step}")
