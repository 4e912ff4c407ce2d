"""A tiny `clad tune` run (test helper): a preprocessed two-task dataset of synthetic demos, a base training
config for the tiny model, the search-space file, and the sweep run in this process."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from libero_files import write_demo_file

# 2 steps of the tiny model per trial: enough for a report, a checkpoint and ASHA's decision
TINY_BASE = {"model_preset": "tiny", "steps": 2, "batch_size": 8, "checkpoint_every": 2, "val_batches": 1,
             "optim": {"warmup_steps": 1}}


def write_sweep_inputs(folder: Path, task_names: list[str], space: dict, **base) -> tuple[Path, Path]:
    """Demos for `task_names` preprocessed into <folder>/ds; returns (base config, space file). Trials write
    to <folder>/out; `base` overrides or adds fields of TINY_BASE."""
    from clad.data.preprocess_config import PreprocessConfig
    from pipelines.preprocess import run_preprocess

    for i, name in enumerate(task_names):
        write_demo_file(folder / "raw", name, lengths=(20, 24, 28), image_size=32, seed=i)
    run_preprocess(folder / "raw", folder / "ds", PreprocessConfig(val_fraction=0.3))
    base_file, space_file = folder / "base.yaml", folder / "space.yaml"
    base_file.write_text(yaml.safe_dump({"dataset_dir": str(folder / "ds"), "output_dir": str(folder / "out"),
                                         **TINY_BASE, **base}))
    space_file.write_text(yaml.safe_dump(space))
    return base_file, space_file


def run_sweep(base_file: Path, space_file: Path) -> tuple[Path, list[dict]]:
    """`clad tune` in this process; returns the sweep folder and the rows of its results.csv."""
    from pipelines.cli import main

    assert main(["tune", "--space", str(space_file), "--config", str(base_file)]) == 0
    sweep = Path(yaml.safe_load(base_file.read_text())["output_dir"]) / yaml.safe_load(space_file.read_text())["name"]
    return sweep, list(csv.DictReader((sweep / "results.csv").open()))
