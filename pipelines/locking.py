"""One clad command at a time per output folder.

    with lock_folder(out, "clad eval"):
        ...   # a second process on the same folder fails at once, naming this one

The lock is an OS file lock (filelock; released by the kernel when the holder dies, so a crashed run never
leaves a stale lock). Beside it a small JSON sidecar records who holds it (pid, host, command, start
time), which the refusal message quotes: the lock itself cannot say who holds it.

An s3:// folder is also locked across machines: a lock object `<folder>/.clad.lock` created with a conditional
PUT (`If-None-Match: *`, so exactly one writer creates it) holds the same record and is deleted on exit.
Unlike a file lock it outlives a killed holder: a stale one whose process on this machine is gone is taken
over; one from another machine is reported with the command that removes it. Other schemes (gs://, ...)
have only the machine-local lock in the cache (clad/storage.py lock_file).
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


def _holder_record(what: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": " ".join([what, *sys.argv[1:]]) if sys.argv[1:] else what, "token": os.urandom(8).hex()}


def _describe(h: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("started", 0)))
    return f"pid {h.get('pid')} on {h.get('host')} (`{h.get('command')}`, since {started})"


def _holder(folder: Path) -> str:
    try:
        return _describe(json.loads((folder / HOLDER_NAME).read_text()))
    except (OSError, ValueError):
        return "another process (its pid was not recorded yet)"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


@contextlib.contextmanager
def lock_folder(folder: str | Path, what: str, flag: str = "--out") -> Iterator[Path]:
    """Hold `folder` exclusively for the block; `what` names the command in the holder record.

    For a URI the file lock lives in this machine's cache (clad/storage.py lock_file); an s3:// folder is
    locked across machines as well, by a lock object in the bucket (see the module docstring)."""
    from clad import storage

    if not storage.is_remote(folder):
        with _file_lock(Path(folder), what, flag) as local:
            yield local
        return
    uri = storage.normalize(folder)
    with _file_lock(Path(storage.lock_file(uri, "lock")), what, flag) as local, _bucket_lock(uri, what, flag):
        yield local


@contextlib.contextmanager
def _file_lock(folder: Path, what: str, flag: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderInUse(f"{folder} is in use by {_holder(folder)}: wait for it to finish or stop it, "
                          f"or pass another {flag}") from None
    tmp = folder / f".{HOLDER_NAME}.{os.getpid()}"
    tmp.write_text(json.dumps(_holder_record(what)) + "\n")
    os.replace(tmp, folder / HOLDER_NAME)
    try:
        yield folder
    finally:
        with contextlib.suppress(OSError):
            (folder / HOLDER_NAME).unlink()
        lock.release()


@contextlib.contextmanager
def _bucket_lock(uri: str, what: str, flag: str) -> Iterator[bool]:
    """The cross-machine lock object of an s3:// folder. Yields False when the store offers no conditional
    write here (gs://, or boto3 missing): the machine-local lock is then all there is."""
    from clad import storage

    loc = storage.join(uri, LOCK_NAME)
    me = _holder_record(what)
    created = storage.create_exclusive(loc, json.dumps(me).encode())
    if created is None:
        yield False
        return
    if not created:
        try:
            holder = storage.read_json(loc)
        except (OSError, ValueError):
            holder = {}
        if holder.get("host") == me["host"] and holder.get("pid") and not _pid_alive(holder["pid"]):
            storage.delete(loc)  # its holder on this machine is gone (killed): the lock is stale
            created = storage.create_exclusive(loc, json.dumps(me).encode())
        if not created:
            who = _describe(holder) if holder else "another process"
            raise FolderInUse(f"{uri} is in use by {who} (lock object {loc}): wait for it to finish or stop it, "
                              f"or pass another {flag}; if that process is gone, remove the lock: aws s3 rm {loc}")
    try:
        yield True
    finally:
        with contextlib.suppress(OSError, ValueError):
            if storage.read_json(loc).get("token") == me["token"]:  # never remove a lock another took over
                storage.delete(loc)


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
