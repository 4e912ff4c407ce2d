"""Scripted expert -> LIBERO HDF5 demo file -> replay, and `clad demos` on Ray (real LIBERO, tiny sizes)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from clad.data.libero_layout import (ACTION_DIM, DATA_ATTRS, DEMO_ATTRS, DEMO_DATASETS, IMAGE_KEYS, LOWDIM_KEYS,
                                     ROBOT_STATE_DIM, demo_file_name)

pytestmark = [pytest.mark.libero, pytest.mark.slow]

SUITE, TASK, SIZE = "libero_object", 0, 64


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from clad.libero.demos import generate_task_demos

    out = tmp_path_factory.mktemp("demos")
    # init states from 46 on: demos can leave the first init states unseen for evaluation
    report = generate_task_demos(SUITE, TASK, out, episodes=2, image_size=SIZE, max_attempts=4, first_init=46)
    return out, report


def test_expert_solves_a_libero_object_task(demo_run):
    out, rep = demo_run
    assert rep.demos == 2 and rep.attempts >= 2 and not rep.skipped
    assert set(rep.init_results) <= {46, 47, 48, 49} and 46 in rep.init_results
    assert rep.file.endswith(demo_file_name(rep.task_name)) and (out / demo_file_name(rep.task_name)).is_file()
    assert not list(out.glob(".*.tmp*")), "temporary file left behind"


def test_first_init_out_of_range_is_refused(tmp_path):
    from clad.libero.demos import generate_task_demos

    with pytest.raises(ValueError, match="first_init=50 is out of range"):
        generate_task_demos(SUITE, TASK, tmp_path, episodes=1, first_init=50)


def test_demo_file_has_the_exact_layout(demo_run):
    from clad.libero.suites import get_task

    out, rep = demo_run
    spec = get_task(SUITE, TASK)
    with h5py.File(out / demo_file_name(spec.name), "r") as f:
        data = f["data"]
        assert set(data.attrs) == set(DATA_ATTRS)
        assert list(data.keys()) == ["demo_0", "demo_1"]
        assert int(data.attrs["num_demos"]) == 2
        assert data.attrs["macros_image_convention"] == "opengl"
        assert json.loads(data.attrs["problem_info"])["language_instruction"]
        assert "(:goal" in data.attrs["bddl_file_content"]
        assert data.attrs["bddl_file_name"].endswith(f"{spec.problem_folder}/{spec.name}.bddl")
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["type"] == 1 and env_args["env_kwargs"]["camera_heights"] == SIZE
        demo = data["demo_0"]
        T = int(demo.attrs["num_samples"])
        assert int(data.attrs["total"]) == T + int(data["demo_1"].attrs["num_samples"]) == rep.steps
        assert T > 10
        assert set(demo.attrs) == set(DEMO_ATTRS)
        assert set(demo.keys()) == set(DEMO_DATASETS) | {"obs"}
        assert demo["actions"].shape == (T, ACTION_DIM) and demo["actions"].dtype == np.float64
        assert np.abs(demo["actions"][()]).max() <= 1.0
        D = demo["states"].shape[1]
        assert demo["states"].shape == (T, D) and demo["states"].dtype == np.float64
        assert demo["robot_states"].shape == (T, ROBOT_STATE_DIM) and demo["robot_states"].dtype == np.float64
        for k in ("rewards", "dones"):
            v = demo[k][()]
            assert v.shape == (T,) and v.dtype == np.uint8 and v[-1] == 1 and v[:-1].sum() == 0
        np.testing.assert_array_equal(demo.attrs["init_state"], demo["states"][0])
        assert demo.attrs["init_state"].shape == (D,)
        assert "<mujoco" in demo.attrs["model_file"]
        obs = demo["obs"]
        assert set(obs.keys()) == set(IMAGE_KEYS) | set(LOWDIM_KEYS)
        for k in IMAGE_KEYS:
            assert obs[k].shape == (T, SIZE, SIZE, 3) and obs[k].dtype == np.uint8
            assert obs[k][0].std() > 1.0
        for k, width in LOWDIM_KEYS.items():
            assert obs[k].shape == (T, width) and obs[k].dtype == np.float64, k
        np.testing.assert_allclose(obs["ee_states"][:, :3], obs["ee_pos"][()])
        np.testing.assert_allclose(obs["gripper_states"][()], demo["robot_states"][:, :2])


def test_demo_replays_to_success(demo_run):
    from clad.libero.demo_writer import replay_demo
    from clad.libero.suites import get_task

    out, _ = demo_run
    res = replay_demo(out / demo_file_name(get_task(SUITE, TASK).name), 0)
    assert res.success
    assert res.max_state_error < 1e-9  # exact: no hidden controller state leaks in


@pytest.mark.ray
def test_clad_demos_on_ray_writes_file_and_report_and_resumes(ray_session, tmp_path, capsys):
    from pipelines.cli import main

    from clad.libero.suites import get_task

    out = tmp_path / "ray_demos"
    argv = ["demos", "--suite", SUITE, "--tasks", str(TASK), "--episodes-per-task", "1", "--out", str(out),
            "--actors", "1", "--image-size", str(SIZE), "--max-attempts", "3", "--no-progress", "--no-screen"]
    assert main(argv) == 0
    path = out / demo_file_name(get_task(SUITE, TASK).name)
    assert path.is_file()
    report = json.loads((out / "expert_report.json").read_text())
    assert len(report) == 1 and report[0]["demos"] == 1 and report[0]["task_index"] == TASK
    assert report[0]["success_rate"] > 0 and not report[0]["skipped"]
    mtime = path.stat().st_mtime_ns

    assert main(argv) == 0  # second run: the finished file is skipped, not redone
    assert path.stat().st_mtime_ns == mtime
    report = json.loads((out / "expert_report.json").read_text())
    assert report[0]["skipped"] and report[0]["demos"] == 1
    assert "skipped" in capsys.readouterr().out


@pytest.mark.ray
def test_preprocessing_the_simulator_demos(demo_run, ray_session, tmp_path):
    """The real pipeline on real simulator files: schema, split, statistics, windows for two horizons."""
    from clad.data.preprocess_config import PreprocessConfig
    from clad.data.store import iter_dataset_windows, iter_episodes
    from clad.data.windows import WindowSpec, check_sample, window_shapes
    from pipelines.preprocess import run_preprocess

    out, _ = demo_run
    ds = tmp_path / "ds"
    run_preprocess(out, ds, PreprocessConfig(val_fraction=0.5))
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["counts"]["episodes"] == {"train": 1, "val": 1}
    assert manifest["image_size"] == [SIZE, SIZE]
    (train_ep,) = list(iter_episodes(ds, "train"))
    (val_ep,) = list(iter_episodes(ds, "val"))
    assert {train_ep["episode_id"], val_ep["episode_id"]} == {f"{demo_file_name(train_ep['task_name'])}#demo_{i}"
                                                          for i in (0, 1)}
    with h5py.File(out / demo_file_name(train_ep["task_name"]), "r") as f:
        demo = f["data"][train_ep["episode_id"].split("#")[1]]
        np.testing.assert_array_equal(train_ep["agentview_rgb"], demo["obs/agentview_rgb"][()])
        actions = demo["actions"][()]
    stats = json.loads((ds / "stats.json").read_text())["keys"]["actions"]
    np.testing.assert_allclose(stats["mean"], actions.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["max"], actions.max(0), rtol=1e-5, atol=1e-6)
    for tau in (2, 6):
        spec = WindowSpec(tau=tau, chunk=4, views=("agentview", "eye_in_hand"))
        windows = [w for b in iter_dataset_windows(ds, "train", spec) for w in _rows(b)]
        assert len(windows) == train_ep["length"]
        shapes = window_shapes(spec, (SIZE, SIZE), lang_dim=384)
        for w in windows:
            check_sample(w, shapes)
        # frame t - tau of the window at t is frame max(t - tau, 0) of the episode
        t = train_ep["length"] - 1
        np.testing.assert_array_equal(windows[t]["rgb_prev"][0], train_ep["agentview_rgb"][t - tau].transpose(2, 0, 1))


def _rows(batch):
    n = len(next(iter(batch.values())))
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]
