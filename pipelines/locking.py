"""One clad command at a time per output folder.

    with lock_folder(out, "clad eval"):
        ...   # a second process on the same folder fails at once, naming this one

The lock is an OS file lock (filelock; released by the kernel when the holder dies, so a crashed run never
leaves a stale lock). Beside it a small JSON sidecar records who holds it (pid, host, command, start
time), which the refusal message quotes: the lock itself cannot say who holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from clad.errors import CladError

LOCK_NAME = ".clad.lock"
HOLDER_NAME = ".clad.lock.json"


class FolderInUse(CladError):
    """Another process is writing the same output folder."""


def _holder(folder: Path) -> str:
    try:
        h = json.loads((folder / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return "another process (its pid was not recorded yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("started", 0)))
    return f"pid {h.get('pid')} on {h.get('host')} (`{h.get('command')}`, since {started})"


@contextlib.contextmanager
def lock_folder(folder: str | Path, what: str, flag: str = "--out") -> Iterator[Path]:
    """Hold `folder` exclusively for the block; `what` names the command in the holder record.

    Object stores have no locks: for a URI the lock lives in this machine's cache (clad/storage.py lock_file),
    so it refuses a second writer on the same machine only."""
    from clad import storage

    if storage.is_remote(folder):
        folder = storage.lock_file(folder, "lock")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderInUse(f"{folder} is in use by {_holder(folder)}: wait for it to finish or stop it, "
                          f"or pass another {flag}") from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join([what, *sys.argv[1:]]) if sys.argv[1:] else what}
    tmp = folder / f".{HOLDER_NAME}.{os.getpid()}"
    tmp.write_text(json.dumps(holder) + "\n")
    os.replace(tmp, folder / HOLDER_NAME)
    try:
        yield folder
    finally:
        with contextlib.suppress(OSError):
            (folder / HOLDER_NAME).unlink()
        lock.release()


def check_folder_arg(path: str | Path, flag: str = "--out") -> Path | str:
    """An output folder argument: fine if absent or a folder; a clear error if it names a regular file.
    A URI is returned normalised once a probe object could be written and deleted there."""
    from clad import storage

    if storage.is_remote(path):
        return storage.check_writable(storage.normalize(path), flag)
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise CladError(f"{flag} {path} is an existing file, not a folder: pass a folder path (it is created if "
                        "missing)")
    for parent in [p.resolve(), *p.resolve().parents]:
        if parent.exists():
            if not parent.is_dir():
                raise CladError(f"{flag} {path}: {parent} is a file, so no folder can be created under it")
            if not os.access(parent, os.W_OK):
                raise CladError(f"{flag} {path}: {parent} is not writable: choose a folder you can write")
            break
    return p
