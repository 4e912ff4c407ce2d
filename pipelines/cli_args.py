"""Arguments shared by the `clad` subcommands, so every command spells them the same way."""

from __future__ import annotations

import argparse


def add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config field, e.g. {example} (repeatable)")


def add_cluster_args(p: argparse.ArgumentParser, tracking: bool = True) -> None:
    if tracking:
        p.add_argument("--tracking-uri",
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or a local SQLite store)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a new local cluster)")
