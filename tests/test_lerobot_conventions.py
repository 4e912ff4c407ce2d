"""The conventions of a LeRobot LIBERO dataset against the real simulator: replaying a fixture episode from its
recorded initial state, the env's ee_states ++ gripper_states equal `observation.state` and its joint_states
equal `observation.states.joint_state` at every step, and its frames turned to the dataset's (upright)
orientation equal the dataset's frames (PNG: exactly up to rendering noise; H.264: up to compression)."""

from __future__ import annotations

import numpy as np
import pytest

from lerobot_fixtures import fixture_dir

pytestmark = [pytest.mark.slow, pytest.mark.libero]

VIEWS = ("agentview_rgb", "eye_in_hand_rgb")
LOWDIM = ("ee_states", "gripper_states", "joint_states")


def _mean_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def test_states_and_frames_of_a_lerobot_episode_are_the_simulator_s():
    from clad.data import lerobot_reader as R
    from clad.data.conventions import SIMULATOR_ORIENTATION, reorient
    from clad.libero.env import EnvConfig, LiberoEnv

    png_layout = R.load_layout(fixture_dir("libero_v3_images"), VIEWS)
    ep = R.read_episode(png_layout, 0, VIEWS, LOWDIM)
    vid = R.read_episode(R.load_layout(fixture_dir("libero_v3_video"), VIEWS), 0, VIEWS, ())
    state = np.concatenate([ep["ee_states"], ep["gripper_states"]], 1)  # = observation.state
    spec = R.match_benchmark_task(png_layout.tasks[0])
    T = len(ep["actions"])
    checks = {0, T // 2, T - 1}
    with LiberoEnv(EnvConfig(suite=spec.suite, camera_size=128), spec) as env:
        for k in range(50):  # the fixture does not say which of the task's fixed init states it started from
            obs = env.reset(init_index=k)
            if np.abs(np.concatenate([obs["ee_states"], obs["gripper_states"]]) - state[0]).max() < 1e-5:
                break
        else:
            pytest.fail("no init state of the task reproduces the first observation.state of the fixture")
        for t in range(T):
            np.testing.assert_allclose(np.concatenate([obs["ee_states"], obs["gripper_states"]]), state[t],
                                       atol=1e-4, err_msg=f"observation.state at step {t}")
            np.testing.assert_allclose(obs["joint_states"], ep["joint_states"][t], atol=1e-4,
                                       err_msg=f"observation.states.joint_state at step {t}")
            if t in checks:
                for key in VIEWS:
                    upright = reorient(obs[key], SIMULATOR_ORIENTATION, "upright")
                    assert _mean_abs(upright, ep[key][t]) < 1.0, (key, t)
                    assert _mean_abs(obs[key], ep[key][t]) > 10.0, (key, t)  # orientation is not a no-op
                    assert _mean_abs(upright, vid[key][t]) < 8.0, (key, t)
            if t == T - 1:
                break
            env.set_cameras(t + 1 in checks)  # render only where frames are compared
            obs, _, _, _ = env.step(ep["actions"][t])
