"""Write small, layout-exact LIBERO demo files with synthetic numbers (test helper, no simulator).

The layout follows clad/data/libero_layout.py exactly (every dataset and attribute), so the preprocessing
code meets the same structure as in the released files and in those written by `clad demos`; only the
numbers are synthetic and the images are tiny. Values are deterministic given `seed`.

Corruptions for the bad-input tests are small, named functions that edit a written file in place.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from clad.data.libero_layout import ACTION_DIM, IMAGE_KEYS, LOWDIM_KEYS, ROBOT_STATE_DIM, demo_file_name

STATE_DIM = 47  # MuJoCo state width for a small scene; any width is legal


def _images(rng: np.random.Generator, T: int, h: int, w: int, view: int) -> np.ndarray:
    """Smooth moving gradients plus a little noise: compresses like camera images do (random noise would not)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.arange(T, dtype=np.float32)[:, None, None]
    base = np.stack([(xx[None] * 255 / max(w - 1, 1) + 3 * t) % 256,
                     (yy[None] * 255 / max(h - 1, 1) + 5 * t + 80 * view) % 256,
                     np.broadcast_to((xx + yy)[None] * 127 / max(h + w - 2, 1), (T, h, w))], axis=-1)
    img = (base + rng.integers(0, 8, size=(T, h, w, 3))).clip(0, 255).astype(np.uint8)
    img[:, 0, 0, 0] = np.arange(T) % 256  # frame marker
    img[:, 0, 0, 1] = view  # view marker
    return img


def write_demo_file(folder: str | Path, task_name: str, *, lengths=(20, 30, 40), image_size: int | tuple[int, int] = 32,
                    seed: int = 0, instruction: str | None = None, compress: bool = False) -> Path:
    """Write `<folder>/<task_name>_demo.hdf5` with one demo per entry of `lengths`.

    Images are (T, H, W, 3) uint8 whose pixels encode the step (pixel[0, 0, 0] == t % 256) and the view
    (pixel[0, 0, 1]), so window tests can read back which frame they got. Actions are float64 in [-1, 1]
    with action[t, 0] == t / 1000. `compress` stores images gzip-compressed in one chunk per frame, like
    clad/libero/demo_writer.py.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    rng = np.random.default_rng(seed)
    instruction = instruction or task_name.replace("_", " ").lower()
    path = folder / demo_file_name(task_name)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_name"] = "Libero_Tabletop_Manipulation"
        data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                 "domain_name": "robosuite", "language_instruction": instruction})
        data.attrs["bddl_file_name"] = f"libero/bddl_files/test/{task_name}.bddl"
        data.attrs["bddl_file_content"] = f"(define (problem {task_name}))"
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Tabletop_Manipulation",
                                             "env_kwargs": {"camera_heights": h, "camera_widths": w}})
        data.attrs["macros_image_convention"] = "opengl"
        data.attrs["num_demos"] = len(lengths)
        data.attrs["total"] = int(sum(lengths))
        for i, T in enumerate(lengths):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = T
            g.attrs["model_file"] = "<mujoco model='test'/>"
            g.attrs["init_state"] = rng.normal(size=STATE_DIM)
            actions = rng.uniform(-1, 1, size=(T, ACTION_DIM))
            actions[:, 0] = np.arange(T) / 1000.0
            g.create_dataset("actions", data=actions)
            g.create_dataset("states", data=rng.normal(size=(T, STATE_DIM)))
            g.create_dataset("robot_states", data=rng.normal(size=(T, ROBOT_STATE_DIM)))
            done = np.zeros(T, np.uint8)
            done[-1] = 1
            g.create_dataset("rewards", data=done)
            g.create_dataset("dones", data=done)
            obs = g.create_group("obs")
            for k, key in enumerate(IMAGE_KEYS):
                img = _images(rng, T, h, w, k)
                comp = {"chunks": (1, h, w, 3), "compression": "gzip", "compression_opts": 4} if compress else {}
                obs.create_dataset(key, data=img, **comp)
            for key, dim in LOWDIM_KEYS.items():
                obs.create_dataset(key, data=rng.normal(size=(T, dim)))
    return path


def write_suite(folder: str | Path, n_tasks: int = 2, **kwargs) -> list[Path]:
    """Write `n_tasks` demo files (`task_0 ... task_{n-1}`) in `folder`, each with its own seed."""
    return [write_demo_file(folder, f"TEST_SCENE_task_{i}", seed=i, **kwargs) for i in range(n_tasks)]


# ---------------------------------------------------------------- corruptions (edit a written file in place)

def make_unreadable(path: Path) -> None:
    """Overwrite the file with bytes that are not HDF5."""
    Path(path).write_bytes(b"this is not an hdf5 file\n" * 10)


def drop_key(path: Path, demo: str = "demo_0", key: str = "obs/ee_pos") -> None:
    with h5py.File(path, "a") as f:
        del f[f"data/{demo}/{key}"]


def truncate_key(path: Path, demo: str = "demo_0", key: str = "obs/joint_states", new_len: int = 5) -> None:
    """Make `key` shorter than the demo's actions (mismatched lengths)."""
    with h5py.File(path, "a") as f:
        full = f[f"data/{demo}/{key}"][()]
        del f[f"data/{demo}/{key}"]
        f[f"data/{demo}"].create_dataset(key, data=full[:new_len])


def put_nan(path: Path, demo: str = "demo_0", key: str = "actions", step: int = 3) -> None:
    with h5py.File(path, "a") as f:
        ds = f[f"data/{demo}/{key}"]
        arr = ds[()]
        arr[step, 0] = np.nan
        ds[...] = arr


def replace_images(path: Path, demo: str = "demo_0", key: str = "agentview_rgb", shape_hw=(16, 16),
                   dtype=np.uint8, channels: int = 3) -> None:
    """Replace one view with images of another size / dtype / channel count."""
    with h5py.File(path, "a") as f:
        g = f[f"data/{demo}/obs"]
        T = g[key].shape[0]
        del g[key]
        g.create_dataset(key, data=np.zeros((T, *shape_hw, channels), dtype=dtype))
