"""A bad checkpoint fails `clad eval` on the driver with its reason, before any env actor starts."""

import pytest

from clad.errors import CheckpointError
from clad.eval.config import EvalConfig
from clad.eval.policy import PolicySpec


def test_missing_checkpoint_is_reported_before_the_pool_starts(tmp_path):
    from pipelines.evaluate import run_evaluation

    cfg = EvalConfig(suite="libero_object", tasks=("0",), episodes_per_task=1,
                     policy=PolicySpec(kind="clad", checkpoint=str(tmp_path / "nope")))
    with pytest.raises(CheckpointError, match="--checkpoint .*nope does not exist"):
        run_evaluation(cfg, tmp_path / "out", use_mlflow=False, progress=False)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        run_evaluation(cfg.replace(policy=PolicySpec(kind="clad", checkpoint=str(tmp_path / "half"))),
                       tmp_path / "out2", use_mlflow=False, progress=False)


def test_bad_runtime_value_is_reported_before_the_pool_starts(tmp_path):
    import torch

    from clad.errors import ConfigError
    from clad.model.checkpoint import save_checkpoint
    from clad.model.model import CladModel
    from clad.model.sizes import model_preset
    from clad.model.testing import fake_stats
    from pipelines.evaluate import run_evaluation

    torch.manual_seed(0)
    model_cfg = model_preset("tiny")
    ckpt = save_checkpoint(CladModel(model_cfg, fake_stats(model_cfg)), tmp_path / "stage2", "stage2")
    too_long = model_cfg.policy.chunk_length + 1
    cfg = EvalConfig(suite="libero_object", tasks=("0",), episodes_per_task=1,
                     policy=PolicySpec(kind="clad", checkpoint=str(ckpt),
                                       runtime=(f"policy.execution_horizon={too_long}",)))
    with pytest.raises(ConfigError, match=r"config.json with --runtime.*execution_horizon"):
        run_evaluation(cfg, tmp_path / "out", use_mlflow=False, progress=False)
    assert not (tmp_path / "out").exists()  # nothing was started or written
