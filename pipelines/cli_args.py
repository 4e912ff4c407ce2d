"""Arguments shared by the `clad` subcommands, so every command spells them the same way."""

from __future__ import annotations

import argparse


def add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    # the example is this command's own syntax (e.g. `steps=100` for clad train, `train.steps=100` for clad
    # pipeline): a malformed override is refused by argparse with it, before any config is read
    first = example.split()[1] if example.startswith("-o ") else example

    def key_value(text: str) -> str:
        key, eq, _ = text.partition("=")
        if not eq or not key.strip():
            raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE; e.g. -o {first}")
        return text

    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                   help=f"override a config field, e.g. {example} (repeatable)")


def add_cluster_args(p: argparse.ArgumentParser, tracking: bool = True) -> None:
    if tracking:
        p.add_argument("--tracking-uri",
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or a local SQLite store)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a new local cluster)")
