"""What every benchmark does around its measurements: a scratch folder, the machine it ran on, a printed
table, and the JSON report written where `--out`/`--json` says."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch(work: Path | None, prefix: str) -> Iterator[Path]:
    """`work` when the user named one (kept afterwards, to look at), else a temp folder removed at the end."""
    folder = work or Path(tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if work is None:
            shutil.rmtree(folder, ignore_errors=True)


def machine(ray_cpus: float | None = None) -> dict:
    """The machine the numbers come from; the load average at the end says how noisy it was."""
    return {"cpus": os.cpu_count(), "ray_cpus": ray_cpus, "python": platform.python_version(),
            "loadavg_1m_at_end": os.getloadavg()[0]}


def print_table(fmt: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """One `fmt.format(*cells)` line for the header and for each row (cells already formatted)."""
    print(fmt.format(*header))
    for row in rows:
        print(fmt.format(*row))


def _plain(value):
    """JSON for what `json` does not know: numpy scalars as numbers, anything else (paths) as text."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def write_report(path: Path | str, report: dict) -> Path:
    """Write `report` as indented JSON (creating the folder) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    print(f"wrote {path}")
    return path
