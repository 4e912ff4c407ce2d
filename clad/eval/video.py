"""Episode video: grabbing frames next to the simulator, and writing MP4s off the rollout critical path.

Frames come from the env's own `agentview` camera when it renders, otherwise from a `mujoco.Renderer`
created lazily on the env's model: a physics-only env pays for rendering only in recorded episodes.
"""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["FrameGrabber", "video_name", "write_mp4", "VideoWriter"]

log = logging.getLogger(__name__)


class FrameGrabber:
    """Upright (H, W, 3) uint8 frames of the `agentview` camera of a clad LiberoEnv."""

    def __init__(self, env, size: int = 128, camera: str = "agentview"):
        self.env, self.size, self.camera = env, int(size), camera
        self._renderer = None

    def grab(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        img = obs.get("agentview_rgb") if self.camera == "agentview" else None
        if img is not None:
            return np.ascontiguousarray(img[::-1])  # robosuite images are OpenGL-flipped
        if self._renderer is None:
            import mujoco

            self._renderer = mujoco.Renderer(self.env.sim.model._model, self.size, self.size)
        self._renderer.update_scene(self.env.sim.data._data, camera=self.camera)
        return self._renderer.render().copy()  # mujoco.Renderer returns upright frames

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()  # without close() EGL complains from __del__ at exit
            self._renderer = None


def video_name(task_index: int, task_name: str, episode: int, success: bool) -> str:
    """e.g. `task03_ep000_success_pick_up_the_ketchup.mp4` (outcome in the name, sortable)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", task_name).strip("_")[:80]
    return f"task{task_index:02d}_ep{episode:03d}_{'success' if success else 'failure'}_{slug}.mp4"


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 20) -> Path:
    """frames (T, H, W, 3) uint8 -> H.264 MP4 (20 fps = LIBERO's control rate, i.e. real time)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1: keep odd/small frame sizes as they are instead of resizing with a warning
    with imageio.get_writer(str(path), fps=fps, codec="libx264", macro_block_size=1, quality=7) as w:
        for f in frames:
            w.append_data(np.asarray(f, dtype=np.uint8))
    return path


class VideoWriter:
    """Encodes MP4s on one background thread so the driver keeps dispatching episodes meanwhile."""

    def __init__(self, out_dir: str | Path, fps: int = 20):
        self.out_dir = Path(out_dir)
        self.fps = fps
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clad-video")
        self._futures: list[Future] = []
        self._lock = threading.Lock()

    def submit(self, name: str, frames: np.ndarray) -> Path:
        path = self.out_dir / name
        fut = self._pool.submit(write_mp4, path, frames, self.fps)
        with self._lock:
            self._futures.append(fut)
        return path

    def close(self) -> list[Path]:
        """Wait for every pending video; returns the written paths (failures are logged, not raised)."""
        written = []
        for fut in self._futures:
            try:
                written.append(fut.result())
            except Exception as err:  # a broken video must not fail the evaluation
                log.warning("could not write a video: %s", err)
        self._pool.shutdown(wait=True)
        return written
