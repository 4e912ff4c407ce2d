"""LIBERO suites and tasks: lookup by index or name, instruction, bddl path, fixed init states, step budgets.

    spec = get_task("libero_object", 3)                # or get_task("libero_object", "pick_up_the_...")
    states = load_init_states(spec)                     # (50, D) float64, the suite's fixed init states
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clad.errors import CladError
from clad.libero.quiet import prints_to_log
from clad.libero.runtime import ensure_libero

__all__ = ["SUITES", "MAX_STEPS", "TaskSpec", "get_task", "list_tasks", "load_init_states", "init_state"]

# Standard episode budgets used by LIBERO evaluations (openvla / lerobot): longest demo plus a margin.
MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
SUITES: tuple[str, ...] = tuple(MAX_STEPS)


@dataclass(frozen=True)
class TaskSpec:
    """One LIBERO task. `language` is the benchmark's instruction (what policies are conditioned on)."""

    suite: str
    index: int
    name: str
    language: str
    bddl_path: Path
    problem_folder: str
    init_states_file: str

    @property
    def max_steps(self) -> int:
        return MAX_STEPS[self.suite]


def check_suite(suite: str) -> str:
    if suite not in MAX_STEPS:
        raise CladError(f"unknown LIBERO suite {suite!r} (field 'suite'): choose one of {', '.join(SUITES)}")
    return suite


@functools.lru_cache(maxsize=None)
def _benchmark(suite: str):
    ensure_libero()
    from libero.libero import benchmark

    with prints_to_log("libero"):  # "[info] using task orders ..."
        return benchmark.get_benchmark_dict()[suite]()


def list_tasks(suite: str) -> list[str]:
    """Task names of `suite` in the benchmark's fixed order."""
    return list(_benchmark(check_suite(suite)).get_task_names())


def get_task(suite: str, task: int | str) -> TaskSpec:
    """Look a task up by its index in the suite or by its name (bddl file stem)."""
    bench = _benchmark(check_suite(suite))
    names = bench.get_task_names()
    if isinstance(task, str) and not task.lstrip("-").isdigit():
        if task not in names:
            raise CladError(f"unknown task name {task!r} (field 'task') in {suite}: "
                            f"valid names are {', '.join(names)}")
        index = names.index(task)
    else:
        index = int(task)
        if not 0 <= index < len(names):
            raise CladError(f"task index {index} (field 'task') out of range for {suite}: "
                            f"valid indices are 0..{len(names) - 1}")
    t = bench.get_task(index)
    from libero.libero import get_libero_path

    bddl = Path(get_libero_path("bddl_files")) / t.problem_folder / t.bddl_file
    return TaskSpec(suite=suite, index=index, name=t.name, language=t.language, bddl_path=bddl,
                    problem_folder=t.problem_folder, init_states_file=t.init_states_file)


@functools.lru_cache(maxsize=32)
def _init_states(suite: str, index: int) -> np.ndarray:
    states = _benchmark(suite).get_task_init_states(index)  # torch.load of a pickled ndarray
    return np.asarray(states, dtype=np.float64)


def load_init_states(spec: TaskSpec) -> np.ndarray:
    """The task's fixed init states, (N, D) float64 with N = 50 for every suite. Read-only."""
    states = _init_states(spec.suite, spec.index)
    states.setflags(write=False)
    return states


def init_state(spec: TaskSpec, init_index: int) -> np.ndarray:
    """Init state `init_index` of the task, (D,) float64."""
    states = load_init_states(spec)
    if not 0 <= int(init_index) < len(states):
        raise CladError(f"init state index {init_index} (field 'init_index') out of range for "
                        f"{spec.suite}/{spec.name}: valid indices are 0..{len(states) - 1}")
    return states[int(init_index)].copy()


def bddl_text(spec: TaskSpec) -> str:
    return Path(os.fspath(spec.bddl_path)).read_text(encoding="utf-8")
