"""Reading LeRobot v3.0 LIBERO datasets into the same per-episode arrays as clad/data/hdf5_reader.py.

Layout (written by lerobot's LeRobotDataset.create/add_frame/save_episode/finalize):

    meta/info.json                       codebase_version "v3.0", fps, features, data_path, video_path
    meta/tasks.parquet                   task string (pandas index or column "task") -> task_index
    meta/episodes/chunk-*/file-*.parquet episode_index, length, tasks, data/{chunk,file}_index,
                                         dataset_{from,to}_index, videos/<key>/{chunk_index,file_index,
                                         from_timestamp,to_timestamp}
    data/chunk-*/file-*.parquet          one row per frame: action, observation.state, ..., timestamp,
                                         frame_index, episode_index, index, task_index, and inline images
                                         as struct<bytes, path> (PNG/JPEG) when not stored as video
    videos/<key>/chunk-*/file-*.mp4      many episodes per file, located by [from_timestamp, to_timestamp)

Conventions of the public LeRobot LIBERO sets (and of the fixtures): frames are upright (LIBERO's frame
rotated by 180 degrees; recorded as the dataset's image_orientation, never flipped back here), and
`observation.state` is eef position (3) + eef axis-angle (3) + gripper qpos (2), which is exactly
ee_states ++ gripper_states of the demo-file layout, so it is stored under those keys (and ee_pos, ee_ori);
`observation.states.joint_state` becomes joint_states. The env produces the same keys in the same units.

Two entry points mirror the HDF5 reader: `scan_data_file` validates every episode of one data file and
computes its statistics (never raises for bad data); `read_episode` reads one accepted episode in full.
No Ray here: pipelines/preprocess.py distributes them.
"""

from __future__ import annotations

import functools
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clad import storage
from clad.data import validate as V
from clad.data.hdf5_reader import DemoScan, FileScan
from clad.data.images import resize_images
from clad.data.stats import Moments
from clad.errors import DataError

INFO = "meta/info.json"
TASKS = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CODEBASE_VERSION = "v3.0"
# lerobot's own migration script (lerobot >= 0.4): v2.1 -> v3.0 in place
MIGRATE_HINT = ("migrate it with lerobot's converter: `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 "
                "--repo-id=<repo> --root=<folder>` (a v2.0 set first needs "
                "`lerobot.datasets.v21.convert_dataset_v20_to_v21`)")

# LeRobot feature -> demo-file obs key. LIBERO converters name the wrist camera `wrist_image`
# (libero2lerobot) or `image2` (lerobot's LIBERO env and HuggingFaceVLA/libero).
IMAGE_FEATURES: dict[str, str] = {
    "observation.images.image": "agentview_rgb",
    "observation.images.wrist_image": "eye_in_hand_rgb",
    "observation.images.image2": "eye_in_hand_rgb",
}
ACTION_FEATURE, ACTION_DIM = "action", 7
STATE_FEATURE, STATE_DIM = "observation.state", 8
# slices of observation.state: eef pos (3) + eef axis-angle (3) + gripper qpos (2)
STATE_KEYS: dict[str, slice] = {"ee_states": slice(0, 6), "ee_pos": slice(0, 3), "ee_ori": slice(3, 6),
                                "gripper_states": slice(6, 8)}
JOINT_FEATURE, JOINT_DIM = "observation.states.joint_state", 7

# Benchmark suites searched, in order, for a dataset's task strings (HuggingFaceVLA/libero mixes the four
# standard suites; libero_90 last because its scenes overlap libero_10's).
SUITE_SEARCH_ORDER = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")

# rejection kinds specific to this format (stable strings, next to those in clad.data.validate)
VIDEO = "video"
UNKNOWN_TASK = "unknown_task"
MISSING_METADATA = "missing_metadata"


def is_lerobot_dataset(root: str | Path) -> bool:
    """A LeRobot dataset of any version has meta/info.json (v2.x and v3.0 alike). `root` may be a URI."""
    return storage.is_file(storage.join(root, INFO))


def fetch(root: str, rel: str) -> Path:
    """A local path to file `rel` of the dataset at `root`: the file itself, or for a dataset in object storage
    this node's cached copy (clad/storage.py local_copy), so read tasks never need a path of the driver."""
    return storage.local_copy(storage.join(root, rel))


def meta_dir(root: str) -> Path:
    """meta/ as a local folder (cached per node for a URI): small, and read whole by the driver and tasks."""
    return storage.local_copy(storage.join(root, "meta"))


# ----------------------------------------------------------------------------------------------- tasks

def normalise_instruction(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def match_benchmark_task(instruction: str, suites=SUITE_SEARCH_ORDER):
    """The LIBERO TaskSpec for a dataset's task string, through the one benchmark lookup
    (`clad.libero.suites.find_benchmark_task`: benchmark or BDDL wording, case ignored), searching `suites`
    in order so that a text shared by two suites resolves to the first. The caller then uses spec.language
    (the benchmark's instruction) for training and evaluation alike.
    DataError naming the string and the suites when nothing matches or two tasks of one suite do."""
    from clad.libero.suites import UnknownTaskError, find_benchmark_task

    for suite in suites:
        try:
            spec = find_benchmark_task(instruction, suite=suite)
        except UnknownTaskError as err:
            raise DataError(f"task {instruction!r} of meta/tasks.parquet: {err}") from None
        if spec is not None:
            return spec
    raise DataError(f"task {instruction!r} of meta/tasks.parquet matches no LIBERO benchmark instruction "
                    f"(searched the benchmark and BDDL instructions of {', '.join(suites)}, whitespace and case "
                    "ignored)")


# ----------------------------------------------------------------------------------------------- layout

@dataclass
class Layout:
    """What the driver learns from meta/: enough for the scan and read tasks (plain data, picklable)."""

    root: str
    fps: float
    image_features: dict[str, str]  # obs key -> LeRobot feature
    video_features: list[str]  # the image features stored as video
    lowdim_keys: tuple[str, ...]  # demo-file low-dim keys this dataset provides
    tasks: dict[int, str]  # task_index -> task string
    episodes: list[dict[str, Any]]  # meta/episodes rows (stats columns dropped)
    data_path: str
    video_path: str | None
    features: dict[str, Any] = field(default_factory=dict)

    def data_file(self, ep: dict) -> str:
        return self.data_path.format(chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])

    def video_file(self, ep: dict, feature: str) -> str:
        assert self.video_path is not None
        return self.video_path.format(video_key=feature, chunk_index=ep[f"videos/{feature}/chunk_index"],
                                      file_index=ep[f"videos/{feature}/file_index"])

    def files(self) -> list[Path] | list[str]:
        """Every file the output depends on (for the fingerprint): meta, data and video files (URIs for a
        dataset in object storage)."""
        if storage.is_remote(self.root):
            rels = [(f, storage.relative(f, self.root).split("/"))
                    for f in storage.list_files(self.root, recursive=True)]
            return [f for f, parts in rels if parts[0] in ("meta", "data", "videos")
                    and not any(p.startswith(".") for p in parts)]
        root = Path(self.root)
        return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] in
                      ("meta", "data", "videos") and not any(s.startswith(".") for s in p.relative_to(root).parts))


def _read_json(path: Path, where: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{where}: cannot read LeRobot metadata ({type(err).__name__}: {err})") from None


def _task_table(path: Path, where: str) -> dict[int, str]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{where} is missing: a LeRobot v3.0 dataset lists its task strings there")
    t = pq.read_table(path)
    text_col = "task" if "task" in t.column_names else "__index_level_0__"  # pandas writes the index
    if "task_index" not in t.column_names or text_col not in t.column_names:
        raise DataError(f"{where}: expected columns task_index and task (or a pandas index), got {t.column_names}")
    return {int(i): str(s) for i, s in zip(t.column("task_index").to_pylist(), t.column(text_col).to_pylist())}


def _episode_rows(root: str, meta: Path) -> list[dict[str, Any]]:
    """meta/episodes rows, read from `meta` (the local meta/ folder of the dataset at `root`)."""
    import pyarrow.parquet as pq

    files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DataError(f"{storage.join(root, EPISODES_DIR)} holds no chunk-*/file-*.parquet: the episode metadata "
                        "of a "
                        "LeRobot v3.0 dataset is missing")
    rows = []
    for f in files:
        t = pq.read_table(f)
        t = t.select([c for c in t.column_names if not c.startswith("stats/")])
        rows += t.to_pylist()
    return sorted(rows, key=lambda r: int(r["episode_index"]))


def _expected_width(features: dict, name: str, width: int) -> None:
    shape = list(features[name].get("shape", []))
    if shape != [width]:
        raise DataError(f"meta/info.json feature {name!r} has shape {shape}; expected [{width}] "
                        "(LIBERO conventions, see docs/lerobot.md)")


def load_layout(root: str | Path, image_keys: tuple[str, ...]) -> Layout:
    """Read and check meta/ on the driver. Raises DataError for what makes the whole dataset unusable:
    a v2.x dataset, missing metadata, a missing configured view or action, a known feature with an
    unexpected declared shape."""
    root = storage.normalize(root)  # an absolute path or a URI; the tasks resolve files where they run
    meta = meta_dir(root)
    info_loc = storage.join(root, INFO)  # for messages: where the user's file is
    info = _read_json(meta / "info.json", info_loc)
    version = str(info.get("codebase_version", "?"))
    if version.startswith("v2"):
        raise DataError(f"{info_loc}: codebase_version {version} is a LeRobot v2 dataset; clad reads v3.0 - "
                        + MIGRATE_HINT)
    if version != CODEBASE_VERSION:
        raise DataError(f"{info_loc}: codebase_version {version!r} is not supported (clad reads {CODEBASE_VERSION})")
    features = info.get("features") or {}
    for key in ("fps", "data_path", "features"):
        if not info.get(key):
            raise DataError(f"{info_loc}: field {key!r} is missing")
    if ACTION_FEATURE not in features:
        raise DataError(f"{info_loc}: feature {ACTION_FEATURE!r} is missing (features: {sorted(features)})")
    _expected_width(features, ACTION_FEATURE, ACTION_DIM)
    lowdim: list[str] = []
    if STATE_FEATURE in features:
        _expected_width(features, STATE_FEATURE, STATE_DIM)
        lowdim += list(STATE_KEYS)
    if JOINT_FEATURE in features:
        _expected_width(features, JOINT_FEATURE, JOINT_DIM)
        lowdim.append("joint_states")
    image_features: dict[str, str] = {}
    for feat, key in IMAGE_FEATURES.items():
        if feat in features and key in image_keys and key not in image_features:
            shape = list(features[feat].get("shape", []))
            if len(shape) != 3 or shape[2] != 3:
                raise DataError(f"{info_loc}: feature {feat!r} has shape {shape}; expected [H, W, 3]")
            image_features[key] = feat
    missing = [k for k in image_keys if k not in image_features]
    if missing:
        have = sorted(f for f in features if f.startswith("observation.images."))
        wanted = {k: [f for f, v in IMAGE_FEATURES.items() if v == k] for k in missing}
        raise DataError(f"{root}: no image feature for view(s) {wanted} (dataset has {have}); "
                        "choose `views` in the preprocess config accordingly")
    video = [f for f in image_features.values() if features[f].get("dtype") == "video"]
    if video and not info.get("video_path"):
        raise DataError(f"{info_loc}: features {video} are videos but 'video_path' is missing")
    return Layout(root=root, fps=float(info["fps"]), image_features=image_features, video_features=video,
                  lowdim_keys=tuple(lowdim), tasks=_task_table(meta / "tasks.parquet", storage.join(root, TASKS)),
                  episodes=_episode_rows(root, meta),
                  data_path=str(info["data_path"]), video_path=info.get("video_path"), features=features)


# ----------------------------------------------------------------------------------------------- video

class VideoFile:
    """One MP4: the presentation times of its frames (from demuxing, no decode) and a decode check."""

    def __init__(self, path: Path):
        import av

        self.path = path
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise DataError(f"{path}: no video stream")
            s = c.streams.video[0]
            self.codec = s.codec_context.name
            tb = float(s.time_base)
            pts = [p.pts for p in c.demux(s) if p.pts is not None]
            self.times = np.sort(np.asarray(pts, np.float64) * tb)
        with av.open(str(path)) as c:  # the decoder exists and the stream decodes (AV1 needs dav1d/libaom)
            try:
                next(c.decode(video=0))
            except StopIteration:
                raise DataError(f"{path}: the video has no frames") from None

    def covers(self, timestamps: np.ndarray, tol: float) -> int:
        """How many of `timestamps` (seconds) have no frame within `tol`."""
        n = self.times.size
        if n == 0:
            return int(timestamps.size)
        i = np.searchsorted(self.times, timestamps)
        before, after = self.times[np.clip(i - 1, 0, n - 1)], self.times[np.clip(i, 0, n - 1)]
        near = np.minimum(np.abs(before - timestamps), np.abs(after - timestamps))
        return int((near > tol).sum())


def decode_video_frames(path: str | Path, timestamps: np.ndarray, fps: float) -> np.ndarray:
    """Frames of `path` at `timestamps` (seconds, ascending) -> (T, H, W, 3) uint8, decoding only from the
    keyframe before the first timestamp to the last one. DataError naming the file when frames are missing."""
    import av

    tol = 0.5 / fps  # nearest frame: half a frame period either way
    ts = np.asarray(timestamps, np.float64)
    out: list[np.ndarray | None] = [None] * len(ts)
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            c.seek(max(0, int((ts[0] - tol) / float(s.time_base))), stream=s, backward=True, any_frame=False)
            for frame in c.decode(s):
                t = frame.time
                if t is None or t < ts[0] - tol:
                    continue
                if t > ts[-1] + tol:
                    break
                j = int(np.argmin(np.abs(ts - t)))
                if abs(ts[j] - t) <= tol and out[j] is None:
                    out[j] = frame.to_ndarray(format="rgb24")
    except Exception as err:
        raise DataError(f"{path}: video decode failed ({type(err).__name__}: {err})") from err
    missing = [i for i, x in enumerate(out) if x is None]
    if missing:
        raise DataError(f"{path}: {len(missing)} of {len(ts)} frames between {ts[0]:.3f} s and {ts[-1]:.3f} s "
                        f"did not decode (first missing at {ts[missing[0]]:.3f} s)")
    return np.stack(out)  # type: ignore[arg-type]


def decode_image_bytes(cells: list) -> np.ndarray:
    """Inline images (struct<bytes, path> cells, PNG/JPEG) -> (T, H, W, 3) uint8."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(c["bytes"])).convert("RGB")) for c in cells])


# ----------------------------------------------------------------------------------------------- scan

def _episode_name(episode_index: int) -> str:
    return f"episode_{int(episode_index):06d}"


def _seq(table, name: str, width: int) -> np.ndarray:
    """A fixed-size-list (or list) column -> (N, width) float64; DemoRejected(BAD_SHAPE) if the width differs."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        got = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lens = set(np.diff(col.offsets.to_numpy()).tolist())
        got = lens.pop() if len(lens) == 1 else f"varying {sorted(lens)}"
        flat = col.flatten().to_numpy(zero_copy_only=False)
    else:
        raise V.DemoRejected(V.BAD_SHAPE, f"column {name!r} has type {col.type}; expected a list of {width} floats")
    if got != width:
        raise V.DemoRejected(V.BAD_SHAPE, f"column {name!r} has width {got}; expected {width}")
    return flat.astype(np.float64).reshape(-1, width)


def episode_lowdim(table, lowdim_keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """action + the demo-file low-dim keys from a table of one episode's rows, float64."""
    out = {"actions": _seq(table, ACTION_FEATURE, ACTION_DIM)}
    if any(k in STATE_KEYS for k in lowdim_keys):
        state = _seq(table, STATE_FEATURE, STATE_DIM)
        out.update({k: state[:, sl] for k, sl in STATE_KEYS.items() if k in lowdim_keys})
    if "joint_states" in lowdim_keys:
        out["joint_states"] = _seq(table, JOINT_FEATURE, JOINT_DIM)
    return out


def _check_episode(rows, ep: dict, fps: float) -> tuple[int, np.ndarray]:
    """Length and timing against the metadata. Returns (T, per-frame timestamps)."""
    T = int(ep["length"])
    if rows.num_rows != T:
        raise V.DemoRejected(V.LENGTH_MISMATCH, f"meta/episodes says length {T} but the data file has "
                                                f"{rows.num_rows} rows for this episode")
    if T == 0:
        raise V.DemoRejected(V.EMPTY, "episode has 0 frames")
    if "index" in rows.column_names and "dataset_from_index" in ep:
        idx = rows.column("index").to_numpy()
        if idx[0] != ep["dataset_from_index"] or idx[-1] != ep["dataset_to_index"] - 1:
            raise V.DemoRejected(V.LENGTH_MISMATCH, f"rows have index {idx[0]}..{idx[-1]} but meta/episodes says "
                                                    f"{ep['dataset_from_index']}..{ep['dataset_to_index'] - 1}")
    if "frame_index" in rows.column_names:
        fi = rows.column("frame_index").to_numpy()
        if not np.array_equal(fi, np.arange(T)):
            raise V.DemoRejected(V.LENGTH_MISMATCH, "frame_index is not 0..T-1 in order")
    ts = (rows.column("timestamp").to_numpy().astype(np.float64) if "timestamp" in rows.column_names
          else np.arange(T) / fps)
    off = np.abs(ts - np.arange(T) / fps)
    if off.max() > 0.5 / fps:
        k = int(np.argmax(off))
        raise V.DemoRejected(V.LENGTH_MISMATCH, f"timestamp {ts[k]:.4f} s at frame {k} is not frame/fps "
                                                f"({k / fps:.4f} s at {fps:g} fps): frames are missing or repeated")
    return T, ts


def scan_data_file(layout: Layout, rel: str, episodes: list[dict], tasks: dict[int, tuple[str, str]],
                   task_errors: dict[int, str]) -> list[FileScan]:
    """Validate every episode of data file `rel` and compute its statistics: one FileScan per task present.

    `tasks` maps task_index -> (benchmark task name, benchmark instruction); `task_errors` maps the
    task_index of strings that match no benchmark task to the message. Never raises for bad data.
    """
    import pyarrow.parquet as pq

    by_task: dict[int, FileScan] = {}
    file_scan = FileScan(file=rel, task_name="", instruction="", demos_found=len(episodes))

    def scan_for(task_index: int) -> FileScan:
        if task_index not in by_task:
            name, instr = tasks[task_index]
            by_task[task_index] = FileScan(file=rel, task_name=name, instruction=instr)
        return by_task[task_index]

    try:
        image_cols = [f for f in layout.image_features.values() if f not in layout.video_features]
        table = pq.read_table(fetch(layout.root, rel), columns=None)
        cols = [c for c in table.column_names if c not in image_cols]
        small = table.select(cols)
    except Exception as err:
        file_scan.rejections.append(V.Rejection(rel, None, V.UNREADABLE,
                                                f"cannot read as Parquet ({type(err).__name__}: {err})"))
        return [file_scan]
    if "episode_index" not in small.column_names:
        file_scan.rejections.append(V.Rejection(rel, None, V.MISSING_KEY, "no 'episode_index' column"))
        return [file_scan]
    ep_col = small.column("episode_index").to_numpy()
    videos: dict[str, VideoFile | str] = {}
    accounted: set[int] = set()
    for ep in episodes:
        e = int(ep["episode_index"])
        accounted.add(e)
        name = _episode_name(e)
        sel = np.flatnonzero(ep_col == e)
        rows = small.take(sel)
        task_index = int(rows.column("task_index")[0].as_py()) if rows.num_rows and "task_index" in rows.column_names \
            else -1
        target = file_scan
        try:
            if task_index in task_errors:
                raise V.DemoRejected(UNKNOWN_TASK, task_errors[task_index])
            if task_index not in tasks:
                raise V.DemoRejected(MISSING_METADATA, f"task_index {task_index} is not in meta/tasks.parquet")
            T, ts = _check_episode(rows, ep, layout.fps)
            moments = {}
            for key, x in episode_lowdim(rows, layout.lowdim_keys).items():
                V.check_finite(key, x)
                moments[key] = Moments.from_array(x)
            hw = _episode_image_hw(layout, table.take(sel[:1]), ep, ts, videos)  # first frame: size and codec
            target = scan_for(task_index)
            target.demos.append(DemoScan(demo=name, length=T, image_hw=hw, moments=moments))
        except V.DemoRejected as err:
            target.rejections.append(V.Rejection(rel, name, err.kind, err.reason))
        except Exception as err:
            target.rejections.append(V.Rejection(rel, name, V.UNREADABLE, f"read failed ({type(err).__name__}: {err})"))
    extra = sorted(set(np.unique(ep_col).tolist()) - accounted)
    for e in extra:
        file_scan.rejections.append(V.Rejection(rel, _episode_name(e), MISSING_METADATA,
                                                "rows of this episode are in the data file but meta/episodes "
                                                "does not list it (its boundaries are unknown)"))
    # demos_found counts episodes once, on the first scan of the file
    scans = list(by_task.values())
    for s in scans:
        s.demos_found = 0
    return [file_scan] + scans


def _episode_image_hw(layout: Layout, rows, ep: dict, ts: np.ndarray, videos: dict) -> tuple[int, int]:
    """Check each view of the episode without decoding it in full; returns (H, W)."""
    from PIL import Image

    hw: tuple[int, int] | None = None
    for key, feat in layout.image_features.items():
        if feat in layout.video_features:
            rel = layout.video_file(ep, feat)
            if rel not in videos:
                try:
                    videos[rel] = VideoFile(fetch(layout.root, rel))
                except Exception as err:
                    videos[rel] = (f"{rel} does not decode ({type(err).__name__}: {err}); "
                                   "PyAV (`av`) decodes H.264 and AV1 (dav1d) - re-encode other codecs")
            vf = videos[rel]
            if isinstance(vf, str):
                raise V.DemoRejected(VIDEO, vf)
            start = float(ep[f"videos/{feat}/from_timestamp"])
            n_missing = vf.covers(start + ts, 0.5 / layout.fps)
            if n_missing:
                raise V.DemoRejected(VIDEO, f"{rel} has no frame for {n_missing} of {len(ts)} timestamps of this "
                                            f"episode (from {start:.3f} s): the video is shorter than the metadata")
            shape = layout.features[feat]["shape"]
            size = (int(shape[0]), int(shape[1]))
        else:
            if feat not in rows.column_names:
                raise V.DemoRejected(V.MISSING_KEY, f"image column {feat!r} is missing")
            cell = rows.column(feat)[0].as_py()
            if not isinstance(cell, dict) or not cell.get("bytes"):
                raise V.DemoRejected(V.IMAGE_FORMAT, f"{feat} holds no image bytes (expected struct<bytes, path>)")
            im = Image.open(io.BytesIO(cell["bytes"]))
            if im.mode not in ("RGB", "RGBA", "L", "P"):
                raise V.DemoRejected(V.IMAGE_FORMAT, f"{feat} images are {im.mode}; expected RGB")
            size = (im.height, im.width)
        if hw is not None and size != hw:
            raise V.DemoRejected(V.IMAGE_SIZE, f"{feat} is {size[0]}x{size[1]} but the other view is {hw[0]}x{hw[1]}")
        hw = size
    assert hw is not None
    return hw


# ----------------------------------------------------------------------------------------------- read

@functools.lru_cache(maxsize=8)
def _episode_meta(root: str) -> dict[int, dict]:
    return {int(r["episode_index"]): r for r in _episode_rows(root, meta_dir(root))}


def _episode_rows_of_file(layout: Layout, ep: dict, path: Path):
    """The rows of one episode, reading only the row groups that hold them: episodes are contiguous in a data
    file, so the file's first `dataset_from_index` gives the row offset (lerobot writes them in order).
    Falls back to a filter on episode_index when the rows found are not the episode's."""
    import pyarrow.parquet as pq

    e = int(ep["episode_index"])
    same_file = [x for x in layout.episodes if layout.data_file(x) == layout.data_file(ep)]
    start = int(ep["dataset_from_index"]) - min(int(x["dataset_from_index"]) for x in same_file)
    stop = start + int(ep["length"])
    pf = pq.ParquetFile(path)
    groups, first, offset = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if groups:
        rows = pf.read_row_groups(groups).slice(start - first, stop - start)
        col = rows.column("episode_index").to_numpy()
        if rows.num_rows == stop - start and (col == e).all():
            return rows
    return pq.read_table(path, filters=[("episode_index", "=", e)])


def episode_index_of(demo: str) -> int:
    return int(demo.rsplit("_", 1)[1])


def read_episode(layout: Layout, episode_index: int, image_keys: tuple[str, ...], lowdim_keys: tuple[str, ...],
                 image_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """One accepted episode in full, like hdf5_reader.read_episode: {image_key: (T, H, W, 3) uint8 in the
    dataset's (upright) orientation, lowdim_key: (T, D) float32, "actions": (T, 7) float32}."""

    ep = _episode_meta(layout.root)[int(episode_index)]
    rel = layout.data_file(ep)
    try:
        rows = _episode_rows_of_file(layout, ep, fetch(layout.root, rel))
        out: dict[str, np.ndarray] = {k: v.astype(np.float32)
                                      for k, v in episode_lowdim(rows, lowdim_keys).items()}
        ts = rows.column("timestamp").to_numpy().astype(np.float64)
        for key in image_keys:
            feat = layout.image_features[key]
            if feat in layout.video_features:
                start = float(ep[f"videos/{feat}/from_timestamp"])
                img = decode_video_frames(fetch(layout.root, layout.video_file(ep, feat)), start + ts, layout.fps)
            else:
                img = decode_image_bytes(rows.column(feat).to_pylist())
            out[key] = resize_images(img, image_size) if image_size else img
    except Exception as err:
        raise DataError(f"{storage.join(layout.root, rel)} {_episode_name(episode_index)}: read failed while writing "
                        "the dataset "
                        f"({type(err).__name__}: {err}); the files changed or are corrupt after the scan - "
                        "fix or remove them and re-run") from err
    return out
