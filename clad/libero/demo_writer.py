"""Write expert episodes in the LIBERO HDF5 layout (clad/data/libero_layout.py) and replay them.

    with DemoWriter(out_dir, env) as w:      # writes <out_dir>/.<task>_demo.hdf5.tmp, renamed on close
        w.add(result)                         # an EpisodeResult recorded with cameras; failures are refused
    ok = replay_demo(path, "demo_0").success

The file is written to a hidden temporary name and renamed only when complete, so a file with the final
name is always a finished task (what makes `clad demos` resumable).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from clad.data.libero_layout import (ACTION_DIM, IMAGE_KEYS, LOWDIM_KEYS, ROBOT_STATE_DIM, demo_file_name)
from clad.errors import CladError, DataError
from clad.libero.env import EnvConfig, LiberoEnv
from clad.libero.expert import EpisodeResult
from clad.libero.runtime import ensure_libero
from clad.libero.suites import bddl_text

__all__ = ["DemoWriter", "ReplayResult", "replay_demo", "demo_env_args"]

_GZIP = dict(compression="gzip", compression_opts=4)


def demo_env_args(env: LiberoEnv) -> dict:
    """`env_args` as upstream stores it (type 1 = robosuite env), plus clad's suite/task for replay."""
    cfg = env.cfg
    problem = env.raw.problem_name
    return {
        "type": 1,
        "env_name": problem,
        "problem_name": problem,
        "bddl_file": _portable_bddl_name(env),
        "env_kwargs": {
            "robots": ["Panda"], "controller": "OSC_POSE", "control_freq": 20,
            "camera_names": [c if c == "agentview" else "robot0_eye_in_hand" for c in cfg.cameras],
            "camera_heights": cfg.camera_size, "camera_widths": cfg.camera_size,
        },
        "clad": {"suite": env.task.suite, "task_index": env.task.index, "task_name": env.task.name,
                 "language": env.task.language, "settle_steps": cfg.settle_steps},
    }


def _portable_bddl_name(env: LiberoEnv) -> str:
    # relative to the libero package so files do not carry this machine's venv path
    return f"libero/libero/bddl_files/{env.task.problem_folder}/{env.task.bddl_path.name}"


class DemoWriter:
    """Append successful episodes of one task to `<out_dir>/<task_name>_demo.hdf5`."""

    def __init__(self, out_dir: str | os.PathLike, env: LiberoEnv, compress: bool = True):
        if not env.cfg.render:
            raise CladError("DemoWriter needs an env built with render=True (the files store camera images)")
        self.env = env
        self.path = Path(out_dir) / demo_file_name(env.task.name)
        self.tmp_path = self.path.with_name(f".{self.path.name}.tmp.{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._comp = _GZIP if compress else {}
        self._f = h5py.File(self.tmp_path, "w")
        self._data = self._f.create_group("data")
        self.num_demos = 0
        self.total = 0
        self._write_data_attrs()

    def _write_data_attrs(self) -> None:
        from robosuite import macros

        from libero.libero.envs.bddl_utils import get_problem_info

        a = self._data.attrs
        info = get_problem_info(str(self.env.task.bddl_path))
        a["env_name"] = self.env.raw.problem_name
        a["problem_info"] = json.dumps(info)
        a["bddl_file_name"] = _portable_bddl_name(self.env)
        a["bddl_file_content"] = bddl_text(self.env.task)
        a["env_args"] = json.dumps(demo_env_args(self.env))
        a["macros_image_convention"] = macros.IMAGE_CONVENTION
        a["num_demos"] = 0
        a["total"] = 0

    def add(self, ep: EpisodeResult, model_xml: str | None = None) -> str:
        """Store one successful episode as `demo_<i>`; returns its name."""
        if not ep.success:
            raise CladError("only successful episodes are stored in demo files")
        T = len(ep.actions)
        if T == 0 or len(ep.observations) != T:
            raise CladError(f"episode has {T} actions but {len(ep.observations)} observations")
        obs = {k: np.stack([o[k] for o in ep.observations]) for k in ep.observations[0]}
        for k in IMAGE_KEYS:
            if k not in obs:
                raise CladError(f"episode lacks camera observation {k!r}: record it with a rendering env")
        name = f"demo_{self.num_demos}"
        g = self._data.create_group(name)
        g.create_dataset("actions", data=ep.actions.astype(np.float64).reshape(T, ACTION_DIM))
        g.create_dataset("states", data=obs["states"].astype(np.float64))
        g.create_dataset("robot_states", data=obs["robot_states"].astype(np.float64).reshape(T, ROBOT_STATE_DIM))
        marks = np.zeros(T, dtype=np.uint8)
        marks[-1] = 1
        g.create_dataset("rewards", data=marks)
        g.create_dataset("dones", data=marks.copy())
        og = g.create_group("obs")
        for k in IMAGE_KEYS:
            og.create_dataset(k, data=obs[k].astype(np.uint8), chunks=(1,) + obs[k].shape[1:], **self._comp)
        for k, width in LOWDIM_KEYS.items():
            og.create_dataset(k, data=obs[k].astype(np.float64).reshape(T, width))
        g.attrs["num_samples"] = T
        g.attrs["model_file"] = model_xml if model_xml is not None else self.env.sim.model.get_xml()
        g.attrs["init_state"] = obs["states"][0].astype(np.float64)
        self.num_demos += 1
        self.total += T
        self._data.attrs["num_demos"] = self.num_demos
        self._data.attrs["total"] = self.total
        self._f.flush()
        return name

    def close(self, keep: bool = True) -> Path | None:
        """Finish the file: rename it to its final name (keep=True) or delete it."""
        if self._f is None:
            return self.path if keep else None
        self._f.close()
        self._f = None
        if keep and self.num_demos > 0:
            os.replace(self.tmp_path, self.path)
            return self.path
        self.tmp_path.unlink(missing_ok=True)
        return None

    def __enter__(self) -> "DemoWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(keep=exc_type is None)


@dataclass(frozen=True)
class ReplayResult:
    success: bool
    steps: int
    max_state_error: float  # max |replayed state - stored state| over the episode


def _task_of(path: Path) -> tuple[str, int]:
    with h5py.File(path, "r") as f:
        try:
            args = json.loads(f["data"].attrs["env_args"])
            return args["clad"]["suite"], int(args["clad"]["task_index"])
        except (KeyError, ValueError) as err:
            raise DataError(f"{path}: data.attrs['env_args'] lacks the suite/task needed for replay ({err})")


def replay_demo(path: str | os.PathLike, demo: str | int = 0, env: LiberoEnv | None = None) -> ReplayResult:
    """Reset a (camera-less) env to the demo's first state, apply its actions, report success.

    Success counts if the task's goal holds at any step, as during recording.
    """
    ensure_libero()
    path = Path(path)
    demo = f"demo_{demo}" if isinstance(demo, int) else demo
    suite, task = _task_of(path)
    with h5py.File(path, "r") as f:
        if f"data/{demo}" not in f:
            raise DataError(f"{path} has no data/{demo}: it holds {', '.join(f['data'].keys())}")
        g = f["data"][demo]
        actions, states = g["actions"][()], g["states"][()]
        start = g.attrs["init_state"][()]
    own = env is None
    if own:
        env = LiberoEnv(EnvConfig(suite=suite, render=False, settle_steps=0), task)
    try:
        env.reset(state=start, settle_steps=0)
        err = float(np.abs(env.sim_state() - states[0]).max())
        success = False
        for t, a in enumerate(actions):
            if t > 0:
                err = max(err, float(np.abs(env.sim_state() - states[t]).max()))
            _, _, done, _ = env.step(a)
            success = success or done
        return ReplayResult(success=success and env.check_success(), steps=len(actions), max_state_error=err)
    finally:
        if own:
            env.close()
