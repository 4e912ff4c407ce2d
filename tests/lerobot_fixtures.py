"""The LeRobot v3.0 fixtures (written by lerobot 0.4.4's own LeRobotDataset writer, see their README) and
copies of them with one thing broken, for the bad-input tests."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

# ../shared beside the checkout (as CI lays it out), or CLAD_LEROBOT_FIXTURES
ROOT = Path(os.environ.get("CLAD_LEROBOT_FIXTURES")
            or Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "lerobot")
FIXTURES = ("libero_v3_images", "libero_v3_video")


def fixture_dir(name: str) -> Path:
    path = ROOT / name
    if not (path / "meta" / "info.json").is_file():
        if os.environ.get("CI"):  # CI lays ../shared beside the checkout: a missing fixture is a broken setup
            pytest.fail(f"LeRobot fixture {path} is missing (set CLAD_LEROBOT_FIXTURES or put shared/ beside the repo)")
        pytest.skip(f"LeRobot fixture {path} is not on this machine (set CLAD_LEROBOT_FIXTURES)")
    return path


def writable_copy(name: str, dest: Path) -> Path:
    """A copy of a fixture whose files may be modified (the originals are read-only)."""
    shutil.copytree(fixture_dir(name), dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def edit_info(root: Path, edit) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info, indent=2))
