"""Checkpoints: safetensors + JSON round trip, config and shape mismatches fail naming the field."""

from __future__ import annotations

import json

import pytest
import torch

from clad.errors import CheckpointError
from clad.model import CladModel, model_preset
from clad.model.checkpoint import load_checkpoint, save_checkpoint
from clad.model.testing import fake_batch, fake_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_model() -> CladModel:
    cfg = model_preset("tiny")
    torch.manual_seed(0)
    model = CladModel(cfg, fake_stats(cfg))
    opt = torch.optim.AdamW(model.stage1_parameters(), lr=1e-2)
    loss, _ = model.stage1_loss(fake_batch(cfg, 2))
    loss.backward()
    opt.step()
    model.update_ema()
    model.freeze_stage1()
    return model


def test_stage2_round_trip_gives_identical_outputs(tmp_path):
    model = trained_model().eval()
    batch = fake_batch(model.cfg, 2, seed=5)
    save_checkpoint(model, tmp_path / "stage2", "stage2")
    assert {p.name for p in (tmp_path / "stage2").iterdir()} == {"model.safetensors", "config.json", "stats.json"}
    assert json.loads((tmp_path / "stage2" / "stats.json").read_text()) == model.normalizer.stats()
    loaded = load_checkpoint(tmp_path / "stage2").eval()
    assert loaded.cfg == model.cfg and loaded.stage1_frozen
    for a, b in zip(model.foresight(batch), loaded.foresight(batch)):
        assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(model.predict_actions(batch, g1), loaded.predict_actions(batch, g2))
    torch.manual_seed(1)
    l1, _ = model.stage1_loss(batch)
    torch.manual_seed(1)
    l2, _ = loaded.stage1_loss(batch)
    assert torch.equal(l1, l2)  # EMA targets and normaliser restored too


def test_stage1_checkpoint_loads_into_a_stage2_model_with_other_policy(tmp_path):
    model = trained_model()
    save_checkpoint(model, tmp_path / "s1", "stage1")
    cfg = model.cfg.replace(policy=model.cfg.policy.replace(down_dims=(8, 16)))  # policy may differ
    fresh = CladModel(cfg)
    load_checkpoint(tmp_path / "s1", model=fresh)
    assert torch.equal(fresh.dynamics.g_p[0].weight, model.dynamics.g_p[0].weight)
    assert torch.equal(fresh.normalizer.fields["proprio"].scale, model.normalizer.fields["proprio"].scale)


def test_own_policy_cnn_goes_from_a_stage1_checkpoint_to_a_stage2_round_trip(tmp_path):
    model = trained_model()
    save_checkpoint(model, tmp_path / "s1", "stage1")
    cfg = model.cfg.replace(policy=model.cfg.policy.replace(obs_vision="own"))
    fresh = CladModel(cfg)
    load_checkpoint(tmp_path / "s1", model=fresh)  # the stage-1 checkpoint has no policy.vision: fine
    fresh.init_policy_vision()
    assert torch.equal(fresh.policy.vision.nets[0].trunk[0].weight, model.vision.nets[0].trunk[0].weight)
    with torch.no_grad():
        fresh.policy.vision.nets[0].trunk[0].weight.mul_(1.5)  # as if stage 2 had trained it
    save_checkpoint(fresh, tmp_path / "s2", "stage2")
    loaded = load_checkpoint(tmp_path / "s2").eval()
    assert torch.equal(loaded.policy.vision.nets[0].trunk[0].weight, fresh.policy.vision.nets[0].trunk[0].weight)
    batch = fake_batch(cfg, 2, seed=3)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    # equal weights (above); the outputs agree to float rounding (weights loaded from disk vs copied in memory)
    torch.testing.assert_close(fresh.eval().predict_actions(batch, g1), loaded.predict_actions(batch, g2),
                               atol=1e-5, rtol=0)


def test_runtime_fields_may_differ(tmp_path):
    model = trained_model()
    save_checkpoint(model, tmp_path, "stage2")
    cfg = model.cfg.replace(policy=model.cfg.policy.replace(num_inference_steps=2, temporal_ensemble=True))
    assert load_checkpoint(tmp_path, cfg).cfg.policy.num_inference_steps == 2


def test_mismatched_config_names_the_field(tmp_path):
    model = trained_model()
    save_checkpoint(model, tmp_path, "stage2")
    cfg = model.cfg.replace(dynamics=model.cfg.dynamics.replace(hidden_dim=64))
    with pytest.raises(CheckpointError, match=r"dynamics\.hidden_dim.*32.*64"):
        load_checkpoint(tmp_path, cfg)
    cfg = model.cfg.replace(policy=model.cfg.policy.replace(foresight="semantic"))
    with pytest.raises(CheckpointError, match=r"policy\.foresight"):
        load_checkpoint(tmp_path, cfg)


def test_shape_mismatch_names_the_parameter(tmp_path):
    model = trained_model()
    save_checkpoint(model, tmp_path, "stage2")
    # bypass the config check by editing config.json: the weights no longer fit
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["policy"]["down_dims"] = [8, 16]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*policy\.unet"):
        load_checkpoint(tmp_path)


def test_missing_or_foreign_files_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path)
    model = trained_model()
    save_checkpoint(model, tmp_path, "stage2")
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(tmp_path)
