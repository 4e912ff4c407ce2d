"""Object boxes and gripper orientations from the MuJoCo model, for the scripted expert.

Geometry comes from each object's collision geoms: `model.geom_aabb` (local centre + half sizes)
transformed by `data.geom_xpos/xmat` gives 8 world corners per geom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clad.libero.runtime import ensure_libero

ensure_libero()  # mujoco picks its GL backend when imported: MUJOCO_GL must be set first
import mujoco  # noqa: E402

__all__ = ["ObjGeom", "axis_angle", "box_corners", "collision_geoms", "subtree_bodies", "yaw_rotation"]

# eef frame pointing down with the fingers closing along world y at yaw 0 (the robot's home pose)
_R_DOWN = np.diag([1.0, -1.0, -1.0])


def subtree_bodies(model, root: int) -> set[int]:
    """Body `root` and every body below it (an object's parts)."""
    out = {root}
    for b in range(root + 1, model.nbody):
        p = model.body_parentid[b]
        if p in out:
            out.add(b)
    return out


def collision_geoms(model, bodies: set[int]) -> list[int]:
    """The geoms of `bodies` that collide (visual-only meshes do not block the gripper)."""
    return [g for g in range(model.ngeom)
            if model.geom_bodyid[g] in bodies and (model.geom_contype[g] or model.geom_conaffinity[g])]


_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)


def box_corners(model, data, geoms: list[int]) -> np.ndarray:
    """World corners (8*len(geoms), 3) of the geoms' local bounding boxes."""
    pts = []
    for g in geoms:
        c, h = model.geom_aabb[g, :3], model.geom_aabb[g, 3:]
        local = c + _SIGNS * h
        pts.append(data.geom_xpos[g] + local @ data.geom_xmat[g].reshape(3, 3).T)
    return np.concatenate(pts) if pts else np.zeros((0, 3))


@dataclass
class ObjGeom:
    """An object's world-frame box corners and their axis-aligned bounds."""

    corners: np.ndarray  # (K, 3) world
    lo: np.ndarray       # (3,)
    hi: np.ndarray       # (3,)

    @property
    def center(self) -> np.ndarray:
        return 0.5 * (self.lo + self.hi)

    def width_along(self, d: np.ndarray) -> float:
        proj = self.corners[:, :2] @ d
        return float(proj.max() - proj.min())


def yaw_rotation(yaw: float) -> np.ndarray:
    """The top-down gripper orientation turned by `yaw` about world z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ _R_DOWN


def axis_angle(r: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis-angle vector (3,)."""
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, r.reshape(-1))
    w, v = quat[0], quat[1:]
    if w < 0:
        w, v = -w, -v
    n = np.linalg.norm(v)
    if n < 1e-9:
        return np.zeros(3)
    return v / n * 2.0 * np.arctan2(n, w)
