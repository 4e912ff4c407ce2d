"""Cached features of a frozen encoder: extraction (Ray Data), idempotence/resume/refusal, training from
features (same losses as from images), in-memory windows (same windows as the streaming cutter), the
live-frame encoder (same features as the cache) and the DecisionNCE converter.

The dataset is preprocessed by the real pipeline from small layout-exact LIBERO files; the stage-1
"checkpoint" is a real clad checkpoint of a tiny model with random weights (the tests are about the data
path, not about what the encoder learned).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from libero_files import write_demo_file

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def dataset(ray_session, tmp_path_factory):
    from clad.data.preprocess_config import PreprocessConfig
    from pipelines.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("feat_data")
    for i in range(2):
        write_demo_file(root / "raw", f"task_{i}", lengths=(24, 32, 20), image_size=32, seed=i)
    run_preprocess(root / "raw", root / "ds", PreprocessConfig(val_fraction=0.34))
    return root / "ds"


def _tiny_cfg(crop_ratio: float = 0.75, cameras=("agentview", "eye_in_hand")):
    from clad.model.sizes import model_preset

    cfg = model_preset("tiny")
    return cfg.replace(vision=cfg.vision.replace(crop_ratio=crop_ratio, cameras=cameras))


def _stage1_checkpoint(folder: Path, seed: int, dataset: Path) -> Path:
    from clad.model.checkpoint import save_checkpoint
    from clad.model.model import CladModel
    from clad.training.session import model_stats

    cfg = _tiny_cfg()
    torch.manual_seed(seed)
    model = CladModel(cfg, model_stats(dataset, cfg.proprio_keys))
    return save_checkpoint(model, folder, "stage1")


@pytest.fixture(scope="module")
def stage1(dataset, tmp_path_factory):
    return _stage1_checkpoint(tmp_path_factory.mktemp("s1") / "final", 0, dataset)


@pytest.fixture(scope="module")
def extracted(dataset, stage1):
    from clad.model.frozen_encoder import EncoderSpec
    from pipelines.features import extract_features

    spec = EncoderSpec(source="stage1", checkpoint=str(stage1))
    first = extract_features(dataset, spec)
    return {"spec": spec, "first": first, "root": Path(first["root"])}


def _spec(stage1):
    from clad.data.windows import WindowSpec

    cfg = _tiny_cfg()
    return WindowSpec(tau=cfg.dynamics.tau, chunk=cfg.policy.chunk_length, views=cfg.vision.cameras,
                      proprio_keys=cfg.proprio_keys)


# ----------------------------------------------------------------------------------------------------------
# extraction


def test_extraction_writes_fp16_features_equal_to_the_encoder(dataset, extracted):
    from clad.data import feature_set as fs
    from clad.data.store import iter_episodes, split_files
    from clad.model.frozen_encoder import FrozenEncoder
    from pipelines.features import encode_episode

    meta = fs.read_feature_manifest(extracted["root"])
    assert meta["complete"] and meta["dataset_fingerprint"] == fs.dataset_fingerprint(dataset)
    assert meta["encoder"]["centre_crop"] == 0.75 and meta["encoder"]["dtype"] == "float16"
    assert extracted["first"]["encoded"] == sum(meta["counts"].values()) == 6
    enc = FrozenEncoder.build(extracted["spec"], device="cpu")
    keys = ["agentview_rgb", "eye_in_hand_rgb"]
    ep = next(iter_episodes(dataset, "train"))
    unit = fs.unit_name(split_files(dataset, "train")[0], 0)
    got = fs.load_shard(extracted["root"], "train", unit, ep["episode_id"], ep["length"], tuple(keys))
    want = encode_episode(enc, ep, keys)
    for k in keys:
        assert got[k].dtype == np.float16 and got[k].shape == (ep["length"], 16)
        np.testing.assert_allclose(got[k].astype(np.float32), want[k], rtol=2e-3, atol=2e-3)


def test_extraction_is_idempotent_and_resumes(dataset, extracted):
    from clad.data import feature_set as fs
    from pipelines.features import extract_features

    root = extracted["root"]
    again = extract_features(dataset, extracted["spec"])
    assert again["encoded"] == 0 and again["skipped"] == 6 and again["root"] == str(root)
    # an interruption: one shard never written, the manifest not yet marked complete
    victim = sorted((root / "val").glob("*.npz"))[0]
    before = dict(np.load(victim))
    victim.unlink()
    meta = json.loads((root / fs.MANIFEST).read_text())
    meta["complete"] = False
    (root / fs.MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(fs.FeatureSetError, match="incomplete"):
        fs.open_for_reading(root, dataset)
    resumed = extract_features(dataset, extracted["spec"])
    assert resumed["encoded"] == 1 and resumed["skipped"] == 5
    after = dict(np.load(victim))
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert fs.read_feature_manifest(root)["complete"]


def test_a_feature_set_of_another_encoder_or_dataset_is_refused(dataset, extracted, tmp_path):
    from clad.data import feature_set as fs
    from clad.errors import ConfigError
    from clad.model.frozen_encoder import EncoderSpec
    from clad.training.config import load_train_config
    from pipelines.features import prepare
    from pipelines.train import check_training_inputs, data_sources

    root = extracted["root"]
    other = _stage1_checkpoint(tmp_path / "other", 1, dataset)  # same architecture, other weights
    cfg = load_train_config(None, [f"dataset_dir={dataset}", f"output_dir={tmp_path}", "stage=stage2",
                                   f"stage1_checkpoint={other}", f"loader.feature_set={root}"],
                            base={"model": _tiny_cfg().to_dict()})
    with pytest.raises(fs.FeatureSetError, match="another encoder.*weights_sha256"):
        data_sources(cfg)
    with pytest.raises(fs.FeatureSetError, match="another encoder.*weights_sha256"):
        check_training_inputs(cfg)  # `clad train` refuses it before starting Ray
    # writing another encoder's features into this folder is refused before any work
    with pytest.raises(fs.FeatureSetError, match="another encoder"):
        prepare(dataset, EncoderSpec(source="stage1", checkpoint=str(other)), out=root)
    # the same dataset preprocessed again (another fingerprint): refused, naming the dataset
    copy = tmp_path / "ds2"
    shutil.copytree(dataset, copy, ignore=shutil.ignore_patterns("features"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(fs.FeatureSetError, match="another dataset: fingerprint"):
        fs.open_for_reading(root, copy)
    # stage 1 trains the CNN: its features cannot be cached
    s1 = cfg.replace(stage="stage1", stage1_checkpoint=None)
    with pytest.raises(ConfigError, match="stage 1 trains the CNN"):
        data_sources(s1)


# ----------------------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize("use_cache", [False, True])
def test_in_memory_windows_equal_the_streaming_cutter(dataset, extracted, stage1, use_cache):
    from clad.data import feature_set as fs
    from clad.data.episode_table import feature_column
    from clad.data.memory_windows import InMemoryWindows, _units
    from clad.data.store import iter_episodes, load_language
    from clad.data.windows import WindowSpec, window_batch

    base = _spec(stage1)
    spec = WindowSpec(**{**base.__dict__, "use_features": use_cache})
    wins = InMemoryWindows.load(dataset, "train", spec, extracted["root"] if use_cache else None)
    lang = load_language(dataset)
    eps = list(iter_episodes(dataset, "train"))
    assert len(wins) == sum(ep["length"] for ep in eps)
    offset = 0
    for i, ep in enumerate(eps):
        if use_cache:
            got = fs.load_shard(extracted["root"], "train", fs.unit_name(*_units(dataset, "train")[i]),
                                ep["episode_id"], ep["length"], spec.image_keys)
            ep = {**ep, **{feature_column(k): got[k].astype(np.float32) for k in spec.image_keys}}
        steps = np.arange(ep["length"])
        want = window_batch(ep, spec, lang[ep["task_index"]], steps)
        have = wins.gather(offset + steps)
        if use_cache:
            assert not any(k.startswith("rgb_") for k in have)
            want = {k: v for k, v in want.items() if not k.startswith("rgb_")}
        assert sorted(have) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(have[k], want[k], err_msg=k)
        offset += ep["length"]
    # ranks share one permutation and get disjoint equal halves
    a = next(wins.batches(8, seed=3, shard=(0, 2)))["task_index"]
    b = next(wins.batches(8, seed=3, shard=(1, 2)))["task_index"]
    assert a.shape == b.shape == (8,)


# ----------------------------------------------------------------------------------------------------------
# training and evaluation from the same encoder


def _stage2_model(stage1, dataset):
    from clad.model.checkpoint import load_checkpoint
    from clad.model.model import CladModel
    from clad.training.session import model_stats

    cfg = _tiny_cfg()
    model = CladModel(cfg, model_stats(dataset, cfg.proprio_keys))
    load_checkpoint(stage1, model=model)
    model.freeze_stage1()
    return model.train()


def test_stage2_losses_from_features_equal_those_from_images(dataset, extracted, stage1):
    from clad.data.memory_windows import InMemoryWindows
    from clad.data.windows import WindowSpec

    base = _spec(stage1)
    img = InMemoryWindows.load(dataset, "train", base)
    feat = InMemoryWindows.load(dataset, "train", WindowSpec(**{**base.__dict__, "use_features": True}),
                                extracted["root"])
    idx = np.arange(0, len(img), 3)
    to_t = lambda d: {k: torch.from_numpy(v) for k, v in d.items()}  # noqa: E731
    b_img, b_feat = to_t(img.gather(idx)), to_t(feat.gather(idx))
    model = _stage2_model(stage1, dataset)
    assert model.vision_frozen
    losses = []
    for b in (b_img, b_feat):
        torch.manual_seed(7)  # the same diffusion noise and timesteps for both
        loss, _ = model.stage2_loss(b)
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-3, abs=1e-4)
    # the policy's condition (foresight + observation) agrees feature by feature
    with torch.no_grad():
        c_img, c_feat = model.policy_condition(b_img), model.policy_condition(b_feat)
    torch.testing.assert_close(c_img, c_feat, rtol=1e-2, atol=1e-2)


def test_the_agent_encodes_live_frames_as_the_cache_holds_them(dataset, extracted, stage1):
    """A stage-2 checkpoint evaluated from raw frames: the agent's vision (model.visual_features on rgb) gives
    the cached features for the same stored frames."""
    from clad.data import feature_set as fs
    from clad.data.store import iter_episodes, split_files

    model = _stage2_model(stage1, dataset).eval()
    ep = next(iter_episodes(dataset, "val"))
    keys = ("agentview_rgb", "eye_in_hand_rgb")
    cached = fs.load_shard(extracted["root"], "val", fs.unit_name(split_files(dataset, "val")[0], 0),
                           ep["episode_id"], ep["length"], keys)
    rgb = torch.from_numpy(np.stack([ep[k] for k in keys], axis=1).transpose(0, 1, 4, 2, 3).copy())
    (live,) = model.visual_features({"rgb_curr": rgb}, ("curr",))
    want = np.concatenate([cached[k].astype(np.float32) for k in keys], axis=1)
    np.testing.assert_allclose(live.numpy(), want, rtol=2e-3, atol=2e-3)


def test_stage2_trains_from_a_feature_set_on_ray_train(dataset, extracted, stage1, tmp_path):
    """`clad train stage2 -o loader.feature_set=...`: both sources (memory and stream) run and checkpoint."""
    from clad.training.config import load_train_config
    from pipelines.train import data_sources, run_training

    for source in ("memory", "stream"):
        cfg = load_train_config(None, [
            f"dataset_dir={dataset}", f"output_dir={tmp_path}", "stage=stage2", f"stage1_checkpoint={stage1}",
            f"loader.feature_set={extracted['root']}", f"loader.source={source}", f"run_name=s2-{source}",
            "batch_size=8", "steps=2", "log_every=1", "checkpoint_every=2", "validate_every=2", "val_batches=1",
            "max_failures=0"], base={"model": _tiny_cfg().to_dict()})
        assert data_sources(cfg) == {"train": source, "val": source}
        result = run_training(cfg)
        assert result.error is None
        assert (tmp_path / f"s2-{source}" / "final" / "model.safetensors").is_file()
        assert np.isfinite(result.metrics["train/loss"])


# ----------------------------------------------------------------------------------------------------------
# DecisionNCE converter


class _UpstreamCLIP(torch.nn.Module):
    """The module layout of OpenAI CLIP as DecisionNCE wraps it (`CLIPBasedEncoder.model`): a ModifiedResNet
    `visual` plus a text tower. The image tower is the project's ModifiedResNet, which mirrors CLIP's code
    and parameter names (a tiny size: the test is the format; heads = width * 32 // 64 as CLIP builds it)."""

    def __init__(self):
        from clad.model.clip_rn50 import ModifiedResNet

        super().__init__()
        self.visual = ModifiedResNet(layers=[1, 2, 1, 1], output_dim=24, heads=8, image_size=64, width=16)
        self.token_embedding = torch.nn.Embedding(50, 8)
        self.positional_embedding = torch.nn.Parameter(torch.randn(7, 8))
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.Sequential(torch.nn.Linear(8, 8))
        self.logit_scale = torch.nn.Parameter(torch.ones([]))


class _CLIPBasedEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = _UpstreamCLIP()


def test_decisionnce_converter_reads_upstream_keys_without_unpickling_code(tmp_path):
    from clad.errors import CheckpointError
    from clad.model.decisionnce_convert import convert
    from clad.model.clip_rn50 import load_clip_rn50

    torch.manual_seed(0)
    upstream = _CLIPBasedEncoder().eval()
    assert "model.visual.layer2.1.conv1.weight" in upstream.state_dict()
    pth = tmp_path / "DecisionNCE-T.pth"
    torch.save({"model": upstream.state_dict(), "epoch": 3}, pth)  # a training checkpoint, as upstream saves
    out = convert(pth, tmp_path / "dnce")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg == {"layers": [1, 2, 1, 1], "width": 16, "heads": 8, "output_dim": 24, "image_size": 64}
    net = load_clip_rn50(str(out)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), upstream.model.visual(x))
    # the converted folder is a frozen encoder for `clad features` (its identity hashes every buffer too)
    from clad.model.frozen_encoder import EncoderSpec, FrozenEncoder

    enc = FrozenEncoder.build(EncoderSpec(source="pretrained", backbone="decisionnce_rn50", checkpoint=str(out)))
    assert enc.identity["input_size"] == 64 and enc.identity["feature_dim"] == 24
    assert enc.identity["centre_crop"] == 1.0 and enc(torch.zeros(2, 1, 3, 32, 32, dtype=torch.uint8)).shape == (2, 1, 24)
    # a pickle that would run code on load is refused, not executed
    evil = tmp_path / "evil.pth"
    torch.save({"model": upstream.state_dict(), "hook": _CLIPBasedEncoder}, evil)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        convert(evil, tmp_path / "evil_out")
    assert not (tmp_path / "evil_out" / "model.safetensors").exists()


# ----------------------------------------------------------------------------------------------------------
# the simulator: frames an agent sees live vs the cache of the same frames stored as a demonstration


@pytest.mark.libero
def test_live_simulator_frames_encode_as_the_cache_holds_them(ray_session, stage1, tmp_path):
    """One real LIBERO reset and step. The frames go two ways: (a) stored by the project's demo writer,
    preprocessed and cached by `clad features`; (b) live, through the eval adapter and the model's vision
    (what CladAgent runs). Both must give the same features."""
    from clad.data import feature_set as fs
    from clad.data.memory_windows import _units
    from clad.data.preprocess_config import PreprocessConfig
    from clad.eval.agent_adapter import AgentInputAdapter
    from clad.libero.demo_writer import DemoWriter
    from clad.libero.env import SETTLE_ACTION, EnvConfig, LiberoEnv
    from clad.libero.expert import EpisodeResult
    from clad.model.frozen_encoder import EncoderSpec
    from clad.data.store import iter_episodes
    from pipelines.features import extract_features
    from pipelines.preprocess import run_preprocess

    env = LiberoEnv(EnvConfig(suite="libero_object", camera_size=32, settle_steps=1), task=0)
    try:
        obs = [env.reset(init_index=0)]
        obs.append(env.step(SETTLE_ACTION)[0])
        # the two live frames, stored as a demonstration (marked successful only so the writer keeps it)
        with DemoWriter(tmp_path / "raw", env, compress=False) as writer:
            writer.add(EpisodeResult(success=True, steps=2, actions=np.stack([SETTLE_ACTION] * 2), observations=obs,
                                     init_index=0))
    finally:
        env.close()
    run_preprocess(tmp_path / "raw", tmp_path / "ds", PreprocessConfig(val_fraction=0.0))
    res = extract_features(tmp_path / "ds", EncoderSpec(source="stage1", checkpoint=str(stage1)))
    ep = next(iter_episodes(tmp_path / "ds", "train"))
    keys = ("agentview_rgb", "eye_in_hand_rgb")
    cached = fs.load_shard(res["root"], "train", fs.unit_name(*_units(tmp_path / "ds", "train")[0]),
                           ep["episode_id"], ep["length"], keys)

    model = _stage2_model(stage1, tmp_path / "ds").eval()
    rgb, _ = AgentInputAdapter(model.cfg.vision.cameras, model.cfg.proprio_keys).images_and_proprio(obs)
    (live,) = model.visual_features({"rgb_curr": torch.from_numpy(rgb)}, ("curr",))
    want = np.concatenate([cached[k].astype(np.float32) for k in keys], axis=1)
    assert ep["length"] == 2 and live.shape == want.shape
    np.testing.assert_allclose(live.numpy(), want, rtol=2e-3, atol=2e-3)


def test_stage1_with_a_frozen_backbone_has_the_same_loss_from_features(dataset, tmp_path):
    """Stage 1 with a frozen DecisionNCE-format backbone (converted from an upstream-layout checkpoint):
    the loss on the same windows from cached features equals the loss from images."""
    from clad.data.memory_windows import InMemoryWindows
    from clad.data.windows import WindowSpec
    from clad.model.decisionnce_convert import convert
    from clad.model.frozen_encoder import EncoderSpec
    from clad.model.model import CladModel
    from clad.training.session import model_stats
    from pipelines.features import extract_features_local

    torch.manual_seed(0)
    pth = tmp_path / "dnce.pth"
    torch.save({"model": _CLIPBasedEncoder().state_dict()}, pth)
    weights = convert(pth, tmp_path / "dnce")
    res = extract_features_local(dataset, EncoderSpec(source="pretrained", backbone="decisionnce_rn50",
                                                      checkpoint=str(weights), cameras=("agentview",)))
    cfg = _tiny_cfg(crop_ratio=1.0, cameras=("agentview",))
    cfg = cfg.replace(vision=cfg.vision.replace(backbone="decisionnce_rn50", feature_dim=24,
                                                checkpoint_dir=str(weights)))
    spec = WindowSpec(tau=cfg.dynamics.tau, chunk=cfg.policy.chunk_length, views=("agentview",),
                      proprio_keys=cfg.proprio_keys)
    img = InMemoryWindows.load(dataset, "train", spec)
    feat = InMemoryWindows.load(dataset, "train", WindowSpec(**{**spec.__dict__, "use_features": True}), res["root"])
    idx = np.arange(0, len(img), 4)
    model = CladModel(cfg, model_stats(dataset, cfg.proprio_keys)).train()
    losses = []
    for wins in (img, feat):
        torch.manual_seed(11)  # the same action masks
        loss, _ = model.stage1_loss({k: torch.from_numpy(v) for k, v in wins.gather(idx).items()})
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-3, abs=1e-4)


def test_random_crop_augmentation_cannot_train_from_cached_features():
    """Cached features are of the centre crop: a stage 2 that augments every network must read images."""
    from clad.training.config import load_train_config
    from clad.training.data_source import feature_training_error

    base = ["stage=stage2", "model_preset=tiny", "dataset_dir=/nonexistent", "stage1_checkpoint=/nonexistent/s1"]
    cropped = load_train_config(None, [*base, "model.policy.augment=random_crop"])
    assert "augment" in feature_training_error(cropped)
    assert feature_training_error(load_train_config(None, [*base, "model.policy.augment=none"])) is None
