"""The standard LIBERO evaluation protocol as deterministic work items.

Episode k of task i starts from fixed init state `k mod 50` (LIBERO ships 50 per task), is seeded with
`episode_seed(base_seed, i, k)`, settles for `settle_steps` no-op steps and runs for at most the suite's
step budget. The seed depends only on (base_seed, task, episode), never on which actor runs the episode
or in which order, so the same command reproduces the same episodes on any pool size; seeds of
different (task, episode) pairs never collide (RLlib's per-worker seed offsets, made per episode).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

__all__ = ["EpisodeSpec", "episode_seed", "plan_episodes", "NUM_INIT_STATES", "EVAL_SEED_OFFSET",
           "TASK_SEED_STRIDE"]

NUM_INIT_STATES = 50
# Evaluation seeds live far from training seeds (RLlib adds 1e6 for its evaluation workers).
EVAL_SEED_OFFSET = 1_000_000
# Room for 100k episodes per task before two tasks' seed ranges could meet.
TASK_SEED_STRIDE = 100_000


def episode_seed(base_seed: int, task_index: int, episode: int) -> int:
    """Seed of episode `episode` of task `task_index`: unique per (task, episode) and pool-independent."""
    if not 0 <= episode < TASK_SEED_STRIDE:
        raise ValueError(f"episode index {episode} must be in [0, {TASK_SEED_STRIDE})")
    return int(base_seed) + EVAL_SEED_OFFSET + int(task_index) * TASK_SEED_STRIDE + int(episode)


@dataclass(frozen=True, order=True)
class EpisodeSpec:
    """One unit of work: episode `episode` of task `task_index` in `suite`."""

    suite: str
    task_index: int
    episode: int
    init_index: int
    seed: int
    max_steps: int
    settle_steps: int
    record_video: bool = False

    @property
    def key(self) -> tuple[int, int]:
        """Identity of the episode in a run (the resume / de-duplication key)."""
        return self.task_index, self.episode

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EpisodeSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def plan_episodes(suite: str, task_indices: Sequence[int], episodes_per_task: int, base_seed: int,
                  max_steps: int, settle_steps: int, video_episodes: int = 0,
                  num_init_states: int = NUM_INIT_STATES) -> list[EpisodeSpec]:
    """All work items of a run, ordered task-major. The first `video_episodes` of each task are recorded."""
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if len(set(task_indices)) != len(task_indices):
        raise ValueError(f"task indices must be distinct, got {list(task_indices)}")
    return [EpisodeSpec(suite=suite, task_index=int(t), episode=k, init_index=k % num_init_states,
                        seed=episode_seed(base_seed, t, k), max_steps=max_steps, settle_steps=settle_steps,
                        record_video=k < video_episodes)
            for t in task_indices for k in range(episodes_per_task)]


def keys_of(specs: Iterable[EpisodeSpec]) -> set[tuple[int, int]]:
    return {s.key for s in specs}
