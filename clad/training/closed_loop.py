"""Closed-loop evaluation during training: its config, best-k selection and the open-loop/closed-loop ranking.

Plain Python (no Ray, no torch): the Ray side lives in pipelines/eval_during_training.py.

Records are the per-checkpoint results the evaluator writes (`closed_loop/step_*/result.json`):

    {"step": 500, "successes": 7, "n": 10, "rate": 0.7, "ci95": [0.4, 0.9], "goal_progress": 0.8,
     "val": {"val/loss": 0.08, ...}}
"""

from __future__ import annotations

import math
from typing import Iterable, Literal, Mapping, Sequence

import pydantic

from clad.config import FrozenConfig

__all__ = ["ClosedLoopConfig", "select_best", "rank_correlations", "spearman", "spearman_test", "should_evaluate"]


class ClosedLoopConfig(FrozenConfig):
    """What `eval_every` rolls out (TrainConfig.closed_loop). The episode protocol is `clad eval`'s: episode k
    of a task starts from LIBERO init state k with a seed fixed by (base_seed, task, k), so every checkpoint
    of a run is scored on the same scenes. Demonstrations recorded with `demos.first_init >= episodes_per_task`
    (cpu_learning.yaml uses 25) keep these scenes out of the training data."""

    suite: str | None = None                    # required when eval_every > 0
    tasks: tuple[str, ...] | None = None        # task indices or names; None = every task of the suite
    episodes_per_task: int = pydantic.Field(5, ge=1)   # K
    base_seed: int = 0
    max_steps: int | None = pydantic.Field(None, ge=1)  # None = the suite's standard budget
    settle_steps: int = pydantic.Field(10, ge=0)
    camera_size: int = pydantic.Field(128, ge=8)
    # env actors: on a cluster, `rollout_resource` (a custom resource of the rollout nodes) keeps them
    # off the training nodes
    actors: int = pydantic.Field(1, ge=1)
    cpus_per_actor: float = pydantic.Field(1.0, gt=0)
    rollout_resource: str | None = None
    policy_mode: Literal["in_actor", "server"] = "in_actor"
    video_episodes: int = pydantic.Field(0, ge=0)
    # best checkpoints: the top `keep_best` by success; ties broken by `tie_break` (a validation metric,
    # lower is better), then by the later step. [ours] val/loss: the stage's own validation objective.
    keep_best: int = pydantic.Field(3, ge=1)
    tie_break: str = "val/loss"
    # delete the model copies of evaluated checkpoints that are not (or no longer) among the best
    # (episode logs and summaries are always kept)
    prune_models: bool = True
    poll_s: float = pydantic.Field(2.0, gt=0)   # how often the driver looks for new checkpoints


def should_evaluate(step: int, eval_every: int, last_step: int) -> bool:
    """Checkpoints at multiples of `eval_every` and the final one are rolled out."""
    return eval_every > 0 and (step % eval_every == 0 or step == last_step)


def _tie_value(record: Mapping, metric: str) -> float:
    v = (record.get("val") or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.inf


def select_best(records: Iterable[Mapping], k: int, tie_break: str = "val/loss") -> list[Mapping]:
    """The top-k records: highest success rate, then lowest `tie_break` metric (missing = worst), then the
    later step. Only complete evaluations (`complete` not False) compete."""
    done = [r for r in records if r.get("complete", True) and r.get("n", 0) > 0]
    return sorted(done, key=lambda r: (-float(r["rate"]), _tie_value(r, tie_break), -int(r["step"])))[:k]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (scipy, average ranks for ties); None when undefined (n < 3 or a constant)."""
    return spearman_test(x, y)[0]


def spearman_test(x: Sequence[float], y: Sequence[float], n_resamples: int = 9999,
                  seed: int = 0) -> tuple[float | None, float | None]:
    """Spearman's rho and its two-sided permutation p-value. A run has few checkpoints, where the usual
    t approximation is off, so the p-value comes from re-pairing x and y: exact up to 7 checkpoints
    (7! <= n_resamples), Monte-Carlo with a fixed seed above. (None, None) when rho is undefined."""
    from scipy import stats

    if len(x) != len(y) or len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    rho = float(stats.spearmanr(x, y).statistic)
    res = stats.permutation_test((list(x),), lambda a: stats.spearmanr(a, y).statistic,
                                 permutation_type="pairings", n_resamples=n_resamples, rng=seed)
    return rho, float(res.pvalue)


# the closed-loop outcomes a validation metric is ranked against: success, and the denser partial credit
# (mean fraction of the task's goal predicates met), which separates checkpoints that all fail
OUTCOMES = {"success": "rate", "goal_progress": "goal_progress"}


def rank_correlations(records: Iterable[Mapping]) -> dict[str, dict]:
    """For every validation metric: Spearman's rho (and its permutation p-value) between it and closed-loop
    success across the run's checkpoints, and the same against goal progress under "goal_progress" (where
    recorded). Validation metrics are errors (lower is better), so a metric that ranks checkpoints the way
    success does has rho near -1; rho near 0 or above means open-loop validation does not predict success."""
    done = sorted((r for r in records if r.get("complete", True) and r.get("n", 0) > 0), key=lambda r: r["step"])
    names = sorted({k for r in done for k in (r.get("val") or {})})

    def finite(v) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v)

    out: dict[str, dict] = {}
    for name in names:
        entry: dict = {}
        for outcome, key in OUTCOMES.items():
            pairs = [(float(r["val"][name]), float(r[key]), int(r["step"])) for r in done
                     if finite((r.get("val") or {}).get(name)) and finite(r.get(key))]
            rho, p = spearman_test([q[0] for q in pairs], [q[1] for q in pairs])
            block = {"rho": rho, "p": p, "n": len(pairs), "steps": [q[2] for q in pairs]}
            if outcome == "success":
                entry.update(block)
            elif pairs:
                entry[outcome] = block
        out[name] = entry
    return out
