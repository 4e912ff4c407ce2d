"""One evaluation episode under the standard LIBERO protocol.

    result = run_episode(env, policy, task, init_index=3, seed=..., max_steps=280, settle_steps=10)

reset to fixed init state `init_index` -> `settle_steps` no-op steps (not counted) -> up to `max_steps`
policy steps, stopping at the first success. Abnormal ends are recorded, never silent:
a NaN/Inf or wrongly shaped action -> error_kind "bad_action"; the simulator raising -> "sim_error";
the policy raising -> "policy_error". All three count as failures.
"""

from __future__ import annotations

import time
import traceback

import numpy as np

from clad.eval.policy import EpisodeContext, RolloutPolicy, frames_needed
from clad.eval.protocol import EpisodeSpec
from clad.eval.results import EpisodeResult
from clad.eval.video import FrameGrabber

__all__ = ["run_episode", "run_spec"]


def _short(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(err).__name__}: {err}{where}"[:500]


def _seed_env(env, seed: int) -> None:
    # The init state overwrites the whole MuJoCo state, but robosuite's reset samples placements from
    # numpy's global RNG and the env keeps its own seed: pin both so reruns are bit-identical.
    np.random.seed(seed % (1 << 32))
    try:
        env.raw.seed(seed % (1 << 32))
    except Exception:  # some robosuite envs have no seed(); the init state still fixes the scene
        pass


def run_episode(env, policy: RolloutPolicy, task, init_index: int, seed: int, max_steps: int, settle_steps: int,
                record_video: bool = False, *, episode: int = 0, env_id: int = 0,
                frames: FrameGrabber | None = None) -> EpisodeResult:
    """Run one episode of `task` (clad.libero.suites.TaskSpec) in `env` (clad.libero.env.LiberoEnv).

    `policy` gets `env_id` as its env id. Returns an `EpisodeResult`; `frames` (T+1, H, W, 3) is set when
    `record_video` (grabbed with `frames`, or a FrameGrabber made here).
    """
    t0 = time.perf_counter()
    res = EpisodeResult(suite=task.suite, task_index=task.index, task_name=task.name, episode=episode,
                        init_index=init_index, seed=seed, success=False, steps=0, wall_s=0.0)
    video: list[np.ndarray] = []
    own_grabber = record_video and frames is None
    grabber = FrameGrabber(env) if own_grabber else frames
    action_l1 = 0.0
    track_goals = hasattr(env, "goal_progress")

    def note_goals() -> None:  # partial credit: the most goal predicates met at once
        met, total = env.goal_progress()
        res.goals_met, res.goals_total = max(met, res.goals_met or 0), total

    def fail(kind: str, reason: str) -> EpisodeResult:
        res.error_kind, res.error = kind, reason
        return res

    try:
        try:
            _seed_env(env, seed)
            obs = env.reset(init_index=init_index, settle_steps=settle_steps)
        except Exception as err:
            return fail("sim_error", f"reset: {_short(err)}")
        if track_goals:
            note_goals()
        ctx = EpisodeContext(seed=seed, suite=task.suite, task_index=task.index, task_name=task.name,
                             language=task.language, init_index=init_index,
                             env=env if policy.needs_env else None)
        try:
            conditioned = policy.reset([env_id], [ctx])
        except Exception as err:
            return fail("policy_error", f"reset: {_short(err)}")
        if conditioned:  # a policy that reads language says which string it conditions on (logged per episode)
            res.instruction = conditioned[0]
        if record_video:
            video.append(grabber.grab(obs))
        for t in range(max_steps):
            try:
                action = np.asarray(policy.act([env_id], [obs], [t]), dtype=np.float64)
            except Exception as err:
                return fail("policy_error", f"step {t}: {_short(err)}")
            if action.shape != (1, 7):
                return fail("bad_action", f"step {t}: action batch has shape {action.shape}, expected (1, 7)")
            a = action[0]
            if not np.all(np.isfinite(a)):
                return fail("bad_action", f"step {t}: non-finite action {a.tolist()}")
            action_l1 += float(np.abs(a).sum())
            if not record_video and hasattr(env, "set_cameras"):
                # render only the frames the policy will read (chunked policies: ~1 step in h)
                env.set_cameras(frames_needed(policy, env_id, t + 1))
            try:
                obs, _, done, _ = env.step(a)
            except Exception as err:
                return fail("sim_error", f"step {t}: {_short(err)}")
            res.steps = t + 1
            if track_goals:
                note_goals()
            if record_video:
                video.append(grabber.grab(obs))
            if done:
                res.success = True
                break
        return res
    finally:
        res.wall_s = time.perf_counter() - t0
        res.action_l1 = action_l1
        if record_video and video:
            res.frames = np.stack(video)
        if own_grabber and grabber is not None:
            grabber.close()


def run_spec(env, policy: RolloutPolicy, task, spec: EpisodeSpec, *, env_id: int = 0,
             frames: FrameGrabber | None = None) -> EpisodeResult:
    """`run_episode` for a planned work item."""
    return run_episode(env, policy, task, spec.init_index, spec.seed, spec.max_steps, spec.settle_steps,
                       spec.record_video, episode=spec.episode, env_id=env_id, frames=frames)
