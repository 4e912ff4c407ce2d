"""Issue 15, defects 2-5 and the matched-vision control, on the tiny preset (no Ray, no simulator)."""

from __future__ import annotations

import json

import pytest
import torch

from clad.model import CladModel, model_preset
from clad.model.testing import fake_batch, fake_stats, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(crop_ratio: float = 0.75, **changes) -> CladModel:
    return tiny_model(vision={"crop_ratio": crop_ratio}, **changes)


def still_batch(cfg, b=4, seed=0):
    """Every frame of a sample is the same image: features differ only if the crops differ."""
    batch = fake_batch(cfg, b, seed=seed)
    batch["rgb_prev"] = batch["rgb_next"] = batch["rgb_curr"]
    return batch


class _Spy:
    """Records the crop offsets each VisionEncoder call got."""

    def __init__(self, monkeypatch, encoder, name, calls):
        forward = encoder.forward

        def spy(rgb, share=1, offsets=None):
            calls.append((name, None if offsets is None else offsets.clone()))
            return forward(rgb, share=share, offsets=offsets)

        monkeypatch.setattr(encoder, "forward", spy)


# ------------------------------------------------------------------ defect 3: one crop per stage-1 sample
def test_stage1_target_frame_gets_the_online_frames_crop(monkeypatch):
    model = tiny()
    model.train()
    seen = {}
    loss = model.dynamics.loss

    def capture(inputs, p_next, v_next, recon):
        seen.update(v_curr=inputs["v_curr"].detach(), v_prev=inputs["v_prev"].detach(), v_next=v_next)
        return loss(inputs, p_next, v_next, recon)

    monkeypatch.setattr(model.dynamics, "loss", capture)
    model.stage1_loss(still_batch(model.cfg))
    # the EMA CNN is still an exact copy of the online CNN, and the three frames are one image:
    # equal features <=> equal crops (before the fix the target frame got the centre crop)
    assert torch.allclose(seen["v_prev"], seen["v_curr"], atol=1e-6)
    assert torch.allclose(seen["v_next"], seen["v_curr"], atol=1e-5)
    centre = model.visual_features(still_batch(model.cfg), ("curr",), offsets=model.crop_offsets(
        still_batch(model.cfg), random=False))[0]
    assert not torch.allclose(centre, seen["v_curr"], atol=1e-4)  # and the crop was a random one


# ------------------------------------------------------------------ defect 2: symmetric stage-2 augmentation
@pytest.mark.parametrize("policy", [{"foresight": "both"}, {"foresight": "none"},
                                    {"foresight": "both", "obs_vision": "own"}])
def test_stage2_augmentation_is_the_same_for_every_variant(policy, monkeypatch):
    for augment in ("none", "random_crop"):
        model = tiny(policy={**policy, "augment": augment})
        if model.has_stage1:
            model.freeze_stage1()
        model.init_policy_vision()
        model.train()
        calls = []
        _Spy(monkeypatch, model.vision, "stage1_cnn", calls)
        if model.policy.vision is not None:
            _Spy(monkeypatch, model.policy.vision, "own_cnn", calls)
        batch = still_batch(model.cfg, b=16)
        with torch.no_grad():
            a, b = model.policy_condition(batch), model.policy_condition(batch)
        offsets = [o for _, o in calls]
        assert all(o is not None for o in offsets)
        if augment == "none":  # centre crop everywhere, in training too (policy-only used to get random crops)
            centre = model.crop_offsets(batch, random=False)
            assert all(torch.equal(o, centre) for o in offsets) and torch.equal(a, b)
        else:  # random crops for every variant (CLaD's frozen CNN used to see only the centre crop)
            assert not torch.equal(a, b)
            assert not torch.equal(offsets[0], model.crop_offsets(batch, random=False))
        # one call of policy_condition -> every network got the same crop
        per_call = len(offsets) // 2
        assert all(torch.equal(o, offsets[0]) for o in offsets[:per_call])
        model.eval()  # evaluation: centre crop, deterministic
        with torch.no_grad():
            assert torch.equal(model.policy_condition(batch), model.policy_condition(batch))


# ------------------------------------------------------------------ defect 4: the past-action shortcut
def test_chunk_masking_hides_whole_past_chunks_only_in_training():
    from clad.model.tokenizers import ActionTokenizer

    torch.manual_seed(0)
    tok = ActionTokenizer(7, 6, 16)
    actions, valid = torch.zeros(20000, 6, 7), torch.ones(20000, 6, dtype=torch.bool)
    _, token_only = tok(actions, valid, 0.3)
    assert token_only.all(-1).float().mean() < 0.002  # 0.3 ** 6 = 0.07 %: the paper's masking hardly ever hides all
    _, both = tok(actions, valid, 0.3, chunk_mask_prob=0.5)
    assert abs(both.all(-1).float().mean().item() - (0.5 + 0.5 * 0.3**6)) < 0.015
    model = tiny(dynamics={"chunk_mask_prob": 1.0, "mask_ratio": 0.0})
    model.train()
    _, metrics = model.stage1_loss(fake_batch(model.cfg, 8))
    assert metrics["chunk_masked_rate"] == 1.0
    model.eval()
    _, metrics = model.stage1_loss(fake_batch(model.cfg, 8))
    assert metrics["mask_rate"] < 1.0 and metrics["chunk_masked_rate"] == 0.0  # evaluation reads the past


# ------------------------------------------------------------------ defect 5: baselines in validation
def test_validation_reports_the_cosine_baselines_and_the_past_masked_action_error():
    from clad.training.objectives import validate_stage1, validate_stage2

    model = tiny()
    batches = [fake_batch(model.cfg, 6, seed=s) for s in range(2)]
    m1 = validate_stage1(model, batches)
    for key in ("val/cos_still_p", "val/cos_still_s", "val/target_cos_pairwise_p", "val/target_cos_pairwise_s"):
        assert -1.0 <= m1[key] <= 1.0, key
    # a sample whose future equals its present has a still-cosine of exactly 1
    frozen = {**fake_batch(model.cfg, 6)}
    frozen["rgb_next"], frozen["proprio_next"] = frozen["rgb_curr"], frozen["proprio_curr"]
    assert validate_stage1(model, [frozen])["val/cos_still_p"] == pytest.approx(1.0, abs=1e-5)

    model.freeze_stage1()
    m2 = validate_stage2(model, batches)
    assert {"val/action_mse_past_masked", "val/action_l1_past_masked"} <= set(m2)
    assert m2["val/action_mse_past_masked"] != m2["val/action_mse"]  # CLaD's foresight reads the past actions
    blind = tiny(policy={"foresight": "none"})  # policy only never reads them: both numbers agree
    m3 = validate_stage2(blind, batches)
    assert m3["val/action_mse_past_masked"] == pytest.approx(m3["val/action_mse"])


# ------------------------------------------------------------------ the matched-vision control
CONTROL = {"foresight": "none", "obs_vision": "frozen_stage1"}


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory):
    """A stage-1 checkpoint whose CNN differs from a fresh initialisation."""
    from clad.model.checkpoint import save_checkpoint

    model = tiny()
    with torch.no_grad():
        for p in model.vision.parameters():
            p.add_(0.01)
    return save_checkpoint(model, tmp_path_factory.mktemp("s1") / "stage1", "stage1"), model


def _control_session(tmp_path, stage1, **extra):
    from clad.training.config import TrainConfig
    from clad.training.session import TrainingSession

    cfg = model_preset("tiny")
    cfg = cfg.replace(vision=cfg.vision.replace(crop_ratio=0.75), policy=cfg.policy.replace(**CONTROL))
    tc = TrainConfig(stage="stage2", dataset_dir=str(tmp_path), model=cfg, stage1_checkpoint=str(stage1),
                     batch_size=4, steps=3, **extra)
    return TrainingSession(tc, fake_stats(cfg))


def test_matched_control_reads_the_frozen_stage1_cnn_and_trains_only_the_policy(tmp_path, stage1_dir):
    from clad.model.checkpoint import load_checkpoint

    directory, trained = stage1_dir
    session = _control_session(tmp_path, directory)
    model = session.model
    assert model.dynamics is None and model.target_vision is None  # no foresight at all
    s1 = {k: v.clone() for k, v in trained.vision.state_dict().items()}
    assert all(torch.equal(model.vision.state_dict()[k], v) for k, v in s1.items())  # CLaD's frozen encoder
    trainable = {id(p) for p in session.params}
    assert not trainable & {id(p) for p in model.vision.parameters()}
    assert trainable == {id(p) for p in model.policy.parameters()}
    assert model.policy.vision is None and model.policy.film_p is None  # same e_p/e_s, U-Net; no FiLM on foresight
    for step in range(3):
        metrics = session.train_step(fake_batch(model.cfg, 4, seed=step))
        assert metrics["loss"] == metrics["loss"]
    assert all(torch.equal(model.vision.state_dict()[k], v) for k, v in s1.items())  # still frozen
    assert not model.vision.training
    out = session.export_model(tmp_path / "stage2")
    back = load_checkpoint(out)
    assert back.stage1_frozen and all(not p.requires_grad for p in back.vision.parameters())


def test_matched_control_config_errors_name_the_field(tmp_path, stage1_dir):
    from clad.errors import CheckpointError
    from clad.model.config import ModelConfig, VisionConfig
    from clad.training.config import TrainConfig

    cfg = model_preset("tiny")
    with pytest.raises(ValueError, match="stage1_checkpoint"):
        TrainConfig(stage="stage2", dataset_dir=".", model=cfg.replace(policy=cfg.policy.replace(**CONTROL)))
    with pytest.raises(ValueError, match="obs_vision='frozen_stage1'.*frozen pretrained"):
        ModelConfig(vision=VisionConfig(backbone="decisionnce_rn50", feature_dim=1024),
                    policy=cfg.policy.replace(**CONTROL))
    other = tmp_path / "other"  # a stage-1 checkpoint with another CNN cannot be the control's encoder
    directory, _ = stage1_dir
    other.mkdir()
    for f in directory.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    saved = json.loads((other / "config.json").read_text())
    saved["vision"]["cnn_keypoints"] = 4
    (other / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="vision.cnn_keypoints"):
        _control_session(tmp_path, other)


# ------------------------------------------------------------------ the shipped experiment config
def test_fair_test_config_variants_share_data_seeds_and_budgets():
    from pathlib import Path

    from pipelines.pipeline import load_pipeline_config

    demos = ["input_dir=/demos"]
    variants = {
        "clad": [],
        "policy_only": [*demos, "train.model.policy.foresight=none"],
        "action_free": [*demos, "train.model.dynamics.mask_ratio=1.0"],
    }
    stage2 = {}
    for name, overrides in variants.items():
        cfg = load_pipeline_config("fair_test", overrides)
        s2 = cfg.stage_config("stage2", Path("/dataset"), Path("/runs"))
        assert (s2.steps, s2.batch_size, s2.seed) == (3000, 64, 0)
        assert cfg.preprocess.instruction_source == "benchmark" and s2.model.policy.augment == "none"
        assert cfg.eval_config(Path("/m")).tasks == ("0", "1", "2", "3", "4", "5")
        stage2[name] = s2.to_dict()
    # the control is CLaD's stage-2 config with two fields changed, on CLaD's stage 1
    from clad.model.config import ModelConfig

    clad = ModelConfig.model_validate(stage2["clad"]["model"])
    control = clad.replace(policy=clad.policy.replace(foresight="none", obs_vision="frozen_stage1"))
    assert control.needs_stage1_checkpoint and control.stage1_vision_frozen and not control.has_dynamics

    def without(d, *paths):
        d = json.loads(json.dumps(d))
        for p in paths:
            *head, last = p.split(".")
            node = d
            for h in head:
                node = node[h]
            node.pop(last)
        return d

    skip = ("run_name", "stage1_checkpoint")
    assert without(stage2["policy_only"], *skip, "model.policy.foresight") == \
        without(stage2["clad"], *skip, "model.policy.foresight")
    assert without(stage2["action_free"], *skip, "model.dynamics.mask_ratio") == \
        without(stage2["clad"], *skip, "model.dynamics.mask_ratio")
