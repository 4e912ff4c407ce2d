"""Typed, frozen configuration objects and their YAML/JSON round trip.

Every config in clad is a `FrozenConfig` (a pydantic model that is immutable and rejects unknown
fields), so a typo in a YAML file or a CLI override fails loudly with the file, the field and a fix.
Configs are plain data: no `eval`, no `_target_` instantiation.

    cfg = load_config(ModelConfig, "configs/cpu.yaml", overrides=["hidden_dim=256"])
    save_config(cfg, out_dir / "config.json")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import pydantic
import yaml

from clad.errors import ConfigError

__all__ = [
    "ConfigError",
    "FrozenConfig",
    "apply_overrides",
    "config_from_dict",
    "deep_merge",
    "load_config",
    "save_config",
]


class FrozenConfig(pydantic.BaseModel):
    """Base class for every clad config: immutable, typed, unknown keys rejected."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def replace(self, **changes: Any):
        """Return a copy with `changes` applied and validated again."""
        data = self.model_dump()
        data.update(changes)
        return type(self).model_validate(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


C = TypeVar("C", bound=FrozenConfig)


def _describe_error(err: pydantic.ValidationError, source: str) -> str:
    lines = [f"invalid config in {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            fix = "remove it or check its spelling"
        elif e["type"] == "missing":
            fix = "add it"
        elif not e["loc"] or e["type"] == "value_error":
            fix = ""  # a cross-field check: its message says what to change
        else:
            fix = f"got {e.get('input')!r}"
        msg = e["msg"].removeprefix("Value error, ")
        if field == "<root>" and msg.startswith("invalid config in"):
            lines = [msg]  # a nested config already named its source and fields
            continue
        lines.append(f"  field '{field}': {msg}" + (f" ({fix})" if fix else ""))
    return "\n".join(lines)


def config_from_dict(cls: type[C], data: dict[str, Any], source: str = "<dict>") -> C:
    """Validate `data` as `cls`, turning pydantic's error into a ConfigError naming `source`."""
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(_describe_error(err, source)) from None


def _parse_value(text: str) -> Any:
    # YAML scalars give the natural types: 3 -> int, 0.5 -> float, true -> bool, [1,2] -> list.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str = "command line") -> dict[str, Any]:
    """Apply dotted `key.sub=value` overrides to a nested dict (returns a new dict)."""
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"invalid override {item!r} on the {source}: expected KEY=VALUE, e.g. train.steps=100")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"invalid override {item!r} on the {source}: empty key")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"invalid override {item!r} on the {source}: '{p}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of fields at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, merging nested sections instead of replacing them."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: Iterable[str] = (), base: dict | None = None,
                transform: Callable[[dict[str, Any], str], dict[str, Any]] | None = None) -> C:
    """Load `cls` from `base` (defaults), then a YAML or JSON file on top, then dotted overrides.

    `transform(data, source)` may expand the merged data (e.g. a named preset) before validation.
    """
    data: dict[str, Any] = dict(base or {})
    source = "defaults"
    if path is not None:
        path = Path(path)
        data = deep_merge(data, read_yaml(path) if path.suffix in (".yaml", ".yml") else _read_json(path))
        source = str(path)
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + command-line overrides"
    if transform is not None:
        data = transform(data, source)
    return config_from_dict(cls, data, source)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass an existing YAML or JSON file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {path} is not valid JSON: {err}") from None


def save_config(cfg: FrozenConfig, path: str | Path) -> Path:
    """Write the resolved config as JSON (the format saved beside every checkpoint and output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    return path
