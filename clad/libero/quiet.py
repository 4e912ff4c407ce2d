"""LIBERO's dependencies announce themselves on every import, in every process; send that to the log.

  robosuite  warns three times that it has no private macro file (its defaults are what clad wants)
  gym        prints an "unmaintained since 2022" banner on stderr (LIBERO's env wrapper imports gym)
  LIBERO     prints "[info] using task orders ..." whenever a benchmark object is made

Each is handled where it starts, with the library's own mechanism: robosuite looks for the module
`robosuite.macros_private`, gym's banner is a print at its import, LIBERO's a print in the benchmark
constructor. What they say goes to their logger (`robosuite`, `gym`, `libero`) at INFO: in the log
file, not on the console (pipelines/logs.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import types
from collections.abc import Iterator

__all__ = ["quiet_imports", "prints_to_log"]


@contextlib.contextmanager
def prints_to_log(logger_name: str) -> Iterator[None]:
    """Run a block whose library prints on stdout/stderr; log what it printed instead."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        text = (out.getvalue() + err.getvalue()).strip()
        if text:
            logging.getLogger(logger_name).info("%s", text)


def quiet_imports() -> None:
    """Before robosuite or gym is imported in this process (idempotent; imports gym, not robosuite)."""
    if "robosuite" not in sys.modules:
        # robosuite/__init__.py: `from robosuite.macros_private import *`, else three warnings. An empty
        # private macro module keeps every default of robosuite/macros.py.
        sys.modules.setdefault("robosuite.macros_private", types.ModuleType("robosuite.macros_private"))
    if "gym" not in sys.modules:
        with prints_to_log("gym"):
            try:
                import gym  # noqa: F401
            except ImportError:  # gym is LIBERO's dependency, not ours
                pass
