"""A bad checkpoint fails `clad eval` on the driver with its reason, before any env actor starts."""

import pytest

from clad.errors import CheckpointError
from clad.eval.config import EvalConfig
from clad.eval.policy import PolicySpec


def test_missing_checkpoint_is_reported_before_the_pool_starts(tmp_path):
    from pipelines.evaluate import run_evaluation

    cfg = EvalConfig(suite="libero_object", tasks=("0",), episodes_per_task=1,
                     policy=PolicySpec(kind="clad", checkpoint=str(tmp_path / "nope")))
    with pytest.raises(CheckpointError, match="config.json is missing"):
        run_evaluation(cfg, tmp_path / "out", use_mlflow=False, progress=False)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        run_evaluation(cfg.replace(policy=PolicySpec(kind="clad", checkpoint=str(tmp_path / "half"))),
                       tmp_path / "out2", use_mlflow=False, progress=False)
