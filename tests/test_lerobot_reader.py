"""clad/data/lerobot_reader.py on the LeRobot v3.0 fixtures (written by lerobot's own writer) and on copies
with one thing broken: each bad file or episode gets a named rejection, the rest is processed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clad.data import validate as V
from clad.data import lerobot_reader as R
from clad.data.preprocess_config import PreprocessConfig
from clad.errors import ConfigError, DataError
from lerobot_fixtures import edit_info, fixture_dir, writable_copy

VIEWS = ("agentview_rgb", "eye_in_hand_rgb")
DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
TASK = {0: ("pick_up_the_alphabet_soup_and_place_it_in_the_basket",
            "pick up the alphabet soup and place it in the basket")}


def _scan(root: Path, task_errors=None):
    layout = R.load_layout(root, VIEWS)
    scans = R.scan_data_file(layout, DATA, layout.episodes, TASK if not task_errors else {}, task_errors or {})
    accepted = [d.demo for s in scans for d in s.demos]
    rejected = {r.demo: r for s in scans for r in s.rejections}
    return layout, accepted, rejected


def _edit_parquet(path: Path, edit) -> None:
    table = pq.read_table(path)
    pq.write_table(edit(table), path)


# ------------------------------------------------------------------------------------------- good input

@pytest.mark.parametrize("name", ["libero_v3_images", "libero_v3_video"])
def test_fixture_scans_and_reads_like_its_metadata(name):
    root = fixture_dir(name)
    layout, accepted, rejected = _scan(root)
    meta = pq.read_table(root / EPISODES).to_pylist()
    assert accepted == [f"episode_{m['episode_index']:06d}" for m in meta] and not rejected
    assert layout.lowdim_keys == ("ee_states", "ee_pos", "ee_ori", "gripper_states", "joint_states")
    data = pq.read_table(root / DATA, columns=["observation.state", "observation.states.joint_state", "action",
                                              "episode_index"])
    for m in meta:
        ep = R.read_episode(layout, m["episode_index"], VIEWS, layout.lowdim_keys)
        rows = data.filter(pa.compute.equal(data.column("episode_index"), m["episode_index"]))
        state = np.array(rows.column("observation.state").to_pylist(), np.float32)
        assert ep["agentview_rgb"].shape == ep["eye_in_hand_rgb"].shape == (m["length"], 128, 128, 3)
        # observation.state = eef pos + axis-angle + gripper qpos = ee_states ++ gripper_states
        np.testing.assert_array_equal(np.concatenate([ep["ee_states"], ep["gripper_states"]], 1), state)
        np.testing.assert_array_equal(ep["ee_pos"], state[:, :3])
        np.testing.assert_array_equal(ep["joint_states"],
                                      np.array(rows.column("observation.states.joint_state").to_pylist(), np.float32))
        np.testing.assert_array_equal(ep["actions"], np.array(rows.column("action").to_pylist(), np.float32))


def test_video_frames_are_the_png_frames_of_the_same_demo_in_order():
    """Both fixtures hold the same first demonstration: the H.264 frames must line up with the lossless
    PNG ones (closer to frame t than to its neighbours), not be shifted by the timestamp lookup."""
    png = R.read_episode(R.load_layout(fixture_dir("libero_v3_images"), VIEWS), 0, VIEWS, ())
    vid = R.read_episode(R.load_layout(fixture_dir("libero_v3_video"), VIEWS), 0, VIEWS, ())
    for key in VIEWS:
        a, b = png[key].astype(np.int16), vid[key].astype(np.int16)
        same = np.abs(a - b).mean()
        assert same < 8.0
        assert same < np.abs(a[1:] - b[:-1]).mean() and same < np.abs(a[:-1] - b[1:]).mean()


def test_an_av1_video_decodes(tmp_path):
    """Public sets often use AV1: re-encode the fixture's video with PyAV's AV1 encoder and read it back."""
    import av

    root = writable_copy("libero_v3_video", tmp_path / "ds")
    codecs = av.codecs_available
    if "libdav1d" not in codecs and "libaom-av1" not in codecs:
        pytest.skip("this PyAV build has no AV1 decoder")
    encoder = next((c for c in ("libsvtav1", "libaom-av1") if c in codecs), None)
    if encoder is None:
        pytest.skip("this PyAV build has no AV1 encoder to make the test file")
    key = "observation.images.image"
    src = root / f"videos/{key}/chunk-000/file-000.mp4"
    frames = [f.to_ndarray(format="rgb24") for f in av.open(str(src)).decode(video=0)]
    out = av.open(str(src), "w")
    stream = out.add_stream(encoder, rate=20)
    stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
    for img in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    layout, accepted, rejected = _scan(root)
    assert R.VideoFile(src).codec == "libdav1d" or "av1" in R.VideoFile(src).codec
    assert len(accepted) == 2 and not rejected
    ep = R.read_episode(layout, 1, ("agentview_rgb",), ())
    assert np.abs(ep["agentview_rgb"].astype(np.int16) - np.stack(frames[126:]).astype(np.int16)).mean() < 8.0


# ------------------------------------------------------------------------------------------- dataset-level

def test_a_v2_dataset_names_the_lerobot_migration_tool(tmp_path):
    root = writable_copy("libero_v3_images", tmp_path / "ds")
    edit_info(root, lambda info: info.update(codebase_version="v2.1"))
    with pytest.raises(DataError, match=r"v2\.1 .*convert_dataset_v21_to_v30"):
        R.load_layout(root, VIEWS)


def test_run_preprocess_rejects_a_v2_dataset_before_starting_ray(tmp_path):
    import ray

    from pipelines.preprocess import run_preprocess

    root = writable_copy("libero_v3_images", tmp_path / "ds")
    edit_info(root, lambda info: info.update(codebase_version="v2.0"))
    was_running = ray.is_initialized()
    with pytest.raises(DataError, match="convert_dataset_v21_to_v30"):
        run_preprocess(root, tmp_path / "out")
    assert ray.is_initialized() == was_running


@pytest.mark.parametrize("missing, message", [("meta/tasks.parquet", "tasks.parquet is missing"),
                                              ("meta/episodes", "episode metadata .* is missing")])
def test_missing_metadata_is_named(tmp_path, missing, message):
    import shutil

    root = writable_copy("libero_v3_images", tmp_path / "ds")
    target = root / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataError, match=message):
        R.load_layout(root, VIEWS)


def test_a_declared_feature_shape_that_is_not_libero_s_is_named(tmp_path):
    root = writable_copy("libero_v3_images", tmp_path / "ds")
    edit_info(root, lambda info: info["features"]["observation.state"].update(shape=[9]))
    with pytest.raises(DataError, match=r"'observation.state' has shape \[9\]; expected \[8\]"):
        R.load_layout(root, VIEWS)


def test_a_missing_view_names_the_features_and_the_config_field(tmp_path):
    root = writable_copy("libero_v3_images", tmp_path / "ds")

    def drop_wrist(info):
        del info["features"]["observation.images.wrist_image"]
    edit_info(root, drop_wrist)
    with pytest.raises(DataError, match=r"eye_in_hand_rgb.*views"):
        R.load_layout(root, VIEWS)
    assert R.load_layout(root, ("agentview_rgb",)).image_features == {"agentview_rgb": "observation.images.image"}


# ------------------------------------------------------------------------------------------- per episode

def test_episode_length_that_disagrees_with_the_metadata_rejects_that_episode_only(tmp_path):
    root = writable_copy("libero_v3_video", tmp_path / "ds")
    _edit_parquet(root / EPISODES, lambda t: t.set_column(
        t.schema.get_field_index("length"), "length", pa.array([120, 126], pa.int64())))
    _, accepted, rejected = _scan(root)
    assert accepted == ["episode_000001"]
    r = rejected["episode_000000"]
    assert r.kind == V.LENGTH_MISMATCH and "length 120" in r.reason and "126 rows" in r.reason


def test_a_column_with_another_width_rejects_its_episodes(tmp_path):
    root = writable_copy("libero_v3_images", tmp_path / "ds")

    def widen(t):
        i = t.schema.get_field_index("observation.states.joint_state")
        wide = [row + [0.0] for row in t.column(i).to_pylist()]
        return t.set_column(i, "observation.states.joint_state", pa.array(wide, pa.list_(pa.float32(), 8)))
    _edit_parquet(root / DATA, widen)
    _, accepted, rejected = _scan(root)
    assert not accepted
    assert rejected["episode_000000"].kind == V.BAD_SHAPE
    assert "'observation.states.joint_state' has width 8; expected 7" in rejected["episode_000000"].reason


def test_a_video_shorter_than_the_metadata_rejects_the_uncovered_episode(tmp_path):
    root = writable_copy("libero_v3_video", tmp_path / "ds")
    key = "observation.images.wrist_image"
    _cut_video(root, key, 176, tmp_path)  # episode 0 (126 frames) and part of episode 1
    _, accepted, rejected = _scan(root)
    assert accepted == ["episode_000000"]
    r = rejected["episode_000001"]
    assert r.kind == R.VIDEO and key in r.reason and "shorter than the metadata" in r.reason


def _cut_video(root: Path, key: str, packets: int, tmp: Path) -> None:
    """Keep the first `packets` packets of a fixture video (stream copy): a video shorter than its metadata."""
    import av

    src = root / f"videos/{key}/chunk-000/file-000.mp4"
    cut = tmp / "cut.mp4"
    with av.open(str(src)) as inp, av.open(str(cut), "w") as out:
        s = inp.streams.video[0]
        o = out.add_stream_from_template(s)
        for i, packet in enumerate(p for p in inp.demux(s) if p.dts is not None):
            if i >= packets:
                break
            packet.stream = o
            out.mux(packet)
    cut.replace(src)


@pytest.mark.ray
@pytest.mark.slow
def test_preprocess_writes_the_good_episode_and_lists_the_bad_one_in_rejections_json(ray_session, tmp_path):
    from pipelines.preprocess import run_preprocess

    root = writable_copy("libero_v3_video", tmp_path / "ds")
    _cut_video(root, "observation.images.wrist_image", 176, tmp_path)
    res = run_preprocess(root, tmp_path / "out", PreprocessConfig(val_fraction=0.0))
    assert res.manifest["counts"]["episodes"]["train"] == 1
    assert res.manifest["counts"]["rejections_by_kind"] == {R.VIDEO: 1}
    (rej,) = json.loads((tmp_path / "out" / "rejections.json").read_text())["rejections"]
    assert rej["file"] == DATA and rej["demo"] == "episode_000001" and rej["kind"] == R.VIDEO
    assert "observation.images.wrist_image/chunk-000/file-000.mp4" in rej["reason"]


def test_a_video_that_does_not_decode_is_named(tmp_path):
    root = writable_copy("libero_v3_video", tmp_path / "ds")
    src = root / "videos/observation.images.image/chunk-000/file-000.mp4"
    src.write_bytes(b"\0not a video" * 100)
    _, accepted, rejected = _scan(root)
    assert not accepted
    assert {r.kind for r in rejected.values()} == {R.VIDEO}
    assert "observation.images.image/chunk-000/file-000.mp4 does not decode" in rejected["episode_000000"].reason


def test_rows_of_an_episode_missing_from_the_metadata_are_reported(tmp_path):
    root = writable_copy("libero_v3_video", tmp_path / "ds")
    _edit_parquet(root / EPISODES, lambda t: t.slice(0, 1))
    _, accepted, rejected = _scan(root)
    assert accepted == ["episode_000000"]
    assert rejected["episode_000001"].kind == R.MISSING_METADATA


def test_non_finite_actions_reject_the_episode(tmp_path):
    root = writable_copy("libero_v3_images", tmp_path / "ds")

    def poison(t):
        i = t.schema.get_field_index("action")
        rows = t.column(i).to_pylist()
        rows[5][2] = float("nan")
        return t.set_column(i, "action", pa.array(rows, pa.list_(pa.float32(), 7)))
    _edit_parquet(root / DATA, poison)
    _, accepted, rejected = _scan(root)
    assert not accepted and rejected["episode_000000"].kind == V.NON_FINITE
    assert "first at step 5" in rejected["episode_000000"].reason


def test_an_unmatched_task_rejects_its_episodes_with_the_message():
    root = fixture_dir("libero_v3_images")
    msg = "task 'x' matches nothing"
    _, accepted, rejected = _scan(root, task_errors={0: msg})
    assert not accepted and rejected["episode_000000"].kind == R.UNKNOWN_TASK
    assert rejected["episode_000000"].reason == msg


# ------------------------------------------------------------------------------------------- conventions

def test_reorient_is_a_180_degree_rotation_and_its_own_inverse():
    from clad.data.conventions import reorient

    img = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    up = reorient(img, "opengl", "upright")
    np.testing.assert_array_equal(up[1], np.rot90(img[1], 2))
    np.testing.assert_array_equal(reorient(up, "upright", "opengl"), img)
    assert reorient(img, "upright", "upright") is img
    with pytest.raises(ValueError, match="unknown image orientation"):
        reorient(img, "opengl", "sideways")


def test_eval_adapter_turns_simulator_frames_to_the_model_s_orientation():
    from clad.eval.agent_adapter import AgentInputAdapter

    frame = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    obs = [{"agentview_rgb": frame, "ee_states": np.zeros(6), "gripper_states": np.ones(2)}]
    keys = dict(cameras=("agentview",), proprio_keys=("ee_states", "gripper_states"))
    rgb_up, proprio = AgentInputAdapter(**keys, image_orientation="upright").images_and_proprio(obs)
    rgb_gl, _ = AgentInputAdapter(**keys).images_and_proprio(obs)  # checkpoints before the field: opengl
    np.testing.assert_array_equal(rgb_up[0, 0].transpose(1, 2, 0), frame[::-1, ::-1])
    np.testing.assert_array_equal(rgb_gl[0, 0].transpose(1, 2, 0), frame)
    assert proprio.shape == (1, 8)


def test_training_takes_the_dataset_orientation_and_refuses_a_contradicting_one():
    from clad.data.conventions import resolve_model_orientation

    assert resolve_model_orientation(None, {"image_orientation": "upright"}, "ds") == "upright"
    assert resolve_model_orientation(None, {}, "ds") == "opengl"  # manifests before the field: HDF5
    with pytest.raises(ConfigError, match="model.image_orientation='opengl' but ds stores 'upright'"):
        resolve_model_orientation("opengl", {"image_orientation": "upright"}, "ds")


def test_an_unset_orientation_is_opengl_when_checkpoints_are_compared():
    from clad.model.checkpoint import config_differences
    from clad.model.config import ModelConfig

    unset, gl, up = (ModelConfig(image_orientation=o) for o in (None, "opengl", "upright"))
    assert config_differences(unset, gl, "stage2") == [] and config_differences(gl, unset, "stage2") == []
    assert config_differences(unset, up, "stage2") == [
        "field 'image_orientation': checkpoint has 'opengl', config requests 'upright'"]
