"""Preprocessing building blocks without Ray: validation/rejections, split, statistics, resize, features,
fingerprint, language embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from clad.data import validate as V
from clad.data.features import RandomConvBackbone, load_backbone
from clad.data.hdf5_reader import scan_file
from clad.data.images import resize_images
from clad.data.manifest import FileInfo, fingerprint
from clad.data.plan import build_plan
from clad.data.preprocess_config import FeatureBackboneConfig, PreprocessConfig
from clad.data.split import assign_splits
from clad.data.stats import Moments, merge_all
from clad.errors import ConfigError
from libero_files import drop_key, make_unreadable, put_nan, replace_images, truncate_key, write_demo_file

CFG = PreprocessConfig()


def _scan(path, rel=None):
    return scan_file(path, rel or path.name, CFG.image_keys, CFG.lowdim_keys)


@pytest.mark.parametrize("corrupt, kind, words", [
    (lambda p: drop_key(p, "demo_1", "obs/ee_pos"), V.MISSING_KEY, "obs/ee_pos"),
    (lambda p: drop_key(p, "demo_1", "actions"), V.MISSING_KEY, "actions"),
    (lambda p: truncate_key(p, "demo_1", "obs/joint_states", 5), V.LENGTH_MISMATCH, "obs/joint_states=5"),
    (lambda p: put_nan(p, "demo_1", "actions", 3), V.NON_FINITE, "first at step 3"),
    (lambda p: put_nan(p, "demo_1", "obs/gripper_states", 6), V.NON_FINITE,
     "obs/gripper_states has 1 NaN/Inf value(s), first at step 6"),
    (lambda p: replace_images(p, "demo_1", channels=4), V.IMAGE_FORMAT, "(T, H, W, 3) uint8"),
    (lambda p: replace_images(p, "demo_1", dtype=np.float32), V.IMAGE_FORMAT, "float32"),
    # the view that was changed is named with its size, not only the one that is right
    (lambda p: replace_images(p, "demo_1", shape_hw=(16, 16)), V.IMAGE_SIZE, "obs/agentview_rgb is 16x16"),
])
def test_bad_demo_is_rejected_with_reason(tmp_path, corrupt, kind, words):
    path = write_demo_file(tmp_path, "TASK_bad", lengths=(6, 7, 8))
    corrupt(path)
    scan = _scan(path)
    assert [d.demo for d in scan.demos] == ["demo_0", "demo_2"]  # the rest of the file still goes through
    (rej,) = scan.rejections
    assert (rej.file, rej.demo, rej.kind) == (path.name, "demo_1", kind)
    assert words in rej.reason and path.name in rej.message and "demo_1" in rej.message


def test_unreadable_file_is_a_file_rejection(tmp_path):
    path = write_demo_file(tmp_path, "TASK_x", lengths=(5,))
    make_unreadable(path)
    scan = _scan(path)
    assert not scan.demos and len(scan.rejections) == 1
    r = scan.rejections[0]
    assert r.demo is None and r.kind == V.UNREADABLE and "cannot open as HDF5" in r.reason


def test_plan_rejects_minority_image_size_or_resizes(tmp_path):
    a = write_demo_file(tmp_path, "TASK_a", lengths=(5, 6), image_size=32, seed=1)
    b = write_demo_file(tmp_path, "TASK_b", lengths=(5, 6), image_size=32, seed=2)
    c = write_demo_file(tmp_path, "TASK_c", lengths=(5,), image_size=(24, 24), seed=3)
    scans = [_scan(p) for p in (a, b, c)]
    plan = build_plan(tmp_path, scans, CFG)
    assert plan.image_size == (32, 32) and len(plan.episodes) == 4
    (rej,) = plan.rejections
    assert rej.kind == V.IMAGE_SIZE and rej.file == c.name and "24x24" in rej.reason
    assert plan.counts()["rejected_demos"] == 1
    resized = build_plan(tmp_path, scans, CFG.replace(image_size=16))
    assert resized.image_size == (16, 16) and resized.resized and len(resized.episodes) == 5 and not resized.rejections
    # task table: sorted names, instructions from problem_info
    assert [t.name for t in resized.tasks] == ["TASK_a", "TASK_b", "TASK_c"]
    assert resized.tasks[0].instruction == "task a"


def test_split_is_deterministic_disjoint_and_has_val():
    eps = [(f"suite/f{i}.hdf5", f"demo_{j}") for i in range(5) for j in range(10)]
    s1 = assign_splits(eps, 0.2, seed=0)
    s2 = assign_splits(list(reversed(eps)), 0.2, seed=0)
    assert s1 == s2 and set(s1.values()) == {"train", "val"}
    n_val = sum(v == "val" for v in s1.values())
    assert 3 <= n_val <= 20
    assert assign_splits(eps, 0.2, seed=1) != s1
    # tiny inputs still get a validation episode, and never an empty train split
    tiny = assign_splits(eps[:2], 0.01, seed=0)
    assert sorted(tiny.values()) == ["train", "val"]
    assert set(assign_splits(eps[:3], 0.0, seed=0).values()) == {"train"}


def test_moments_merge_matches_numpy():
    rng = np.random.default_rng(0)
    parts = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 30, 2)]
    m = merge_all(Moments.from_array(p) for p in parts)
    x = np.concatenate(parts)
    assert m.count == len(x)
    np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.std, x.std(0), rtol=1e-10)
    np.testing.assert_array_equal(m.min, x.min(0))
    np.testing.assert_array_equal(m.max, x.max(0))


def test_resize_images():
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    y = resize_images(x, (16, 8))
    assert y.shape == (3, 16, 8, 3) and y.dtype == np.uint8
    assert resize_images(x, (32, 32)) is x
    flat = np.full((2, 20, 20, 3), 77, np.uint8)
    assert (resize_images(flat, (7, 9)) == 77).all()


def test_random_conv_backbone_is_deterministic_and_unknown_kind_is_clear():
    imgs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    a = load_backbone(FeatureBackboneConfig(kind="random_conv", options={"feature_dim": 12, "seed": 3}))
    b = RandomConvBackbone(feature_dim=12, seed=3)
    fa, fb = a(imgs), b(imgs)
    assert fa.shape == (4, 12) and fa.dtype == np.float32
    np.testing.assert_array_equal(fa, fb)
    assert not np.allclose(fa, RandomConvBackbone(feature_dim=12, seed=4)(imgs))
    with pytest.raises(ConfigError, match="'resnet_nope' is unknown.*random_conv"):
        load_backbone(FeatureBackboneConfig(kind="resnet_nope"))
    with pytest.raises(ConfigError, match="not used by kind 'random_conv'"):
        load_backbone(FeatureBackboneConfig(kind="random_conv", options={"depth": 3}))


def test_fingerprint_tracks_config_and_content():
    files = [FileInfo("a_demo.hdf5", "aa", 1, 1.0)]
    base = fingerprint(CFG.to_dict(), files, 1)
    assert base == fingerprint(CFG.to_dict(), [FileInfo("a_demo.hdf5", "aa", 1, 99.0)], 1)  # mtime alone: same
    assert base != fingerprint(CFG.to_dict(), [FileInfo("a_demo.hdf5", "ab", 1, 1.0)], 1)
    assert base != fingerprint(CFG.replace(split_seed=1).to_dict(), files, 1)
    assert base != fingerprint(CFG.to_dict(), files, 1, {"backbone_checkpoint": "x"})


def test_path_digest_follows_content(tmp_path):
    from clad.data.manifest import path_digest

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w.bin").write_bytes(b"1")
    d1 = path_digest(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "w.bin").write_bytes(b"2")
    assert path_digest(tmp_path / "ckpt") != d1 and path_digest(tmp_path / "nope") == "missing"


def test_config_validation():
    assert PreprocessConfig(image_size=64).image_size == (64, 64)
    with pytest.raises(Exception, match="unknown views"):
        PreprocessConfig(views=("top",))


@pytest.mark.slow
def test_language_embeddings_deterministic():
    from clad.data.language import encode_instructions

    texts = ["put the bowl on the plate", "open the top drawer"]
    a, b = encode_instructions(texts), encode_instructions(list(reversed(texts)))[::-1]
    assert a.shape == (2, 384) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert float(a[0] @ a[1]) < 0.99


def test_unknown_backbone_fails_before_ray(tmp_path):
    """run_preprocess rejects an unknown backbone kind before hashing or starting Ray."""
    from pipelines.preprocess import run_preprocess

    write_demo_file(tmp_path / "in", "TASK_a", lengths=(3,))
    with pytest.raises(ConfigError, match="'nope' is unknown"):
        run_preprocess(tmp_path / "in", tmp_path / "out", PreprocessConfig(feature_backbone={"kind": "nope"}))
    assert not (tmp_path / "out").exists()


def test_find_demo_files_skips_temporaries(tmp_path):
    from clad.data.hdf5_reader import find_demo_files

    a = write_demo_file(tmp_path / "suite", "TASK_a", lengths=(3,))
    (tmp_path / "suite" / "._TASK_a_demo.hdf5").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "TASK_b_demo.hdf5").write_bytes(b"x")
    (tmp_path / "suite" / "notes.txt").write_text("x")
    assert find_demo_files(tmp_path) == [a]
