"""One env factory for every LIBERO suite, with observations in the demo-file layout.

    env = LiberoEnv(EnvConfig(suite="libero_object"), task=3)
    obs = env.reset(init_index=0)          # fixed init state 0, then `settle_steps` no-op steps
    obs, reward, done, info = env.step(action)   # action (7,) in [-1, 1]
    env.close()

Observation dict (see clad/data/libero_layout.py; cameras only when `render=True`):
    agentview_rgb, eye_in_hand_rgb   (H, W, 3) uint8, OpenGL convention (vertically flipped), as stored
    gripper_states (2,), joint_states (7,), ee_states (6,) = pos + axis-angle, ee_pos (3,), ee_ori (3,)
    robot_states (9,) = gripper qpos + eef pos + eef quat,  states (D,) = flattened MuJoCo state
all float64 except the images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic

from clad.config import FrozenConfig
from clad.data.libero_layout import ACTION_DIM, CAMERA_TO_OBS_KEY
from clad.errors import CladError
from clad.libero.runtime import ensure_libero
from clad.libero.suites import MAX_STEPS, TaskSpec, check_suite, get_task, init_state

__all__ = ["EnvConfig", "LiberoEnv", "adapt_obs", "SETTLE_ACTION", "ROBOSUITE_CAMERAS"]

# config camera name -> robosuite camera name
ROBOSUITE_CAMERAS = {"agentview": "agentview", "eye_in_hand": "robot0_eye_in_hand"}

# zero motion, gripper open: what openvla/lerobot step after set_init_state so objects settle
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)


class EnvConfig(FrozenConfig):
    """How to build a LIBERO env. `max_steps` None means the suite's standard budget."""

    suite: str = "libero_object"
    camera_size: int = pydantic.Field(128, ge=8, le=1024)
    cameras: tuple[str, ...] = ("agentview", "eye_in_hand")
    render: bool = True            # False: ControlEnv with no renderer (physics only, ~10x faster)
    settle_steps: int = pydantic.Field(10, ge=0)
    hard_reset: bool = False       # True rebuilds the MjModel from XML on every reset (1-3 s)
    max_steps: int | None = None
    seed: int = 0

    @pydantic.field_validator("suite")
    @classmethod
    def _known_suite(cls, v: str) -> str:
        if v not in MAX_STEPS:
            raise ValueError(f"unknown suite {v!r}: choose one of {', '.join(MAX_STEPS)}")
        return v

    @pydantic.field_validator("cameras")
    @classmethod
    def _known_cameras(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if c not in ROBOSUITE_CAMERAS]
        if bad:
            raise ValueError(f"unknown camera(s) {bad}: choose from {', '.join(ROBOSUITE_CAMERAS)}")
        return v


def adapt_obs(raw: dict[str, Any], sim_state: np.ndarray | None = None,
              cameras: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """robosuite observation -> the demo-file observation keys (plus robot_states and, if given, states)."""
    from robosuite.utils.transform_utils import quat2axisangle

    pos = np.asarray(raw["robot0_eef_pos"], dtype=np.float64)
    ori = np.asarray(quat2axisangle(np.asarray(raw["robot0_eef_quat"], dtype=np.float64)), dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for cam in cameras:
        img = raw[f"{ROBOSUITE_CAMERAS[cam]}_image"]
        out[CAMERA_TO_OBS_KEY[cam]] = np.ascontiguousarray(img, dtype=np.uint8)
    out["gripper_states"] = np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64)
    out["joint_states"] = np.asarray(raw["robot0_joint_pos"], dtype=np.float64)
    out["ee_states"] = np.concatenate([pos, ori])
    out["ee_pos"] = pos
    out["ee_ori"] = ori
    out["robot_states"] = np.concatenate([raw["robot0_gripper_qpos"], raw["robot0_eef_pos"],
                                          raw["robot0_eef_quat"]]).astype(np.float64)
    if sim_state is not None:
        out["states"] = np.asarray(sim_state, dtype=np.float64)
    return out


class LiberoEnv:
    """A LIBERO task env (soft reset, fixed init states, layout-shaped observations)."""

    def __init__(self, cfg: EnvConfig, task: int | str | TaskSpec):
        ensure_libero()
        check_suite(cfg.suite)
        self.cfg = cfg
        self.task = task if isinstance(task, TaskSpec) else get_task(cfg.suite, task)
        if self.task.suite != cfg.suite:
            raise CladError(f"task {self.task.name} belongs to {self.task.suite}, not to suite {cfg.suite!r}")
        self.max_steps = cfg.max_steps or MAX_STEPS[cfg.suite]
        self._cameras = cfg.cameras if cfg.render else ()
        from libero.libero.envs.env_wrapper import ControlEnv

        kwargs: dict[str, Any] = dict(bddl_file_name=str(self.task.bddl_path), hard_reset=cfg.hard_reset)
        if cfg.render:
            kwargs.update(has_renderer=False, has_offscreen_renderer=True, use_camera_obs=True,
                          camera_names=[ROBOSUITE_CAMERAS[c] for c in cfg.cameras],
                          camera_heights=cfg.camera_size, camera_widths=cfg.camera_size)
        else:
            kwargs.update(has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False)
        self._env = ControlEnv(**kwargs)
        self._env.seed(cfg.seed)
        self._env.reset()  # builds the sim once; later resets are soft
        self.steps = 0
        self.init_index: int | None = None
        self._cameras_on = bool(self._cameras)

    # ---- access to the simulator (privileged: for the scripted expert and the demo writer) ----
    @property
    def raw(self):
        """The LIBERO ControlEnv (its `.env` is the robosuite task env)."""
        return self._env

    @property
    def sim(self):
        return self._env.sim

    @property
    def language(self) -> str:
        return self.task.language

    def sim_state(self) -> np.ndarray:
        """Flattened MuJoCo state (D,) float64: time, qpos, qvel."""
        return np.asarray(self._env.get_sim_state(), dtype=np.float64).copy()

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    def goal_progress(self) -> tuple[int, int]:
        """(met, total): how many of the task's BDDL goal predicates hold now. Success is met == total;
        the count gives long-horizon tasks (two objects to place, ...) partial credit."""
        domain = self._env.env  # LIBERO's BDDL domain behind the ControlEnv wrapper
        goals = domain.parsed_problem["goal_state"]
        return sum(bool(domain._eval_predicate(g)) for g in goals), len(goals)

    def _adapt(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        return adapt_obs(raw, self.sim_state(), self._cameras if self._cameras_on else ())

    # ---- rendering on demand ----
    @property
    def cameras_on(self) -> bool:
        return self._cameras_on

    def set_cameras(self, on: bool) -> None:
        """Render the cameras at the following steps (`on`) or skip them (observations then have no image keys).

        Rendering two cameras costs ~6x the physics of a step on a CPU renderer (~110 ms of ~130 ms), and
        a chunked policy reads images only when it replans: skipping the other frames is the largest
        speed-up of evaluation. A re-enabled camera samples at the next step exactly as if it had never
        been off (its sampling clock is reset and it is marked as not yet sampled).
        """
        on = bool(on) and bool(self._cameras)
        if on == self._cameras_on:
            return
        robosuite_env = self._env.env
        for cam in self._cameras:
            name = f"{ROBOSUITE_CAMERAS[cam]}_image"
            robosuite_env.modify_observable(name, "enabled", on)
            if on:
                # robosuite's Observable.reset() keeps `_sampled`: an observable switched off right after it
                # sampled would skip the next step and return zeros (seen on the first reset of a new env)
                robosuite_env._observables[name]._sampled = False
        self._cameras_on = on

    # ---- episode control ----
    def reset(self, init_index: int | None = 0, state: np.ndarray | None = None,
              settle_steps: int | None = None) -> dict[str, np.ndarray]:
        """Reset to fixed init state `init_index` (or to an explicit flattened `state`), then settle.

        `settle_steps` None uses the config's value; the settle steps do not count towards `max_steps`.
        Only the returned observation is rendered (the reset and all but the last settle step are not),
        and the cameras are on afterwards.
        """
        n = self.cfg.settle_steps if settle_steps is None else settle_steps
        if state is None:
            state = init_state(self.task, 0 if init_index is None else init_index)
            self.init_index = 0 if init_index is None else int(init_index)
        else:
            self.init_index = None
        self.set_cameras(False)
        self._env.reset()
        self.set_cameras(n == 0)  # set_init_state renders only when it gives the returned observation
        raw = self._env.set_init_state(np.asarray(state, dtype=np.float64))
        self._open_gripper_command()
        self._refresh_controllers()
        for i in range(n):
            self.set_cameras(i == n - 1)
            raw, _, _, _ = self._env.step(SETTLE_ACTION)
        self.steps = 0
        self._last_raw = raw
        return self._adapt(raw)

    def _open_gripper_command(self) -> None:
        """Put the grippers' hidden command state at 'fully open'.

        robosuite grippers integrate their command (`current_action`, +-0.01 per physics substep) and keep
        it outside the MuJoCo state, across soft resets. Without this, the first steps after a reset
        depend on the previous episode, and a demo replayed from its first state diverges.
        """
        for robot in self._env.env.robots:
            gripper = getattr(robot, "gripper", None)
            if gripper is None or not hasattr(gripper, "current_action"):
                continue
            gripper.current_action = np.zeros_like(np.asarray(gripper.current_action, dtype=np.float64))
            steps = int(np.ceil(2.0 / max(float(getattr(gripper, "speed", 0.01)), 1e-3))) + 1
            open_cmd = -np.ones(gripper.dof)
            for _ in range(steps):  # saturate through the gripper's own update rule (generic over grippers)
                gripper.format_action(open_cmd)

    def _refresh_controllers(self) -> None:
        """Make the arm controllers read the state just set.

        A soft reset builds a new controller at the robot's home pose; its cached eef pose is only refreshed
        after the first control substep, so the first action after `set_init_state` would aim from the
        home pose. Forcing the update makes that step depend on the set state alone (exact replays).
        """
        for robot in self._env.env.robots:
            controller = getattr(robot, "controller", None)
            if controller is not None:
                controller.update(force=True)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, dict[str, Any]]:
        """Apply one 7-D action. done = task success; info['truncated'] when max_steps is reached."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise CladError(f"action must have shape ({ACTION_DIM},), got {action.shape}")
        raw, reward, done, info = self._env.step(action)
        self.steps += 1
        self._last_raw = raw
        info = dict(info or {})
        info["success"] = bool(done)
        info["truncated"] = self.steps >= self.max_steps and not done
        return self._adapt(raw), float(reward), bool(done), info

    def raw_obs(self) -> dict[str, Any]:
        """The last robosuite observation (privileged object poses included)."""
        return self._last_raw

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()

    def __enter__(self) -> "LiberoEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
