"""Worker-process setup hook for tests/test_storage.py: Ray workers may not read the driver's folder.

The tests run as root on one machine, so file permissions cannot hide the driver's folder from the
workers. Instead every Ray worker process of the test's Ray instance installs this guard: any Python
`open()` of a path under $CLAD_FORBIDDEN_DIR, and any clad.storage access to one (pyarrow's C++ reads
bypass Python's audit hooks), is refused with PermissionError and recorded in $CLAD_VIOLATIONS_FILE
(so a caller that catches the error cannot hide it from the test).
"""

from __future__ import annotations

import os
import sys


def _record(path: str) -> None:
    log = os.environ.get("CLAD_VIOLATIONS_FILE")
    if log:
        with open(log, "a") as f:  # outside the forbidden folder
            f.write(f"{os.getpid()} {path}\n")


def _forbidden(path) -> bool:
    root = os.environ.get("CLAD_FORBIDDEN_DIR")
    if not root or isinstance(path, int):
        return False
    p = os.path.abspath(os.fsdecode(path))
    return p == root or p.startswith(root + os.sep)


def forbid_driver_folder() -> None:
    if not os.environ.get("CLAD_FORBIDDEN_DIR"):
        return

    def hook(event, args):
        if event == "open" and args and _forbidden(args[0]):
            _record(os.fsdecode(args[0]))
            raise PermissionError(f"a Ray worker opened {args[0]}, a path on the driver's machine only")

    sys.addaudithook(hook)

    import clad.storage as storage

    original = storage.filesystem

    def guarded(loc):
        if not storage.is_remote(loc) and _forbidden(storage.normalize(loc)):
            _record(str(loc))
            raise PermissionError(f"a Ray worker accessed {loc}, a path on the driver's machine only")
        return original(loc)

    storage.filesystem = guarded
