"""The `clad` console script: one entry point, one subcommand per pipeline step.

Each subcommand lives in its own module under `pipelines/` and exposes `register(subparsers)`, which adds
its parser and sets `func` to the function that runs it. Modules are imported only when their
subcommand list is built, and heavy imports (torch, ray) stay inside the run functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from clad.errors import CladError
from pipelines import logs, signals

# subcommand modules, in the order a user meets them
COMMAND_MODULES = [
    "pipelines.demos",
    "pipelines.preprocess",
    "pipelines.features",
    "pipelines.train",
    "pipelines.tune",
    "pipelines.evaluate",
    "pipelines.eval_checkpoints",
    "pipelines.compare",
    "pipelines.probe",
    "pipelines.pipeline",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clad",
        description="CLaD on LIBERO: demonstrations, preprocessing, training, sweeps and parallel evaluation on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="everything on the console: debug logging and every library's messages "
                             "(without it they go to clad.log in the output folder)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # a step that is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logs.configure(verbose=args.verbose)
    signals.route_sigterm_to_interrupt()  # again after ray.init, which installs its own handler
    try:
        return int(args.func(args) or 0)
    except CladError as err:
        print(f"clad {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a short line, not a traceback (commands clean up in their own handlers)
        # SIGTERM takes the same path (pipelines/signals.py), with its conventional exit code
        print(f"\nclad {args.command}: {'terminated (SIGTERM)' if signals.terminated() else 'interrupted'}", file=sys.stderr)
        return signals.interrupted_exit_code()
    finally:
        logs.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
