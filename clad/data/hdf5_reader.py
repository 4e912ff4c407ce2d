"""Reading LIBERO demo files (layout: clad/data/libero_layout.py).

Two entry points: `scan_file` reads the headers and the small arrays (actions and low-dim obs) of every demo,
validates them and computes per-episode statistics; `read_episode` reads one accepted demo in full (images
included) for writing. Images are read only once, in `read_episode`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from clad import storage
from clad.data import validate as V
from clad.data.images import resize_images
from clad.data.libero_layout import DEMO_FILE_SUFFIX, task_name_from_file
from clad.data.stats import Moments
from clad.errors import DataError


def find_demo_files(input_dir: str | Path) -> list[Path] | list[str]:
    """Every `*_demo.hdf5` under `input_dir` (sub-folders included), sorted by relative path; URIs for a
    folder in object storage (clad/storage.py)."""
    if storage.is_remote(input_dir):
        return [f for f in storage.list_files(input_dir, DEMO_FILE_SUFFIX, recursive=True)
                if not any(part.startswith(".") for part in storage.relative(f, input_dir).split("/"))]
    root = Path(input_dir)
    if not root.is_dir():
        raise DataError(f"input folder {root} does not exist or is not a folder")
    # dot-files are temporaries (e.g. demo_writer's .<name>.tmp.<pid>) or OS metadata (._<name>), never demos
    return sorted(p for p in root.rglob(f"*{DEMO_FILE_SUFFIX}")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _demo_sort_key(name: str) -> tuple[int, str]:
    m = re.fullmatch(r"demo_(\d+)", name)
    return (int(m.group(1)), name) if m else (1 << 62, name)


def instruction_from_attrs(attrs: h5py.AttributeManager, task_name: str) -> str:
    """The language instruction from data.attrs['problem_info'] (JSON); falls back to the task name the way
    LIBERO does (scene prefix dropped, underscores to spaces)."""
    raw = attrs.get("problem_info")
    if raw is not None:
        try:
            text = json.loads(raw if isinstance(raw, str) else bytes(raw).decode()).get("language_instruction")
            if isinstance(text, (list, tuple)):
                text = " ".join(text)
            if text:
                return str(text).strip()
        except (ValueError, AttributeError, TypeError):
            pass
    words = task_name.split("_")
    for i, w in enumerate(words):  # LIBERO task names look like KITCHEN_SCENE3_turn_on_the_stove
        if w.startswith("SCENE"):
            words = words[i + 1:]
            break
    return " ".join(words).strip()


@dataclass
class DemoScan:
    """An accepted demo: its length, image size and per-key statistics of the small arrays."""

    demo: str
    length: int
    image_hw: tuple[int, int]
    moments: dict[str, Moments]


@dataclass
class FileScan:
    file: str  # relative path
    task_name: str
    instruction: str  # the text the file stores (problem_info); the dataset stores the benchmark's (plan.py)
    bddl_file: str = ""  # data.attrs['bddl_file_name'], a second key to the benchmark task
    demos_found: int = 0
    demos: list[DemoScan] = field(default_factory=list)
    rejections: list[V.Rejection] = field(default_factory=list)


def scan_file(path: str | Path, rel: str, image_keys: tuple[str, ...], lowdim_keys: tuple[str, ...]) -> FileScan:
    """Validate every demo of one file and compute its statistics. Never raises for bad data: problems become
    Rejections (file-level ones have demo None). A URI is read from this node's cached copy."""
    task_name = task_name_from_file(storage.name(path))
    scan = FileScan(file=rel, task_name=task_name, instruction=task_name)
    try:  # a failed download (object gone, permissions, network) is a file-level rejection too
        path = storage.local_copy(path)
    except Exception as err:
        scan.rejections.append(V.Rejection(rel, None, V.UNREADABLE, f"cannot fetch {path} ({type(err).__name__}: {err})"))
        return scan
    try:
        f = h5py.File(path, "r")
    except Exception as err:  # h5py raises OSError for non-HDF5 / truncated files
        scan.rejections.append(V.Rejection(rel, None, V.UNREADABLE,
                                           f"cannot open as HDF5 ({type(err).__name__}: {err})"))
        return scan
    with f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            scan.rejections.append(V.Rejection(rel, None, V.MISSING_KEY, "no 'data' group"))
            return scan
        scan.instruction = instruction_from_attrs(data.attrs, task_name)
        bddl = data.attrs.get("bddl_file_name")
        scan.bddl_file = (bddl.decode() if isinstance(bddl, bytes) else str(bddl)) if bddl is not None else ""
        names = sorted((k for k in data.keys() if k.startswith("demo")), key=_demo_sort_key)
        scan.demos_found = len(names)
        if not names:
            scan.rejections.append(V.Rejection(rel, None, V.EMPTY, "no demo_* groups under 'data'"))
        for name in names:
            try:
                scan.demos.append(_scan_demo(data[name], name, image_keys, lowdim_keys))
            except V.DemoRejected as err:
                scan.rejections.append(V.Rejection(rel, name, err.kind, err.reason))
            except Exception as err:  # a corrupt chunk surfaces as OSError/KeyError on read
                scan.rejections.append(V.Rejection(rel, name, V.UNREADABLE,
                                                   f"read failed ({type(err).__name__}: {err})"))
    return scan


def _scan_demo(g: h5py.Group, name: str, image_keys, lowdim_keys) -> DemoScan:
    if not isinstance(g, h5py.Group):
        raise V.DemoRejected(V.MISSING_KEY, f"'{name}' is not a group")
    T, hw = V.check_demo_header(g, image_keys, lowdim_keys)
    moments = {}
    for key, ds_name in [("actions", "actions")] + [(k, f"obs/{k}") for k in lowdim_keys]:
        x = g[ds_name][()].astype(np.float64, copy=False)
        V.check_finite(ds_name, x)
        moments[key] = Moments.from_array(x)
    return DemoScan(demo=name, length=T, image_hw=hw, moments=moments)


def read_episode(path: str | Path, demo: str, image_keys: tuple[str, ...], lowdim_keys: tuple[str, ...],
                 image_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Read one demo in full. Returns {image_key: (T, H, W, 3) uint8, lowdim_key: (T, D) float32,
    "actions": (T, 7) float32}, images resized to `image_size` when given.

    Raises DataError naming the file and demo if the read fails (e.g. a corrupt image chunk that the
    header scan could not see).
    """
    try:
        with h5py.File(storage.local_copy(path), "r") as f:  # a URI: this node's cached copy
            g = f["data"][demo]
            out: dict[str, np.ndarray] = {"actions": g["actions"][()].astype(np.float32)}
            for key in lowdim_keys:
                out[key] = g["obs"][key][()].astype(np.float32)
            for key in image_keys:
                img = g["obs"][key][()]
                out[key] = resize_images(img, image_size) if image_size else img
    except Exception as err:
        raise DataError(f"{path} {demo}: read failed while writing the dataset ({type(err).__name__}: {err}); "
                        "the file changed or is corrupt after the scan - fix or remove it and re-run") from err
    return out
