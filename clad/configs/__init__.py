"""Shipped pipeline configs: `clad pipeline --config <name>` loads `<name>.yaml` from here."""
