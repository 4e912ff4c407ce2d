"""The LeRobot v3.0 input of `clad preprocess` (pipelines/preprocess.py dispatches here when the input folder
has meta/info.json). The plan, the episode rows and every output are the HDF5 path's; only the scan and the
read differ (clad/data/lerobot_reader.py).

  driver:  meta/ is read and checked (v2.x, missing metadata, missing views -> DataError before any work),
           each task string is mapped to its LIBERO benchmark task (name + benchmark instruction).
  Ray:     one scan task per data Parquet file (validation, statistics, video probes); the write stage reads
           one episode per task (Parquet row filter + video segment decode with PyAV).

Why not `ray.data.read_lerobot`: it decodes video through lerobot >= 0.5 and torchcodec, which this
project's registries do not offer (lerobot 0.4.4 pins torch < 2.11), and it yields frame rows that would
have to be regrouped into episodes; reading per episode keeps one episode in memory per task.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from clad.data import validate as V
from clad.data.conventions import UPRIGHT
from clad.data.hdf5_reader import FileScan
from clad.data.lerobot_reader import (STATE_FEATURE, STATE_KEYS, Layout, episode_index_of, load_layout,
                                      match_benchmark_task, read_episode, scan_data_file)
from clad.data.preprocess_config import PreprocessConfig
from clad.errors import DataError

log = logging.getLogger(__name__)

FORMAT = "lerobot_v3"


@dataclass
class LerobotSource:
    layout: Layout
    tasks: dict[int, tuple[str, str]]  # task_index -> (benchmark task name, benchmark instruction)
    task_errors: dict[int, str] = field(default_factory=dict)
    task_map: list[dict] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return self.layout.files()

    @property
    def lowdim_keys(self) -> tuple[str, ...]:
        return self.layout.lowdim_keys

    def scan(self, read_cpus: float) -> list[FileScan]:
        """One Ray task per data file; episodes whose data file is missing are rejected on the driver."""
        import ray

        from clad import storage

        by_file: dict[str, list[dict]] = defaultdict(list)
        for ep in self.layout.episodes:
            by_file[self.layout.data_file(ep)].append(ep)
        scans: list[FileScan] = []
        present = {}
        for rel, eps in sorted(by_file.items()):
            if storage.is_file(storage.join(self.layout.root, rel)):
                present[rel] = eps
            else:
                s = FileScan(file=rel, task_name="", instruction="", demos_found=len(eps))
                s.rejections += [V.Rejection(rel, f"episode_{int(e['episode_index']):06d}", V.UNREADABLE,
                                             "meta/episodes points at this data file, which does not exist")
                                 for e in eps]
                scans.append(s)
        layout_ref = ray.put(self.layout)
        task = ray.remote(num_cpus=read_cpus, max_retries=1)(scan_data_file)
        refs = [task.remote(layout_ref, rel, eps, self.tasks, self.task_errors) for rel, eps in present.items()]
        for group in ray.get(refs):
            scans += group
        return scans

    def read_kwargs(self) -> dict:
        return {"layout": self.layout}

    def manifest_extra(self) -> dict:
        return {"image_orientation": UPRIGHT, "lowdim_keys": list(self.lowdim_keys),
                "extra": {"format": FORMAT, "lerobot": {
                    "fps": self.layout.fps,
                    "image_features": self.layout.image_features,
                    "video_features": self.layout.video_features,
                    "state": ({STATE_FEATURE: {k: [sl.start, sl.stop] for k, sl in STATE_KEYS.items()}}
                              if "ee_states" in self.lowdim_keys else {}),
                    "tasks": self.task_map}}}


def load_source(input_dir: Path, cfg: PreprocessConfig) -> LerobotSource:
    """Read meta/ and map the task strings to benchmark tasks (driver; raises DataError for a dataset that
    cannot be read at all)."""
    layout = load_layout(input_dir, cfg.image_keys)
    source = LerobotSource(layout, {})
    for i, text in sorted(layout.tasks.items()):
        try:
            spec = match_benchmark_task(text)
        except DataError as err:
            source.task_errors[i] = str(err)
            log.warning("%s", err)
            source.task_map.append({"task_index": i, "task": text, "suite": None, "benchmark_index": None,
                                    "name": None})
            continue
        source.tasks[i] = (spec.name, spec.language)
        source.task_map.append({"task_index": i, "task": text, "suite": spec.suite, "benchmark_index": spec.index,
                                "name": spec.name})
    return source


def read_batch(batch: pa.Table, image_keys, lowdim_keys, image_size, resize, layout: Layout) -> pa.Table:
    """Ray Data UDF: EpisodeRef rows -> episode rows (the same schema as the HDF5 path)."""
    from clad.data.convert import read_episodes_table

    def read(ref, keys, low, size):
        return read_episode(layout, episode_index_of(ref["demo"]), keys, low, size)

    return read_episodes_table(batch.to_pylist(), tuple(image_keys), tuple(lowdim_keys), tuple(image_size), resize,
                               read=read)
