"""Generate one task's scripted demonstrations (plain Python; `pipelines/demos.py` distributes tasks on Ray).

Per init state (0, 1, 2, ... in order) the expert first runs in a camera-less env (physics only, ~10x
faster) as a screen; only init states it solves there are run again, closed loop, in a rendering env
that records the episode. Rendering is what costs (~80 ms per camera and step on llvmpipe), so failed
attempts cost only physics. The recorded rollout is the file's ground truth: its own states, actions and
images, and it must succeed by itself to be kept.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import h5py

from clad.data.libero_layout import demo_file_name
from clad.libero.demo_writer import DemoWriter
from clad.libero.env import EnvConfig, LiberoEnv
from clad.libero.expert import ExpertConfig, run_expert_episode
from clad.libero.suites import get_task, load_init_states

__all__ = ["TaskReport", "generate_task_demos", "task_file"]


@dataclass
class TaskReport:
    """Expert statistics for one task. `success_rate` is over the attempted init states."""

    suite: str
    task_index: int
    task_name: str
    file: str
    demos: int = 0
    attempts: int = 0                      # init states tried
    screen_successes: int = 0              # solved in the camera-less screen
    record_failures: int = 0               # solved in the screen but not when recording
    success_rate: float = 0.0              # recorded successes / attempts
    init_results: dict[int, bool] = field(default_factory=dict)
    steps: int = 0                         # recorded control steps
    seconds: float = 0.0
    skipped: bool = False                  # the file already existed (resumed run)

    def to_dict(self) -> dict:
        return asdict(self)


def task_file(out_dir: str | Path, suite: str, task: int | str) -> Path:
    return Path(out_dir) / demo_file_name(get_task(suite, task).name)


def generate_task_demos(suite: str, task: int | str, out_dir: str | Path, episodes: int, image_size: int = 128,
                        max_attempts: int | None = None, screen: bool = True, first_init: int = 0,
                        expert_cfg: ExpertConfig | None = None, settle_steps: int = 10,
                        on_attempt: Callable[[TaskReport], None] | None = None) -> TaskReport:
    """Write `episodes` successful expert demos of one task to `<out_dir>/<task_name>_demo.hdf5`.

    Tries init states first_init, first_init+1, ... (at most `max_attempts`, default: the rest of the 50)
    until `episodes` demos are recorded. `first_init` > 0 keeps the first init states unseen, so an
    evaluation on them (episode k uses init state k) measures held-out scenes. An existing
    final file is not redone (`skipped=True`). `on_attempt` is called after every attempt (progress).
    """
    spec = get_task(suite, task)
    path = Path(out_dir) / demo_file_name(spec.name)
    rep = TaskReport(suite=suite, task_index=spec.index, task_name=spec.name, file=str(path))
    if path.exists():
        with h5py.File(path, "r") as f:
            rep.demos = int(f["data"].attrs["num_demos"])
            rep.steps = int(f["data"].attrs["total"])
        rep.skipped = True
        return rep
    n_init = len(load_init_states(spec))
    if not 0 <= first_init < n_init:
        raise ValueError(f"first_init={first_init} is out of range: {spec.name} has init states 0..{n_init - 1}")
    # the expert is deterministic per init state, so each is tried once
    max_attempts = min(max_attempts or n_init, n_init - first_init)
    t0 = time.time()
    base = EnvConfig(suite=suite, camera_size=image_size, settle_steps=settle_steps)
    screen_env = LiberoEnv(base.replace(render=False), spec) if screen else None
    rec_env = LiberoEnv(base, spec)
    writer = DemoWriter(out_dir, rec_env)
    try:
        for init in range(first_init, first_init + max_attempts):
            if rep.demos >= episodes:
                break
            rep.attempts += 1
            ok = True
            if screen_env is not None:
                ok = run_expert_episode(screen_env, init, expert_cfg, record=False).success
                rep.screen_successes += int(ok)
            if ok:
                ep = run_expert_episode(rec_env, init, expert_cfg, record=True)
                if ep.success:
                    writer.add(ep)
                    rep.demos += 1
                    rep.steps += ep.steps
                else:
                    rep.record_failures += 1
                ok = ep.success
            rep.init_results[init] = ok
            rep.success_rate = rep.demos / rep.attempts
            rep.seconds = time.time() - t0
            if on_attempt is not None:
                on_attempt(rep)
        writer.close(keep=rep.demos > 0)
    except BaseException:
        writer.close(keep=False)
        raise
    finally:
        rec_env.close()
        if screen_env is not None:
            screen_env.close()
    rep.seconds = time.time() - t0
    if rep.demos == 0:
        rep.file = ""
    return rep

