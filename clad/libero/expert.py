"""A scripted pick-and-place expert driven by the simulator's privileged object poses.

The goal is read from the task's bddl (`(:goal (And (In obj region) (On obj target) ...))`), not from
per-task code. For each unmet goal predicate the expert runs a closed-loop phase machine

    approach -> descend -> close -> lift -> transport -> lower -> open -> retreat

with a P-controller on the end-effector position and a top-down orientation. Yaw and a small grasp
shift are chosen per object: the fingers must span the object's narrow side, and the footprints of the
(wide) Panda hand and of the open fingers must not overlap taller neighbours (a 2-D separating-axis test
against every neighbouring collision geom). This is what makes the flat cream-cheese box beside a can
graspable. A blocked descent is detected (the eef stalls) and grasped from there; a grasp is checked
after lifting and retried with a different yaw/shift if the object did not come along.

Goals come from clad/libero/task_goals.py, object boxes and rotations from clad/libero/scene_geometry.py;
this module is the phase machine and the episode loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clad.config import FrozenConfig
from clad.libero.env import LiberoEnv
from clad.libero.runtime import ensure_libero
from clad.libero.scene_geometry import ObjGeom, axis_angle, box_corners, collision_geoms, subtree_bodies, yaw_rotation
from clad.libero.task_goals import PlaceGoal, parse_goals

ensure_libero()  # mujoco picks its GL backend when imported: MUJOCO_GL must be set first
import mujoco  # noqa: E402

__all__ = ["ExpertConfig", "PlaceGoal", "PickPlaceExpert", "parse_goals", "run_expert_episode", "EpisodeResult"]

# OSC_POSE actions are deltas scaled by the controller's output_max: 0.05 m and 0.5 rad per unit action.
class ExpertConfig(FrozenConfig):
    """Gains and clearances of the scripted expert (metres, steps)."""

    kp_pos: float = 12.0            # action units per metre of position error (saturates beyond ~8 cm)
    kp_rot: float = 1.5             # action units per radian of orientation error
    pos_tol: float = 0.008          # a waypoint counts as reached within this distance
    hover: float = 0.06             # approach height above the grasp point
    max_grasp_depth: float = 0.03   # how far below the object's top the fingers go
    max_finger_span: float = 0.072  # widest object side the gripper can close on
    close_steps: int = 14
    open_steps: int = 10
    clearance: float = 0.03         # vertical margin when carrying over other objects
    hand_half_length: float = 0.11  # hand footprint along the finger axis (half)
    hand_half_width: float = 0.04   # hand footprint across the finger axis (half)
    finger_length: float = 0.045    # fingertip to hand-bottom distance
    yaw_step_deg: float = 15.0
    rim_inset: float = 0.012        # objects wider than the gripper are pinched this far inside their rim
    max_retries: int = 2
    phase_timeout: int = 80         # steps before a waypoint phase gives up and moves on


# ---------------------------------------------------------------- expert
@dataclass
class _Plan:
    goal: PlaceGoal
    yaw: float = 0.0
    grasp: np.ndarray = field(default_factory=lambda: np.zeros(3))
    hang: float = 0.0     # object bottom below the eef while held
    offset: np.ndarray = field(default_factory=lambda: np.zeros(2))  # grasp xy - object centre xy
    retries: int = 0


class PickPlaceExpert:
    """Closed-loop scripted expert. Call `act()` once per env step; `done` once every goal was handled."""

    def __init__(self, env: LiberoEnv, cfg: ExpertConfig | None = None):
        self.env = env
        self.cfg = cfg or ExpertConfig()
        self.goals = parse_goals(env)
        inner = env.raw.env
        self._model = env.sim.model._model
        self._data = env.sim.data._data
        self._obj_geoms = {name: collision_geoms(self._model, subtree_bodies(self._model, bid))
                           for name, bid in inner.obj_body_id.items() if name in inner.objects_dict}
        self.reset()

    # -- state access
    def geom(self, name: str) -> ObjGeom:
        pts = box_corners(self._model, self._data, self._obj_geoms[name])
        return ObjGeom(pts, pts.min(0), pts.max(0))

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        raw = self.env.raw_obs()
        pos = np.asarray(raw["robot0_eef_pos"], dtype=np.float64)
        mat = np.zeros(9)
        q = np.asarray(raw["robot0_eef_quat"], dtype=np.float64)  # robosuite: x, y, z, w
        mujoco.mju_quat2Mat(mat, np.array([q[3], q[0], q[1], q[2]]))
        return pos, mat.reshape(3, 3)

    def _goal_met(self, goal: PlaceGoal) -> bool:
        inner = self.env.raw.env
        return bool(inner._eval_predicate([goal.predicate or goal.kind, goal.obj, goal.target]))

    # -- planning
    def reset(self) -> None:
        self._queue = list(self.goals)
        self._plan: _Plan | None = None
        self._tried: dict[str, list[tuple[float, float]]] = {}
        self._phase = "idle"
        self._t = 0
        self.done = False
        self.failed = False

    def _neighbour_boxes(self, obj: str) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Footprints of the other objects' collision geoms: (2-D corners (8,2), SAT axes (k,2), top z)."""
        out = []
        m, d = self._model, self._data
        for name, geoms in self._obj_geoms.items():
            if name == obj:
                continue
            for g in geoms:
                pts = box_corners(m, d, [g])
                axes = d.geom_xmat[g].reshape(3, 3).T[:, :2]  # local axes projected on the floor
                norms = np.linalg.norm(axes, axis=1)
                axes = axes[norms > 1e-6] / norms[norms > 1e-6, None]
                normals = np.stack([-axes[:, 1], axes[:, 0]], axis=1) if len(axes) else np.zeros((0, 2))
                out.append((pts[:, :2], normals, float(pts[:, 2].max())))
        return out

    @staticmethod
    def _penetration(rect_c: np.ndarray, u: np.ndarray, v: np.ndarray, half: tuple[float, float],
                     pts: np.ndarray, normals: np.ndarray) -> float:
        """2-D separating-axis test of a rectangle (centre, axes u/v, half sizes) against the convex hull of
        `pts`: 0 if they are apart, else the smallest overlap over the tested axes (penetration depth)."""
        hu, hv = half
        rect = np.array([rect_c + su * hu * u + sv * hv * v for su in (-1, 1) for sv in (-1, 1)])
        depth = np.inf
        for ax in (u, v, *normals):
            a, b = rect @ ax, pts @ ax
            overlap = min(a.max(), b.max()) - max(a.min(), b.min())
            if overlap <= 0:
                return 0.0
            depth = min(depth, overlap)
        return float(depth)

    def _choose_grasp(self, obj: str, grasp: np.ndarray,
                      tried: tuple[tuple[float, float], ...] = ()) -> tuple[float, np.ndarray, float]:
        """Pick yaw and grasp xy (small shifts along the object's long side) with the least interference.

        Interference = how far a neighbour rises above the bottom of a part of the gripper (hand body or
        open fingers) whose footprint it overlaps at the grasp pose; 0 means a collision-free descent.
        """
        cfg = self.cfg
        me = self.geom(obj)
        boxes = self._neighbour_boxes(obj)
        _, cur = self._eef()
        cur_yaw = np.arctan2(cur[1, 0], cur[0, 0])
        hand_bottom = grasp[2] + cfg.finger_length
        finger_bottom = grasp[2] - 0.01
        best, best_key = (0.0, grasp.copy(), 0.0), None
        for yaw in np.deg2rad(np.arange(-90.0, 90.0, cfg.yaw_step_deg)):
            u = np.array([np.sin(yaw), -np.cos(yaw)])   # finger closing axis (hand's long side)
            v = np.array([np.cos(yaw), np.sin(yaw)])
            span = me.width_along(u)
            along = me.width_along(v)
            fits = span <= cfg.max_finger_span
            if fits:  # slide along the object's long side
                shifts = [0.0] + [s for s in (-0.015, 0.015, -0.03, 0.03) if abs(s) < 0.5 * along - 0.01]
                offsets = [s * v for s in shifts]
            else:  # too wide (a bowl): pinch its wall, the fingers straddling the rim on either side
                rim = 0.5 * span - cfg.rim_inset
                shifts = [rim, -rim]
                offsets = [rim * u, -rim * u]
            for shift, off in zip(shifts, offsets):
                c = grasp[:2] + off
                worst = 0.0  # planar penetration of the gripper's footprint into taller neighbours
                for pts, normals, top in boxes:
                    if top > hand_bottom:
                        worst = max(worst, self._penetration(c, u, v, (cfg.hand_half_length, cfg.hand_half_width),
                                                             pts, normals))
                    if top > finger_bottom:
                        for side in (-1.0, 1.0):
                            fc = c + side * 0.05 * u  # open fingers sit ~4-6 cm from the centre
                            worst = max(worst, 2.0 * self._penetration(fc, u, v, (0.012, 0.012), pts, normals))
                if any(abs(yaw - ty) < 1e-6 and abs(shift - ts) < 1e-6 for ty, ts in tried):
                    worst += 1.0  # a retry never repeats a grasp that already failed
                turn = abs((yaw - cur_yaw + np.pi / 2) % np.pi - np.pi / 2)
                key = (fits, -round(worst, 3), -abs(shift) if fits else 0.0, -span if span > 0.05 else 0.0, -turn)
                if best_key is None or key > best_key:
                    best, best_key = (float(yaw), np.array([c[0], c[1], grasp[2]]), float(shift)), key
        return best

    def _start(self, goal: PlaceGoal, retries: int = 0) -> None:
        g = self.geom(goal.obj)
        height = g.hi[2] - g.lo[2]
        depth = min(self.cfg.max_grasp_depth, 0.5 * height)
        grasp = np.array([g.center[0], g.center[1], max(g.hi[2] - depth, g.lo[2] + 0.008)])
        tried = tuple(self._tried.get(goal.obj, ()))
        yaw, grasp, shift = self._choose_grasp(goal.obj, grasp, tried)
        self._tried.setdefault(goal.obj, []).append((yaw, shift))
        self._plan = _Plan(goal=goal, yaw=yaw, grasp=grasp, hang=grasp[2] - g.lo[2], retries=retries,
                           offset=grasp[:2] - g.center[:2])
        self._set_phase("approach")

    def _set_phase(self, phase: str) -> None:
        self._phase, self._t = phase, 0
        self._trail: list[np.ndarray] = []

    def _stalled(self, window: int = 8, eps: float = 0.002) -> bool:
        """The eef moved less than `eps` over the last `window` steps (blocked by contact)."""
        pos, _ = self._eef()
        self._trail.append(pos)
        return len(self._trail) > window and float(np.linalg.norm(self._trail[-1] - self._trail[-1 - window])) < eps

    def _carry_z(self, held: str) -> float:
        tops = [self.geom(n).hi[2] for n in self._obj_geoms if n != held]
        return max(tops) + self._plan.hang + self.cfg.clearance

    def _place_target(self) -> tuple[np.ndarray, float]:
        """(xy, release eef z) for the current goal."""
        goal, inner = self._plan.goal, self.env.raw.env
        if goal.kind == "in":
            xy = np.array(self._data.site_xpos[mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_SITE,
                                                                     goal.target)][:2])
            parent = inner.object_sites_dict[goal.target].parent_name
            top = self.geom(parent).hi[2] if parent in self._obj_geoms else self._data.site_xpos[0][2]
        else:
            tg = self.geom(goal.target)
            xy, top = tg.center[:2], tg.hi[2]
        # the eef is off the object's centre by the grasp offset: put the object, not the hand, on target
        return xy + self._plan.offset, top + self._plan.hang + 0.01

    # -- control
    def _servo(self, target: np.ndarray, yaw: float, grip: float) -> tuple[np.ndarray, float]:
        pos, rot = self._eef()
        err = target - pos
        a = np.zeros(7)
        a[:3] = np.clip(err * self.cfg.kp_pos, -1.0, 1.0)
        a[3:6] = np.clip(axis_angle(yaw_rotation(yaw) @ rot.T) * self.cfg.kp_rot, -1.0, 1.0)
        a[6] = grip
        return a, float(np.linalg.norm(err))

    def act(self) -> np.ndarray:
        """The next 7-D action (OSC_POSE delta, gripper -1 open / +1 closed)."""
        cfg = self.cfg
        if self._plan is None:
            while self._queue and self._goal_met(self._queue[0]):
                self._queue.pop(0)
            if not self._queue:
                self.done = True
                return np.array([0, 0, 0, 0, 0, 0, -1.0])
            self._start(self._queue.pop(0))
        p, self._t = self._plan, self._t + 1
        timed_out = self._t > cfg.phase_timeout
        ph = self._phase
        if ph == "approach":
            target = p.grasp + np.array([0, 0, cfg.hover])
            pos, _ = self._eef()
            if pos[2] < target[2] - 0.02 and np.linalg.norm(pos[:2] - target[:2]) > 0.02:
                target = np.array([pos[0], pos[1], target[2]])  # rise first, never sweep low
            a, e = self._servo(target, p.yaw, -1.0)
            if e < cfg.pos_tol * 1.5 or timed_out:
                self._set_phase("descend")
            return a
        if ph == "descend":
            a, e = self._servo(p.grasp, p.yaw, -1.0)
            if e < cfg.pos_tol or timed_out or self._stalled():
                self._set_phase("close")
            return a
        if ph == "close":
            a, _ = self._servo(p.grasp, p.yaw, 1.0)
            if self._t >= cfg.close_steps:
                self._lift_from = self.geom(p.goal.obj).lo[2]
                self._set_phase("lift")
            return a
        if ph == "lift":
            pos, _ = self._eef()
            target = np.array([p.grasp[0], p.grasp[1], self._carry_z(p.goal.obj)])
            a, e = self._servo(target, p.yaw, 1.0)
            if e < cfg.pos_tol * 2 or timed_out:
                held = self.geom(p.goal.obj).lo[2] > self._lift_from + 0.03
                if held:
                    self._set_phase("transport")
                elif p.retries < cfg.max_retries:
                    self._start(p.goal, p.retries + 1)
                else:
                    self.failed = True
                    self._plan = None
            return a
        if ph == "transport":
            xy, _ = self._place_target()
            target = np.array([xy[0], xy[1], self._carry_z(p.goal.obj)])
            a, e = self._servo(target, p.yaw, 1.0)
            if e < cfg.pos_tol * 2 or timed_out:
                self._set_phase("lower")
            return a
        if ph == "lower":
            xy, z = self._place_target()
            a, e = self._servo(np.array([xy[0], xy[1], z]), p.yaw, 1.0)
            if e < cfg.pos_tol * 1.5 or timed_out or self._stalled():
                self._set_phase("open")
            return a
        if ph == "open":
            pos, _ = self._eef()
            a, _ = self._servo(pos, p.yaw, -1.0)
            a[:6] = 0.0
            if self._t >= cfg.open_steps:
                self._retreat_z = pos[2] + 0.08
                self._set_phase("retreat")
            return a
        if ph == "retreat":
            pos, _ = self._eef()
            a, e = self._servo(np.array([pos[0], pos[1], self._retreat_z]), p.yaw, -1.0)
            if abs(pos[2] - self._retreat_z) < 0.02 or timed_out:
                self._plan = None
            return a
        raise AssertionError(ph)


@dataclass
class EpisodeResult:
    """What one expert episode produced. Arrays are per control step t (after settling)."""

    success: bool
    steps: int
    actions: np.ndarray                  # (T, 7)
    observations: list[dict[str, np.ndarray]]  # T observation dicts (env layout), obs[t] chose actions[t]
    init_index: int | None
    final_obs: dict[str, np.ndarray] | None = None


def run_expert_episode(env: LiberoEnv, init_index: int, cfg: ExpertConfig | None = None,
                       max_steps: int | None = None, record: bool = True,
                       extra_steps: int = 0) -> EpisodeResult:
    """Reset to `init_index`, run the expert until success or `max_steps` (default: the env's budget).

    `extra_steps` more steps (gripper open, no motion) are kept after the first success so the stored
    episode ends at rest, still successful.
    """
    obs = env.reset(init_index)
    expert = PickPlaceExpert(env, cfg)
    limit = max_steps or env.max_steps
    actions, observations = [], []
    success, tail = False, 0
    for _ in range(limit):
        a = expert.act() if not success else np.array([0, 0, 0, 0, 0, 0, -1.0])
        if record:
            observations.append(obs)
        actions.append(a)
        obs, _, done, _ = env.step(a)
        if done:
            success = True
        if success:
            if tail >= extra_steps:
                break
            tail += 1
        elif expert.failed:
            break
    success = success and env.check_success()
    return EpisodeResult(success=success, steps=len(actions), actions=np.asarray(actions, dtype=np.float64),
                         observations=observations, init_index=init_index, final_obs=obs)
