"""From per-file scans to the plan of what gets written (plain Python; shared by the Ray pipeline and the
single-process benchmark loop): the dataset image size, rejections for inconsistent sizes, the task table,
the train/val split, episode indices and the train statistics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from clad.data import validate as V
from clad.data.hdf5_reader import FileScan
from clad.data.preprocess_config import PreprocessConfig
from clad.data.split import assign_splits
from clad.data.stats import Moments, merge_keyed, stats_document
from clad.errors import CladError, DataError


@dataclass(frozen=True)
class Task:
    """One task of the dataset. `instruction` is what the policy is conditioned on (embedded into
    language.safetensors); `file_instruction` is the text the demo file stores; `benchmark` names the LIBERO
    task ({suite, index, name}) the files map to, None for a task outside the benchmark."""

    index: int
    name: str
    instruction: str
    files: tuple[str, ...]
    file_instruction: str = ""
    benchmark: dict | None = None
    instruction_source: str = "file"

    def to_json(self) -> dict:
        return {"index": self.index, "name": self.name, "instruction": self.instruction, "files": list(self.files),
                "file_instruction": self.file_instruction or self.instruction, "benchmark": self.benchmark,
                "instruction_source": self.instruction_source}


def task_for_files(name: str, scans: Sequence[FileScan], source: str) -> tuple[str, dict | None, str]:
    """(instruction, benchmark task {suite, index, name} or None, where the instruction came from) for the
    task `name` whose files are `scans`. With source "benchmark" a task that maps to a LIBERO benchmark task
    (by file/task name, bddl file name, or instruction) gets the benchmark's `task.language`."""
    file_text = scans[0].instruction
    if source == "file":
        return file_text, None, "file"
    from clad.libero.suites import UnknownTaskError, find_benchmark_task, task_instruction

    keys = [name, *(s.bddl_file for s in scans), *(s.instruction for s in scans)]
    try:
        spec = find_benchmark_task(*keys)
    except UnknownTaskError as err:
        raise DataError(f"{scans[0].file}: cannot tell which LIBERO task it holds ({err}); rename it "
                        "<task_name>_demo.hdf5, or set preprocess.instruction_source=file") from None
    except CladError as err:  # LIBERO itself is unavailable
        raise DataError(f"preprocess.instruction_source=benchmark reads LIBERO's benchmark metadata, which failed "
                        f"({err}); install LIBERO or set preprocess.instruction_source=file") from None
    if spec is None:
        return file_text, None, "file"
    return task_instruction(spec), {"suite": spec.suite, "index": spec.index, "name": spec.name}, "benchmark"


@dataclass(frozen=True)
class EpisodeRef:
    """An accepted episode to be written: where to read it and its row metadata."""

    path: str  # absolute path (or URI) of the source file
    source_file: str  # relative to the input folder
    demo: str
    episode_id: str
    episode_index: int
    task_index: int
    task_name: str
    split: str
    length: int

    def to_item(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Plan:
    image_size: tuple[int, int]
    resized: bool
    tasks: list[Task]
    episodes: list[EpisodeRef]
    rejections: list[V.Rejection]
    stats: dict
    demos_found: int
    per_file: dict[str, dict] = field(default_factory=dict)

    def split(self, name: str) -> list[EpisodeRef]:
        return [e for e in self.episodes if e.split == name]

    def counts(self) -> dict:
        files_rejected = sum(1 for r in self.rejections if r.demo is None)
        by_kind = Counter(r.kind for r in self.rejections)
        return {
            "files": len(self.per_file), "files_rejected": files_rejected,
            "demos_found": self.demos_found,
            "episodes": {s: len(self.split(s)) for s in ("train", "val")},
            "steps": {s: sum(e.length for e in self.split(s)) for s in ("train", "val")},
            "rejected_demos": sum(1 for r in self.rejections if r.demo is not None),
            "rejections_by_kind": dict(sorted(by_kind.items())),
        }


def _reference_size(scans: Sequence[FileScan]) -> tuple[int, int] | None:
    """The most common image size among accepted demos (ties: the one seen first in sorted file order),
    i.e. the size that keeps the most episodes."""
    sizes = Counter(d.image_hw for s in scans for d in s.demos)
    if not sizes:
        return None
    order = {}
    for s in scans:
        for d in s.demos:
            order.setdefault(d.image_hw, len(order))
    return max(sizes, key=lambda hw: (sizes[hw], -order[hw]))


def build_plan(input_dir: str | Path, scans: Sequence[FileScan], cfg: PreprocessConfig) -> Plan:
    """Decide image size, rejections, tasks, split and train statistics. Raises DataError when nothing is
    left to write (the caller still writes rejections.json first via the returned message)."""
    from clad import storage

    root = storage.normalize(input_dir)  # an absolute local path or a URI
    scans = sorted(scans, key=lambda s: s.file)
    rejections = [r for s in scans for r in s.rejections]
    if cfg.image_size is not None:
        size, resized = tuple(cfg.image_size), True
    else:
        size, resized = _reference_size(scans), False
    kept: list[tuple[FileScan, object]] = []
    for s in scans:
        for d in s.demos:
            if not resized and d.image_hw != size:
                rejections.append(V.Rejection(
                    s.file, d.demo, V.IMAGE_SIZE,
                    f"images are {d.image_hw[0]}x{d.image_hw[1]} but the dataset's size is {size[0]}x{size[1]} "
                    f"(the most common in the folder); set image_size to resize all files to one size"))
            else:
                kept.append((s, d))
    # tasks: one per task name (file name without _demo.hdf5), sorted by name for a stable index
    names = sorted({s.task_name for s, _ in kept})
    tasks = []
    for i, n in enumerate(names):
        files = tuple(s.file for s in scans if s.task_name == n and any(x is s for x, _ in kept))
        read = [s for s in scans if s.task_name == n and any(x is s for x, _ in kept)]  # files that were read
        instruction, bench, source = task_for_files(n, read, cfg.instruction_source)
        tasks.append(Task(i, n, instruction, files, read[0].instruction, bench, source))
    task_index = {t.name: t.index for t in tasks}
    splits = assign_splits([(s.file, d.demo) for s, d in kept], cfg.val_fraction, cfg.split_seed)
    episodes = [EpisodeRef(storage.join(root, s.file), s.file, d.demo, f"{s.file}#{d.demo}", i, task_index[s.task_name],
                           s.task_name, splits[(s.file, d.demo)], d.length)
                for i, (s, d) in enumerate(kept)]
    train_moments: list[dict[str, Moments]] = [d.moments for s, d in kept if splits[(s.file, d.demo)] == "train"]
    stats = stats_document(merge_keyed(train_moments), "train", len(train_moments))
    per_file: dict[str, dict] = {}
    for s in scans:  # a LeRobot data file holding several tasks has one scan per task: sum them
        n_acc = sum(1 for x, _ in kept if x is s)
        if s.file in per_file:
            doc = per_file[s.file]
            doc["task_name"] = doc["task_name"] or s.task_name
            doc["demos_found"] += s.demos_found
            doc["accepted"] += n_acc
            continue
        per_file[s.file] = {"task_name": s.task_name, "demos_found": s.demos_found, "accepted": n_acc,
                            "rejected": sum(1 for r in rejections if r.file == s.file and r.demo is not None),
                            "file_rejected": any(r.file == s.file and r.demo is None for r in rejections)}
    rejections.sort(key=lambda r: (r.file, r.demo or ""))
    return Plan(size or (0, 0), resized, tasks, episodes, rejections, stats,
                demos_found=sum(s.demos_found for s in scans), per_file=per_file)


def require_episodes(plan: Plan, input_dir: str | Path) -> None:
    if not plan.episodes:
        lines = "\n  ".join(r.message for r in plan.rejections[:20])
        raise DataError(f"no usable demos in {input_dir}: {len(plan.rejections)} rejection(s), see rejections.json"
                        + (f"\n  {lines}" if lines else ""))
