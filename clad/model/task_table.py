"""The instruction table stored with a checkpoint: per task, the exact string training conditioned on.

    <checkpoint>/tasks.json   {"tasks": [{index, name, instruction, benchmark, instruction_source, ...}], ...}

Written by the training session from the dataset's tasks.json (clad/data/outputs.py), read by evaluation,
which conditions a task on the instruction training used for it (`conditioning_instruction`) and logs it
per episode. A checkpoint of a dataset made before instructions came from the benchmark (issue 15) holds
the BDDL wording: evaluation then still conditions on what training saw and warns that it differs from the
benchmark's. A checkpoint without a table (older still) is conditioned on the benchmark's text, with a
warning; `python -m clad.model.task_table CHECKPOINT DATASET` attaches the table of the dataset it was
trained on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from clad import storage
from clad.errors import CheckpointError, DataError

log = logging.getLogger(__name__)

TASK_TABLE = "tasks.json"
_KEEP = ("index", "name", "instruction", "file_instruction", "benchmark", "instruction_source")


@dataclass(frozen=True)
class TaskTable:
    """Task name -> the instruction training conditioned on."""

    rows: tuple[dict, ...]
    source: str = ""

    def instruction_for(self, task_name: str) -> str | None:
        for row in self.rows:
            if row.get("name") == task_name or (row.get("benchmark") or {}).get("name") == task_name:
                return row["instruction"]
        return None


def _read_rows(path: str | Path, what: str, error) -> list[dict]:
    try:
        doc = json.loads(storage.read_text(path))  # a local file or an object-storage URI
        rows = doc["tasks"]
        if not all(isinstance(r, dict) and "name" in r and "instruction" in r for r in rows):
            raise KeyError("tasks[*].name / tasks[*].instruction")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise error(f"{path}: not a valid {what} task table ({type(err).__name__}: {err})") from None
    return rows


def write_task_table(checkpoint_dir: str | Path, dataset_dir: str | Path) -> Path:
    """Copy the task rows of the dataset's tasks.json into `checkpoint_dir/tasks.json`."""
    src = storage.join(dataset_dir, TASK_TABLE)  # the dataset may live in a bucket (clad/storage.py)
    if not storage.is_file(src):
        raise DataError(f"{src} is missing: {dataset_dir} is not a dataset written by `clad preprocess`")
    rows = [{k: r[k] for k in _KEEP if k in r} for r in _read_rows(src, "dataset", DataError)]
    dst = Path(checkpoint_dir) / TASK_TABLE
    dst.write_text(json.dumps({"dataset": storage.normalize(dataset_dir), "tasks": rows}, indent=2) + "\n")
    return dst


def read_task_table(checkpoint_dir: str | Path) -> TaskTable | None:
    """The checkpoint's table, or None for a checkpoint written before tables existed."""
    path = Path(checkpoint_dir) / TASK_TABLE
    if not path.is_file():
        return None
    return TaskTable(tuple(_read_rows(path, "checkpoint", CheckpointError)), str(path))


class InstructionChooser:
    """Which instruction evaluation conditions a task on: the training instruction from the checkpoint's
    table when it has the task, the benchmark's `task.language` otherwise. Warns once per task when the two
    differ (a checkpoint trained before the fix) or when the checkpoint has no table."""

    def __init__(self, table: TaskTable | None, checkpoint: str = ""):
        self.table = table
        self.checkpoint = checkpoint
        self._warned: set[str] = set()

    def __call__(self, task_name: str, benchmark_language: str) -> str:
        trained = self.table.instruction_for(task_name) if self.table is not None else None
        if task_name not in self._warned:
            if self.table is None:
                log.warning("checkpoint %s stores no instruction table (written before issue 15): conditioning "
                            "%s on the benchmark's %r, which may differ from what training used; attach the "
                            "table with `python -m clad.model.task_table %s <dataset>`",
                            self.checkpoint, task_name, benchmark_language, self.checkpoint)
            elif trained is not None and trained != benchmark_language:
                log.warning("checkpoint %s was trained on %r for %s, the benchmark says %r (a dataset made "
                            "before issue 15): conditioning on the training text; re-preprocess and retrain "
                            "for the benchmark's", self.checkpoint, trained, task_name, benchmark_language)
            self._warned.add(task_name)
        return trained if trained is not None else benchmark_language


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clad.model.task_table",
                                     description="attach a dataset's instruction table to a checkpoint made "
                                                 "before checkpoints stored one")
    parser.add_argument("checkpoint", help="a stage-2 model directory (model.safetensors + config.json)")
    parser.add_argument("dataset", help="the preprocessed dataset it was trained on")
    args = parser.parse_args(argv)
    if not (Path(args.checkpoint) / "model.safetensors").is_file():
        parser.error(f"{args.checkpoint} holds no model.safetensors")
    print(write_task_table(args.checkpoint, args.dataset))  # noqa: T201


if __name__ == "__main__":
    main()
