"""What a person sees on the console, and the log file that keeps everything else.

The console shows clad's own messages (step headers, training metrics at `log_every`, warnings that call
for action), progress bars and the final table. Every other library speaks on the console only at ERROR;
everything from INFO up, theirs included, goes to `<output folder>/clad.log`. `clad --verbose` puts it all
back on the console and adds clad's DEBUG records.

Third-party noise is silenced where it starts, in every process that starts it (the driver, Ray workers
and actors), by each library's own switch, never by filtering text:
  ray, ray.data             Ray's "ray" logger keeps no console handler of its own and propagates to the
                            root logger (below); Ray Data reads its logging config from the YAML file
                            RAY_DATA_LOGGING_CONFIG names (ray_data_logging.yaml: no console handler)
  ray.train                 RAY_TRAIN_ENABLE_{CONTROLLER,WORKER}_STRUCTURED_LOGGING=0: Ray Train leaves the
                            loggers of its controller and workers as this module set them
  mlflow, alembic           MLFLOW_CONFIGURE_LOGGING=false: mlflow leaves its loggers to the root logger
  warnings                  logging.captureWarnings: deprecation warnings become records of `py.warnings`
  robosuite, gym, LIBERO    clad/libero/quiet.py (their banners are prints and import-time warnings)
Ray workers and actors get the same setup from `setup_worker`, Ray's worker_process_setup_hook (see
`ray_init_options`); their console lines reach the driver through Ray's log forwarding, and they append to
the same log file (one write per record, O_APPEND) when its folder is reachable from their node.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path

LOG_FILE_NAME = "clad.log"
# loggers whose INFO records a person reads on the console
OWN_LOGGERS = ("clad", "pipelines", "__main__")
ENV_LOG_FILE = "CLAD_LOG_FILE"
ENV_VERBOSE = "CLAD_VERBOSE"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

_state: dict = {"configured": False, "verbose": False, "file": None, "buffer": None, "handlers": []}


class ConsolePolicy(logging.Filter):
    """Our loggers from INFO up; any other library only from ERROR (the log file has the rest)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".", 1)[0] in OWN_LOGGERS or record.levelno >= logging.ERROR


def library_switches() -> dict[str, str]:
    """Environment variables that make libraries leave their logging to us (read at their import)."""
    return {
        "MLFLOW_CONFIGURE_LOGGING": "false",
        # Ray Train otherwise rebuilds the root logger of its controller and workers with a console handler
        "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
        "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
        "RAY_DATA_LOGGING_CONFIG": str(resources.files("pipelines") / "ray_data_logging.yaml"),
    }


def _console_handler(verbose: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    if not verbose:
        handler.addFilter(ConsolePolicy())
    return handler


def _file_handler(path: Path, verbose: bool) -> logging.Handler:
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


def route_ray_logging() -> None:
    """Ray's "ray" logger prints on its own handler and stops there; make it hand its records to the root
    logger like any library, so the console policy and the log file apply to Ray too. Call after
    `import ray` (which installs the handler) in each process."""
    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        if type(handler) is not logging.FileHandler:
            ray_logger.removeHandler(handler)
    ray_logger.propagate = True
    ray_logger.setLevel(logging.INFO)


def _configure_root(verbose: bool, replace: bool) -> logging.Logger:
    os.environ.update({k: v for k, v in library_switches().items() if k not in os.environ})
    root = logging.getLogger()
    for handler in list(root.handlers) if replace else _state["handlers"]:
        root.removeHandler(handler)
    # libraries at INFO even with --verbose (their DEBUG is for their own developers); ours at DEBUG then
    root.setLevel(logging.INFO)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.NOTSET)
    console = _console_handler(verbose)
    root.addHandler(console)
    logging.captureWarnings(True)
    _state.update(verbose=verbose, handlers=[console])
    if "ray" in sys.modules:
        route_ray_logging()
    return root


def configure(verbose: bool = False) -> None:
    """Driver side, at the start of a command: console policy now; records wait in memory until the command
    knows its output folder (`attach_log_file`). Handlers others put on the root logger (pytest's) stay."""
    saved_level = logging.getLogger().level
    root = _configure_root(verbose, replace=False)
    _state["saved_level"] = saved_level
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    root.addHandler(buffer)
    _state["handlers"].append(buffer)
    _state.update(configured=True, file=None, buffer=buffer)


def close() -> None:
    """End of a command: take our handlers off the root logger (a command run in-process leaves no trace)."""
    root = logging.getLogger()
    for handler in _state["handlers"]:
        root.removeHandler(handler)
        handler.close()
    logging.captureWarnings(False)
    root.setLevel(_state.pop("saved_level", root.level))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    os.environ.pop(ENV_LOG_FILE, None)
    _state.update(configured=False, file=None, buffer=None, handlers=[])


def is_configured() -> bool:
    """True in a `clad` command (the CLI called `configure`); library use and tests keep their own logging."""
    return _state["configured"]


def attach_log_file(out_dir: str | Path) -> Path:
    """Append this command's records (and those of the Ray workers it starts) to `<out_dir>/clad.log`.

    Outside a `clad` command (library use, tests) nothing is attached and the path is only returned.
    An object-storage `out_dir` (s3://...) gets its log in this machine's cache, `<cache>/logs/<its name>/`:
    a log is appended line by line, which a bucket cannot do (and Path("s3://b/x") would be a local "s3:" folder)."""
    from clad import storage

    if storage.is_remote(out_dir):
        out_dir = storage.cache_root() / "logs" / storage.name(out_dir)
    path = (Path(out_dir).expanduser() / LOG_FILE_NAME).resolve()
    if _state["file"] == path or not _state["configured"]:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = _file_handler(path, _state["verbose"])
    root.addHandler(handler)
    _state["handlers"].append(handler)
    buffer = _state["buffer"]
    if buffer is not None:  # what happened before the output folder was known
        buffer.setTarget(handler)
        buffer.flush()
        root.removeHandler(buffer)
        _state["handlers"].remove(buffer)
        buffer.close()
    _state.update(file=path, buffer=None)
    os.environ[ENV_LOG_FILE] = str(path)
    return path


def log_file() -> Path | None:
    return _state["file"]


def ray_init_options() -> dict:
    """`ray.init` arguments that give every worker and actor of the job the same logging as the driver."""
    env = {**library_switches(), ENV_VERBOSE: "1" if _state["verbose"] else "0"}
    if _state["file"] is not None:
        env[ENV_LOG_FILE] = str(_state["file"])
    return {"logging_level": logging.INFO,
            "runtime_env": {"env_vars": env, "worker_process_setup_hook": "pipelines.logs.setup_worker"}}


def setup_worker() -> None:
    """Ray's worker_process_setup_hook: runs once in every worker and actor process of the job."""
    verbose = os.environ.get(ENV_VERBOSE) == "1"
    import ray  # noqa: F401  (installs Ray's handler first, so route_ray_logging can take it off)

    root = _configure_root(verbose, replace=True)  # a fresh worker process: Ray's defaults go
    # Ray Train's placement-group cleaner asks the State API for "the" local cluster; with several Ray
    # instances on one machine it finds many and its thread dies with a traceback. Name ours.
    try:
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    except Exception:  # pragma: no cover - an older Ray without gcs_address: the cleaner guesses as before
        pass
    fallback = Path(tempfile.gettempdir()) / "clad" / LOG_FILE_NAME
    fallback.parent.mkdir(parents=True, exist_ok=True)
    wanted = os.environ.get(ENV_LOG_FILE)
    for path in ([Path(wanted)] if wanted else []) + [fallback]:
        if not path.parent.is_dir():  # the output folder is not mounted on this node: keep records on the node
            continue
        try:
            root.addHandler(_file_handler(path, verbose))
            return
        except OSError:
            continue
