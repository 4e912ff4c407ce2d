"""End-to-end `clad preprocess` on a real local Ray (tests/conftest.py `ray_session`), on synthetic but
layout-exact LIBERO files (tests/libero_files.py)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clad.data import validate as V
from clad.data.episode_table import decode_episodes
from clad.data.language import encode_instructions, load_embeddings
from clad.data.libero_layout import LOWDIM_KEYS
from clad.data.preprocess_config import FeatureBackboneConfig, PreprocessConfig
from clad.data.store import iter_dataset_windows, iter_episodes
from clad.data.windows import WindowSpec, check_sample, window_shapes
from libero_files import drop_key, make_unreadable, put_nan, replace_images, truncate_key, write_demo_file, write_suite

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FEAT_DIM = 6
CFG = PreprocessConfig(val_fraction=0.25, feature_backbone=FeatureBackboneConfig(
    kind="random_conv", options={"feature_dim": FEAT_DIM, "seed": 0}))


@pytest.fixture(scope="module")
def built(ray_session, tmp_path_factory):
    """3 tasks x 3 demos (20/30/40 steps, 32x32), two sub-folders, features on."""
    root = tmp_path_factory.mktemp("pre")
    src = root / "in"
    write_suite(src / "suite_a", n_tasks=2)
    write_demo_file(src / "suite_b", "OTHER_SCENE_open_the_drawer", seed=7, instruction="open the drawer")
    from pipelines.preprocess import run_preprocess

    result = run_preprocess(src, root / "out", CFG)
    print("preprocess timings (s):", result.manifest["timings_s"])  # visible with pytest -s
    return src, root / "out", result


def _all_rows(out: Path) -> dict[str, pa.Table]:
    return {s: pa.concat_tables([pq.read_table(f) for f in sorted((out / "episodes" / s).glob("*.parquet"))])
            for s in ("train", "val")}


def test_output_layout_and_schema(built):
    src, out, result = built
    assert not result.noop
    for name in ("manifest.json", "stats.json", "tasks.json", "language.safetensors", "rejections.json", "config.json"):
        assert (out / name).is_file(), name
    rows = _all_rows(out)
    schema = rows["train"].schema
    expected = {"episode_id": pa.string(), "episode_index": pa.int64(), "task_index": pa.int64(), "length": pa.int64(),
                "split": pa.string(), "image_height": pa.int32(), "agentview_rgb": pa.large_binary(),
                "eye_in_hand_rgb": pa.large_binary()}
    for col, typ in expected.items():
        assert schema.field(col).type == typ, col
    widths = {"actions": 7, **LOWDIM_KEYS, "feat_agentview_rgb": FEAT_DIM, "feat_eye_in_hand_rgb": FEAT_DIM}
    for col, width in widths.items():
        t = schema.field(col).type
        assert pa.types.is_list(t) and t.value_type.list_size == width and t.value_type.value_type == pa.float32(), col
    # one row group per episode (bounded memory for row-group readers)
    for f in (out / "episodes" / "train").glob("*.parquet"):
        md = pq.ParquetFile(f).metadata
        assert md.num_row_groups == md.num_rows
    # decoded arrays equal the source file
    ep = next(e for s in ("train", "val") for e in decode_episodes(rows[s])
              if e["episode_id"] == "suite_a/TEST_SCENE_task_1_demo.hdf5#demo_2")
    with h5py.File(src / "suite_a/TEST_SCENE_task_1_demo.hdf5") as f:
        g = f["data/demo_2"]
        assert ep["length"] == 40 == g["actions"].shape[0]
        np.testing.assert_array_equal(ep["agentview_rgb"], g["obs/agentview_rgb"][()])
        np.testing.assert_array_equal(ep["eye_in_hand_rgb"], g["obs/eye_in_hand_rgb"][()])
        np.testing.assert_allclose(ep["actions"], g["actions"][()], rtol=1e-6)
        np.testing.assert_allclose(ep["ee_ori"], g["obs/ee_ori"][()], rtol=1e-6)
    assert ep["feat_agentview_rgb"].shape == (40, FEAT_DIM) and np.isfinite(ep["feat_agentview_rgb"]).all()

    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["episodes"]["train"] + m["counts"]["episodes"]["val"] == 9 == m["counts"]["demos_found"]
    assert m["counts"]["steps"]["train"] + m["counts"]["steps"]["val"] == 3 * (20 + 30 + 40)
    assert m["image_size"] == [32, 32] and m["views"] == ["agentview", "eye_in_hand"]
    assert m["feature_backbone"]["feature_dim"] == FEAT_DIM
    assert len(m["files"]) == 3 and all(len(f["sha256"]) == 64 and f["size"] > 0 for f in m["files"])
    assert [t["name"] for t in m["tasks"]] == ["OTHER_SCENE_open_the_drawer", "TEST_SCENE_task_0", "TEST_SCENE_task_1"]
    assert m["tasks"][0]["instruction"] == "open the drawer"
    assert m["config"] == CFG.to_dict()


def test_split_is_deterministic_and_disjoint(built):
    src, out, _ = built
    rows = _all_rows(out)
    ids = {s: set(rows[s].column("episode_id").to_pylist()) for s in rows}
    assert ids["train"] and ids["val"] and not ids["train"] & ids["val"]
    assert len(ids["train"] | ids["val"]) == 9
    from clad.data.split import assign_splits

    again = assign_splits([tuple(i.split("#")) for i in ids["train"] | ids["val"]], CFG.val_fraction, CFG.split_seed)
    assert {f"{k[0]}#{k[1]}" for k, v in again.items() if v == "val"} == ids["val"]
    assert set(rows["val"].column("split").to_pylist()) == {"val"}


def test_stats_match_numpy_over_train(built):
    src, out, _ = built
    stats = json.loads((out / "stats.json").read_text())
    train_ids = set(_all_rows(out)["train"].column("episode_id").to_pylist())
    data: dict[str, list[np.ndarray]] = {}
    for rel_demo in sorted(train_ids):
        rel, demo = rel_demo.split("#")
        with h5py.File(src / rel) as f:
            g = f["data"][demo]
            data.setdefault("actions", []).append(g["actions"][()])
            for k in LOWDIM_KEYS:
                data.setdefault(k, []).append(g["obs"][k][()])
    assert stats["split"] == "train" and stats["num_episodes"] == len(train_ids)
    assert set(stats["keys"]) == {"actions", *LOWDIM_KEYS}
    for key, parts in data.items():
        x = np.concatenate(parts)
        s = stats["keys"][key]
        assert s["count"] == len(x)
        np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-10)
        np.testing.assert_array_equal(s["min"], x.min(0))
        np.testing.assert_array_equal(s["max"], x.max(0))


def test_language_table(built):
    _, out, _ = built
    tasks = json.loads((out / "tasks.json").read_text())
    emb = load_embeddings(out / "language.safetensors")
    assert tasks["dim"] == 384 and emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, encode_instructions([t["instruction"] for t in tasks["tasks"]]), atol=1e-6)


@pytest.mark.parametrize("tau", [2, 6])
def test_windows_ray_and_plain_agree(built, tau):
    from pipelines.dataset import dataset_windows

    _, out, _ = built
    spec = WindowSpec(tau=tau, chunk=4, use_features=True)
    expected = window_shapes(spec, (32, 32), 384, FEAT_DIM)
    plain = list(iter_dataset_windows(out, "val", spec))
    n_val_steps = sum(e["length"] for e in iter_episodes(out, "val", columns=["length"]))
    assert sum(b["task_index"].shape[0] for b in plain) == n_val_steps
    for b in plain:
        check_sample({k: v[0] for k, v in b.items()}, expected)
    batches = list(dataset_windows(out, "val", spec).iter_torch_batches(batch_size=16))
    import torch

    assert sum(b["task_index"].shape[0] for b in batches) == n_val_steps
    b = batches[0]
    B = b["task_index"].shape[0]
    for k, (shape, dtype) in expected.items():
        assert isinstance(b[k], torch.Tensor), k
        assert tuple(b[k].shape) == (B, *shape), k
        assert b[k].dtype == {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32,
                              np.dtype(bool): torch.bool, np.dtype(np.int64): torch.int64}[dtype], k
    # same multiset of windows from Ray and from the plain reader (order differs)
    key = lambda a, c: sorted(zip(a["task_index"].tolist(), a["rgb_curr"][:, 0, 0, 0, 0].tolist(), c))  # noqa: E731
    ray_keys = sorted(x for bb in batches for x in key(bb, bb["actions_future"][:, 0, 0].tolist()))
    plain_keys = sorted(x for bb in plain for x in key(bb, bb["actions_future"][:, 0, 0].tolist()))
    assert ray_keys == plain_keys


def test_rerun_is_noop_and_cli_says_so(built, capsys):
    src, out, first = built
    # the dataset is untouched; clad.log (the command's log, pipelines/logs.py) records that it ran
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "clad.log"}
    from pipelines.cli import main

    assert main(["preprocess", "--input", str(src), "--out", str(out), "-o", "val_fraction=0.25",
                 "--features", "random_conv",
                 "--set", f"feature_backbone.options={{feature_dim: {FEAT_DIM}, seed: 0}}"]) == 0
    printed = capsys.readouterr().out
    assert "up to date" in printed and "nothing to do" in printed
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "clad.log"} == before
    assert (out / "clad.log").is_file()


def test_bad_inputs_rejected_and_reported(ray_session, tmp_path):
    from pipelines.preprocess import run_preprocess

    src = tmp_path / "in"
    good = write_demo_file(src, "GOOD_task", lengths=(8, 9, 10), seed=1)
    unreadable = write_demo_file(src / "sub", "UNREADABLE_task", lengths=(5,), seed=2)
    make_unreadable(unreadable)
    bad = write_demo_file(src, "BAD_task", lengths=(6, 7, 8, 9, 10), seed=3)
    drop_key(bad, "demo_0", "obs/ee_pos")
    truncate_key(bad, "demo_1", "obs/joint_states", 3)
    put_nan(bad, "demo_2", "actions", 4)
    replace_images(bad, "demo_3", "eye_in_hand_rgb", channels=1)
    small = write_demo_file(src, "SMALL_task", lengths=(6,), image_size=16, seed=4)  # minority image size
    result = run_preprocess(src, tmp_path / "out", PreprocessConfig(val_fraction=0.3), readers=2)
    rej = json.loads((tmp_path / "out" / "rejections.json").read_text())
    got = {(r["file"], r["demo"], r["kind"]) for r in rej["rejections"]}
    assert got == {
        ("sub/UNREADABLE_task_demo.hdf5", None, V.UNREADABLE),
        ("BAD_task_demo.hdf5", "demo_0", V.MISSING_KEY),
        ("BAD_task_demo.hdf5", "demo_1", V.LENGTH_MISMATCH),
        ("BAD_task_demo.hdf5", "demo_2", V.NON_FINITE),
        ("BAD_task_demo.hdf5", "demo_3", V.IMAGE_FORMAT),
        ("SMALL_task_demo.hdf5", "demo_0", V.IMAGE_SIZE),
    }
    assert rej["count"] == 6 and all(r["reason"] for r in rej["rejections"])
    c = result.manifest["counts"]
    assert c["files"] == 4 and c["files_rejected"] == 1 and c["rejected_demos"] == 5
    assert c["demos_found"] == 3 + 5 + 1  # the unreadable file's demos cannot be counted
    assert c["episodes"]["train"] + c["episodes"]["val"] == 4  # GOOD x3 + BAD demo_4
    kept = {e["episode_id"] for s in ("train", "val") for e in iter_episodes(tmp_path / "out", s, columns=["length"])}
    assert kept == {"GOOD_task_demo.hdf5#demo_0", "GOOD_task_demo.hdf5#demo_1", "GOOD_task_demo.hdf5#demo_2",
                    "BAD_task_demo.hdf5#demo_4"}
    assert "rejected: 5 demo(s), 1 whole file(s)" in result.summary()
    del good, small


def test_nothing_usable_is_a_clear_error(ray_session, tmp_path):
    from clad.errors import DataError
    from pipelines.preprocess import run_preprocess

    p = write_demo_file(tmp_path / "in", "ONLY_task", lengths=(5,))
    make_unreadable(p)
    with pytest.raises(DataError, match="(?s)no usable demos.*ONLY_task_demo.hdf5.*cannot open"):
        run_preprocess(tmp_path / "in", tmp_path / "out", PreprocessConfig())
    assert json.loads((tmp_path / "out" / "rejections.json").read_text())["count"] == 1
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_file_changed_after_scan_is_a_clear_error(ray_session, tmp_path, monkeypatch):
    """A read failure inside a Ray task comes back as DataError naming file and demo, and leaves no manifest."""
    import pipelines.preprocess as P
    from clad.errors import DataError

    files = write_suite(tmp_path / "in", n_tasks=2, lengths=(5, 6))
    real = P.build_plan

    def plan_then_break(*a, **k):
        plan = real(*a, **k)
        make_unreadable(files[0])
        return plan

    monkeypatch.setattr(P, "build_plan", plan_then_break)
    with pytest.raises(DataError, match=r"TEST_SCENE_task_0_demo.hdf5 demo_\d: read failed"):
        P.run_preprocess(tmp_path / "in", tmp_path / "out", PreprocessConfig())
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_shuffled_window_dataset_keeps_every_window(built):
    from pipelines.dataset import dataset_windows, iter_torch_windows

    _, out, _ = built
    spec = WindowSpec(tau=3, chunk=2, stride=2)
    wins = dataset_windows(out, "val", spec, episode_shuffle=True, global_shuffle=True, seed=0)
    got = [b for b in iter_torch_windows(wins, batch_size=8, local_shuffle_buffer_size=16, seed=0)]
    n_val_steps = sum((e["length"] + 1) // 2 for e in iter_episodes(out, "val", columns=["length"]))
    assert sum(b["task_index"].shape[0] for b in got) == n_val_steps
    assert "feat_curr" not in got[0] and got[0]["rgb_curr"].shape[1:] == (2, 3, 32, 32)
