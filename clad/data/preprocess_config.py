"""Options of `clad preprocess` (the semantic ones: every field changes the output, so all of them enter
the dataset fingerprint that makes a re-run a no-op). Runtime knobs (worker counts, Ray address) are CLI
arguments, not fields, so changing them does not force a rebuild."""

from __future__ import annotations

from typing import Any, Literal, Optional

import pydantic

from clad.config import FrozenConfig
from clad.data.libero_layout import CAMERA_TO_OBS_KEY, LOWDIM_KEYS


class FeatureBackboneConfig(FrozenConfig):
    """A frozen visual backbone whose features are computed once at preprocessing time.

    `kind` selects a factory in clad.data.features (`random_conv` is built in; the model package registers
    real ones), `checkpoint_dir` is handed to that factory, `options` holds kind-specific settings
    (e.g. `{feature_dim: 64, seed: 0}` for random_conv).
    """

    kind: str
    checkpoint_dir: Optional[str] = None
    options: dict[str, Any] = {}
    batch_size: int = pydantic.Field(64, ge=1, description="frames per forward pass")


class PreprocessConfig(FrozenConfig):
    """What the preprocessed dataset contains."""

    views: tuple[str, ...] = ("agentview", "eye_in_hand")
    # (H, W) to resize every stored image to; None keeps the native size (then every file must agree).
    image_size: Optional[tuple[int, int]] = None
    val_fraction: float = pydantic.Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = 0
    feature_backbone: Optional[FeatureBackboneConfig] = None
    compression: str = "zstd"
    # Parquet shards hold at least this many episodes (the last one may hold fewer).
    episodes_per_shard: int = pydantic.Field(8, ge=1)
    # Which text a task is conditioned on. "benchmark": the LIBERO benchmark's `task.language` for every
    # file that maps to a benchmark task (clad.libero.suites.benchmark_task_for), the file's own text only
    # for tasks outside the benchmark; evaluation conditions on the same string. "file": the demo file's
    # problem_info text (the BDDL wording), as datasets made before this field existed did.
    instruction_source: Literal["benchmark", "file"] = "benchmark"

    @pydantic.field_validator("views")
    @classmethod
    def _known_views(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one camera view is needed")
        unknown = [x for x in v if x not in CAMERA_TO_OBS_KEY]
        if unknown:
            raise ValueError(f"unknown views {unknown}; choose from {sorted(CAMERA_TO_OBS_KEY)}")
        if len(set(v)) != len(v):
            raise ValueError(f"views repeat: {list(v)}")
        return v

    @pydantic.field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, v):
        # `image_size: 128` means 128x128
        v = (v, v) if isinstance(v, int) else v
        if v is not None and (len(v) != 2 or min(int(x) for x in v) < 1):
            raise ValueError(f"image_size must be N or [H, W] with positive sizes, got {v!r}")
        return v

    @property
    def image_keys(self) -> tuple[str, ...]:
        """obs keys of the configured views, in config order (= the V axis of rgb_* in a batch)."""
        return tuple(CAMERA_TO_OBS_KEY[v] for v in self.views)

    @property
    def lowdim_keys(self) -> tuple[str, ...]:
        return tuple(LOWDIM_KEYS)
