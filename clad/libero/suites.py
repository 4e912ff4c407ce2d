"""LIBERO suites and tasks: lookup by index or name, instruction, bddl path, fixed init states, step budgets.

    spec = get_task("libero_object", 3)                # or get_task("libero_object", "pick_up_the_...")
    states = load_init_states(spec)                     # (50, D) float64, the suite's fixed init states
    spec = benchmark_task_for("pick_up_the_ketchup_and_place_it_in_the_basket_demo.hdf5")
    task_instruction(spec)                              # the one instruction training and evaluation use

A task's instruction has one source of truth: the benchmark's `task.language` (what LIBERO's own training
code conditions on). Demo files carry a second text, the BDDL `(:language ...)` in `problem_info`, which
differs for 34 of the 130 tasks (every libero_object task: "pick the ketchup ..." vs "pick up the
ketchup ..."); readers map a file to its benchmark task with `benchmark_task_for` and store the benchmark's.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clad.errors import CladError
from clad.libero.quiet import prints_to_log
from clad.libero.runtime import ensure_libero

__all__ = ["SUITES", "MAX_STEPS", "TaskSpec", "get_task", "list_tasks", "load_init_states", "init_state",
           "benchmark_task_for", "find_benchmark_task", "task_instruction", "all_tasks", "bddl_language",
           "UnknownTaskError"]

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


# ----------------------------------------------------------------------------------------------------------
# one source of truth for a task's instruction


class UnknownTaskError(CladError, ValueError):
    """A name, file or instruction that matches no task (or several) of the LIBERO benchmark."""


def task_instruction(spec: TaskSpec) -> str:
    """The instruction a policy is conditioned on for `spec`: the benchmark's `task.language`, in training
    (preprocessing stores it) and in evaluation alike."""
    return spec.language


@functools.lru_cache(maxsize=None)
def all_tasks() -> tuple[TaskSpec, ...]:
    """Every task of every suite (libero_spatial/object/goal/10/90; task names are unique across them)."""
    return tuple(get_task(s, i) for s in SUITES for i in range(len(list_tasks(s))))


def bddl_language(spec: TaskSpec) -> str:
    """The BDDL file's `(:language ...)` text: what upstream demo files store in `problem_info`."""
    m = re.search(r"\(:language\s+(.*?)\)", bddl_text(spec), re.S)
    return " ".join(m.group(1).split()) if m else ""


def _norm_text(text: str) -> str:
    return " ".join(str(text).replace("_", " ").lower().split())


def _strip_name(name: str) -> str:
    """A task name from a task name, a bddl / demo file name or a path to one."""
    stem = Path(str(name).strip()).name
    for suffix in ("_demo.hdf5", ".hdf5", ".bddl", ".pruned_init", ".init"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


@functools.lru_cache(maxsize=None)
def _by_name() -> dict[str, TaskSpec]:
    return {t.name: t for t in all_tasks()}


@functools.lru_cache(maxsize=None)
def _by_text() -> dict[str, tuple[TaskSpec, ...]]:
    """Normalised benchmark language and BDDL language -> the tasks with that text (some texts name several
    tasks, e.g. 'turn on the stove' in KITCHEN_SCENE3, KITCHEN_SCENE9 and libero_goal)."""
    out: dict[str, list[TaskSpec]] = {}
    for t in all_tasks():
        for text in {_norm_text(t.language), _norm_text(bddl_language(t))}:
            if text:
                out.setdefault(text, []).append(t)
    return {k: tuple(v) for k, v in out.items()}


def find_benchmark_task(*keys: str | None, suite: str | None = None) -> TaskSpec | None:
    """The benchmark task named by the first key that identifies exactly one, or None if no key matches.

    Each key may be a task name (= bddl file stem), a bddl / demo file name or path, or an instruction
    (the benchmark's or the BDDL text, case and underscores ignored). `suite` restricts the search.
    Raises UnknownTaskError when a key names several tasks and no later key settles it.
    """
    if suite is not None:
        check_suite(suite)
    ambiguous: tuple[str, tuple[TaskSpec, ...]] | None = None
    for key in keys:
        if not key:
            continue
        spec = _by_name().get(_strip_name(key))
        if spec is not None and suite in (None, spec.suite):
            return spec
        hits = tuple(t for t in _by_text().get(_norm_text(key), ()) if suite in (None, t.suite))
        if len(hits) == 1:
            return hits[0]
        if hits and ambiguous is None:
            ambiguous = (key, hits)
    if ambiguous is not None:
        key, hits = ambiguous
        raise UnknownTaskError(f"{key!r} names {len(hits)} LIBERO tasks ({', '.join(f'{t.suite}/{t.name}' for t in hits)}): "
                               "pass the task name (the bddl file stem) or the suite")
    return None


def benchmark_task_for(name_or_instruction: str, suite: str | None = None) -> TaskSpec:
    """The LIBERO benchmark task a demo file, task name or instruction belongs to.

    Readers of any demo format call this to condition on `task_instruction(spec)` (= the benchmark's
    `task.language`), never on the text stored in the file. Accepts a task name, a bddl or
    `<task>_demo.hdf5` file name or path, or an instruction (benchmark or BDDL wording).
    Raises UnknownTaskError when nothing, or more than one task, matches.
    """
    spec = find_benchmark_task(name_or_instruction, suite=suite)
    if spec is None:
        where = f"suite {suite}" if suite else f"any of {', '.join(SUITES)}"
        raise UnknownTaskError(f"{name_or_instruction!r} is no task name, bddl/demo file name or instruction of "
                               f"{where}: name the demo file <task_name>_demo.hdf5 after its benchmark task")
    return spec
