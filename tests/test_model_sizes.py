"""Presets and parameter budgets (counted only: no forward at paper size)."""

from __future__ import annotations

import pytest
import torch

from clad.errors import ConfigError
from clad.model import CladModel, ModelConfig, model_preset, parameter_breakdown
from clad.model.sizes import format_breakdown


def test_paper_preset_matches_the_paper_budget(capsys):
    cfg = model_preset("paper")
    assert (cfg.dynamics.hidden_dim, cfg.dynamics.num_tokens, cfg.dynamics.tau) == (1024, 4, 6)
    assert (cfg.dynamics.mask_ratio, cfg.dynamics.ema_decay, cfg.dynamics.lambda_recon) == (0.3, 0.995, 0.1)
    with torch.device("meta"):  # count without allocating; features-only mode needs no DecisionNCE checkpoint
        counts = parameter_breakdown(CladModel(cfg))
    print(format_breakdown(counts))
    assert abs(counts["dynamics_total"] - 0.33e9) < 0.033e9, counts["dynamics_total"]
    assert abs(counts["policy_total"] - 0.23e9) < 0.023e9, counts["policy_total"]


def test_presets_validate_and_reject_typos():
    for name in ("tiny", "cpu", "paper"):
        cfg = model_preset(name)
        assert ModelConfig.model_validate(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model preset"):
        model_preset("huge")
    from clad.config import config_from_dict

    with pytest.raises(ConfigError, match="hiden_dim"):
        config_from_dict(ModelConfig, {"dynamics": {"hiden_dim": 3}})
    with pytest.raises(ConfigError, match="execution_horizon"):
        config_from_dict(ModelConfig, {"policy": {"chunk_length": 4, "execution_horizon": 5}})
    with pytest.raises(ConfigError, match="proprio_keys"):
        config_from_dict(ModelConfig, {"proprio_keys": ["joint_velocities"]})
