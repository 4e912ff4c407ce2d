"""The dataset manifest (manifest.json) and the input fingerprint that makes re-runs no-ops.

The fingerprint is the sha256 of (schema version, the preprocessing config, and the sorted list of
(relative path, sha256) of every input file). The manifest is written last, after every other output, so
an interrupted run leaves no manifest and the next run rebuilds.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from clad import storage
from clad.errors import DataError

MANIFEST = "manifest.json"
STATS = "stats.json"
TASKS = "tasks.json"
LANGUAGE = "language.safetensors"
REJECTIONS = "rejections.json"
EPISODES_DIR = "episodes"  # episodes/<split>/*.parquet
SPLITS = ("train", "val")


@dataclass(frozen=True)
class FileInfo:
    """One input file: path relative to the input folder, content hash, size in bytes, mtime (POSIX seconds)."""

    rel: str
    sha256: str
    size: int
    mtime: float

    def to_json(self) -> dict:
        return asdict(self)


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_files(root: str | Path, paths: Sequence[Path], threads: int = 4) -> list[FileInfo]:
    """Hash every file (threads: hashlib releases the GIL, so hashing overlaps with disk reads).

    Files in object storage are not downloaded to the driver for this: their identity is the URI, size and
    modification time (a rewritten object gets a new one), recorded in place of the content hash."""
    if storage.is_remote(root):
        def remote(loc) -> FileInfo:
            size, mtime = storage.stat(loc)
            return FileInfo(storage.relative(loc, root), f"object:{size}:{mtime:.6f}", size, mtime)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return list(pool.map(remote, paths))
    root = Path(root)

    def one(p: Path) -> FileInfo:
        st = p.stat()
        try:
            digest = sha256_file(p)
        except OSError as err:  # unreadable at the OS level; the scan will reject it with the same cause
            digest = f"unreadable:{err.errno}"
        return FileInfo(p.relative_to(root).as_posix(), digest, st.st_size, st.st_mtime)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, paths))


def fingerprint(config: dict[str, Any], files: Sequence[FileInfo], schema_version: int,
                extra: dict[str, Any] | None = None) -> str:
    """sha256 of everything that determines the output; `extra` holds e.g. the backbone checkpoint digest."""
    payload = {"schema_version": schema_version, "config": config,
               "files": sorted((f.rel, f.sha256) for f in files), "extra": extra or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def path_digest(path: str | Path) -> str:
    """sha256 over the relative names and contents of every file under `path` (or of one file), so a
    changed backbone checkpoint changes the dataset fingerprint. 'missing' if the path does not exist."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if not p.is_dir():
        return "missing"
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def write_json(path: str | Path, doc: Any) -> None:
    """Write atomically (temp file + rename, or one complete object in a bucket) so a crash never leaves half
    a JSON file. `path` may be a local path or a URI (clad/storage.py)."""
    storage.write_json(path, doc, indent=2, sort_keys=False)


def read_manifest(dataset_dir: str | Path) -> dict:
    path = storage.join(dataset_dir, MANIFEST)  # a local folder or a URI
    if not storage.is_file(path):
        raise DataError(f"{dataset_dir} is not a preprocessed dataset (no {MANIFEST}); run `clad preprocess` first")
    try:
        return storage.read_json(path)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); re-run `clad preprocess`") from None


def existing_fingerprint(dataset_dir: str | Path) -> str | None:
    try:
        return read_manifest(dataset_dir).get("fingerprint")
    except DataError:
        return None
