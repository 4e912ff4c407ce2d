"""Frozen pretrained backbones loaded from local safetensors + config.json directories the tests write."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import save_file

from clad.errors import CheckpointError, ConfigError
from clad.model import CladModel, model_preset
from clad.model.clip_rn50 import ModifiedResNet
from clad.model.testing import fake_batch, fake_stats
from clad.model.vision import VisionEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


RN_META = {"layers": [1, 1, 1, 1], "width": 8, "heads": 2, "output_dim": 12, "image_size": 64}


@pytest.fixture
def rn50_dir(tmp_path):
    """A randomly initialised, tiny CLIP-ResNet saved like a converted DecisionNCE checkpoint."""
    torch.manual_seed(0)
    net = ModifiedResNet(RN_META["layers"], RN_META["output_dim"], RN_META["heads"], RN_META["image_size"], RN_META["width"])
    for m in net.modules():  # non-trivial BatchNorm statistics must survive loading
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    state = {f"model.visual.{k}": v.contiguous() for k, v in net.state_dict().items()}
    state["model.transformer.dummy"] = torch.zeros(3)  # text-tower keys are ignored
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(RN_META))
    return tmp_path, net


def pretrained_cfg(backbone: str, directory, feature_dim: int):
    cfg = model_preset("tiny")
    return cfg.replace(vision=cfg.vision.replace(backbone=backbone, checkpoint_dir=str(directory), feature_dim=feature_dim))


def test_decisionnce_rn50_loads_and_is_frozen(rn50_dir):
    directory, reference = rn50_dir
    cfg = pretrained_cfg("decisionnce_rn50", directory, 12)
    model = CladModel(cfg, fake_stats(cfg))
    enc = model.vision
    assert not enc.trainable and all(not p.requires_grad for p in enc.parameters())
    sd = enc.backbone.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in reference.state_dict().items())
    batch = fake_batch(cfg, 2, image_hw=(40, 40))
    model.train()
    assert not enc.backbone.training  # BatchNorm stays in eval
    v = enc(batch["rgb_curr"])
    assert v.shape == (2, 12) and not v.requires_grad
    loss, metrics = model.stage1_loss(batch)
    loss.backward()
    assert model.target_vision is None  # a frozen backbone needs no EMA copy
    assert model.dynamics.h_s[-1].out_features == cfg.visual_dim  # L_recon targets the frozen feature
    assert all(p.grad is None for p in enc.parameters())


def test_precomputed_features_skip_the_backbone(rn50_dir, monkeypatch):
    directory, _ = rn50_dir
    cfg = pretrained_cfg("decisionnce_rn50", directory, 12)
    model = CladModel(cfg, fake_stats(cfg))
    batch = fake_batch(cfg, 2, features=True)
    monkeypatch.setattr(model.vision, "forward", lambda *a, **k: pytest.fail("backbone ran"))
    loss, _ = model.stage1_loss(batch)
    assert torch.isfinite(loss)


def test_features_only_mode_without_checkpoint():
    cfg = model_preset("tiny")
    cfg = cfg.replace(vision=cfg.vision.replace(backbone="decisionnce_rn50", feature_dim=12))
    model = CladModel(cfg, fake_stats(cfg))
    assert model.vision is None
    loss, _ = model.stage1_loss(fake_batch(cfg, 2, features=True))
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match=r"vision\.checkpoint_dir.*feat_prev|feat_prev"):
        model.stage1_loss(fake_batch(cfg, 2))


def test_pretrained_errors_name_the_field(rn50_dir, tmp_path):
    directory, _ = rn50_dir
    with pytest.raises(ConfigError, match=r"vision\.feature_dim=99.*vision\.feature_dim=12"):
        VisionEncoder(pretrained_cfg("decisionnce_rn50", directory, 99).vision)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        VisionEncoder(pretrained_cfg("decisionnce_rn50", tmp_path / "nowhere", 12).vision)


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed")
def test_open_clip_absent_gives_a_clear_error(rn50_dir):
    directory, _ = rn50_dir
    with pytest.raises(ConfigError, match=r"vision\.backbone='open_clip'.*pip install open_clip_torch"):
        VisionEncoder(pretrained_cfg("open_clip", directory, 12).vision)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_hf_clip_loads_from_a_local_directory(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    hf_cfg = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=10,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(hf_cfg).save_pretrained(str(tmp_path), safe_serialization=True)
    cfg = pretrained_cfg("hf_clip", tmp_path, 10)
    model = CladModel(cfg, fake_stats(cfg))
    v = model.vision(fake_batch(cfg, 2)["rgb_curr"])
    assert v.shape == (2, 10) and torch.isfinite(v).all()
    assert all(not p.requires_grad for p in model.vision.parameters())


def test_preprocessing_features_match_the_online_backbone(rn50_dir):
    from clad.data.features import compute_features, load_backbone
    from clad.data.preprocess_config import FeatureBackboneConfig

    directory, _ = rn50_dir
    extractor = load_backbone(FeatureBackboneConfig(kind="decisionnce_rn50", checkpoint_dir=str(directory)))
    assert extractor.feature_dim == 12
    cfg = pretrained_cfg("decisionnce_rn50", directory, 12)
    enc = VisionEncoder(cfg.vision)
    rgb = torch.randint(0, 256, (3, 1, 3, 40, 40), dtype=torch.uint8)
    offline = compute_features(extractor, rgb[:, 0].permute(0, 2, 3, 1).numpy(), batch_size=2)
    assert torch.allclose(torch.from_numpy(offline), enc(rgb), atol=1e-5)
    with pytest.raises(ConfigError, match="feature_dim"):
        load_backbone(FeatureBackboneConfig(kind="decisionnce_rn50", checkpoint_dir=str(directory), options={"feature_dim": 3}))
