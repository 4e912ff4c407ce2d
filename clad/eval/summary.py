"""Aggregating episode results: per task, per suite and overall success with Wilson 95 % intervals;
the stdout table and the bar chart.

A task's n counts every finished episode: episodes that ended in an error count as failures (and are
reported as `errors`), so a crashing policy can never look better than a failing one.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from clad.eval.results import EpisodeResult
from clad.eval.stats import wilson_interval

__all__ = ["summarize", "format_table", "plot_success", "rate_block", "mean_goal_progress"]


def rate_block(successes: int, n: int) -> dict:
    """{"n", "successes", "rate", "ci95"}: a success rate with its Wilson 95 % interval."""
    lo, hi = wilson_interval(successes, n)
    return {"n": n, "successes": successes, "rate": successes / n if n else 0.0, "ci95": [lo, hi]}


def _block(successes: int, n: int, errors: int = 0) -> dict:
    return {**rate_block(successes, n), "errors": errors}


def summarize(results: Iterable[EpisodeResult], task_names: dict[tuple[str, int], str] | None = None,
              expected_per_task: int | None = None) -> dict:
    """Results -> {"tasks": [...], "suites": {...}, "overall": {...}, "steps": {...}}.

    Suite average = mean of the per-task rates (LIBERO's convention: every task weighs the same);
    its CI pools the suite's episodes. `overall` pools every episode of every suite.
    """
    results = list(results)
    by_task: dict[tuple[str, int], list[EpisodeResult]] = defaultdict(list)
    for r in results:
        by_task[(r.suite, r.task_index)].append(r)
    for key in task_names or {}:
        by_task.setdefault(key, [])
    tasks = []
    for (suite, ti), rs in sorted(by_task.items()):
        s = sum(r.success for r in rs)
        errs = sum(r.error is not None for r in rs)
        name = (task_names or {}).get((suite, ti)) or (rs[0].task_name if rs else str(ti))
        row = {"suite": suite, "task_index": ti, "task": name, **_block(s, len(rs), errs),
               "mean_steps": float(np.mean([r.steps for r in rs])) if rs else 0.0,
               "mean_steps_success": (float(np.mean([r.steps for r in rs if r.success]))
                                      if s else None),
               "error_kinds": dict(sorted(_count(r.error_kind for r in rs if r.error_kind).items())),
               "goal_progress": mean_goal_progress(rs)}
        if expected_per_task is not None:
            row["complete"] = len(rs) >= expected_per_task
        tasks.append(row)
    suites = {}
    for suite in sorted({t["suite"] for t in tasks}):
        rows = [t for t in tasks if t["suite"] == suite]
        n = sum(t["n"] for t in rows)
        s = sum(t["successes"] for t in rows)
        block = _block(s, n, sum(t["errors"] for t in rows))
        rated = [t["rate"] for t in rows if t["n"]]
        block["task_average"] = float(np.mean(rated)) if rated else 0.0
        block["num_tasks"] = len(rows)
        block["goal_progress"] = mean_goal_progress(r for r in results if r.suite == suite)
        suites[suite] = block
    n = sum(t["n"] for t in tasks)
    s = sum(t["successes"] for t in tasks)
    overall = _block(s, n, sum(t["errors"] for t in tasks))
    overall["goal_progress"] = mean_goal_progress(results)  # pooled over episodes
    return {"tasks": tasks, "suites": suites, "overall": overall}


def mean_goal_progress(results: Iterable[EpisodeResult]) -> float | None:
    """Mean fraction of the goal predicates met (partial credit; 1.0 per success), None if unrecorded."""
    values = [r.goal_progress for r in results if r.goal_progress is not None]
    return float(np.mean(values)) if values else None


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for i in items:
        out[i] += 1
    return out


def format_table(summary: dict, max_name: int = 60) -> str:
    """A fixed-width table: one row per task, then the suite averages and the overall rate."""
    lines = [f"{'task':<{max_name}} {'n':>4} {'succ':>4} {'rate':>6}  {'95% CI (Wilson)':<15} {'err':>3}"]
    lines.append("-" * len(lines[0]))
    for t in summary["tasks"]:
        name = f"[{t['task_index']}] {t['task']}"
        if len(name) > max_name:
            name = name[: max_name - 3] + "..."
        lo, hi = t["ci95"]
        lines.append(f"{name:<{max_name}} {t['n']:>4} {t['successes']:>4} {100 * t['rate']:>5.1f}%  "
                     f"[{100 * lo:5.1f}, {100 * hi:5.1f}]  {t['errors']:>3}")
    lines.append("-" * len(lines[0]))
    for suite, b in summary["suites"].items():
        lo, hi = b["ci95"]
        lines.append(f"{suite + ' (task average)':<{max_name}} {b['n']:>4} {b['successes']:>4} "
                     f"{100 * b['task_average']:>5.1f}%  [{100 * lo:5.1f}, {100 * hi:5.1f}]  {b['errors']:>3}")
    o = summary["overall"]
    lo, hi = o["ci95"]
    lines.append(f"{'overall (pooled)':<{max_name}} {o['n']:>4} {o['successes']:>4} {100 * o['rate']:>5.1f}%  "
                 f"[{100 * lo:5.1f}, {100 * hi:5.1f}]  {o['errors']:>3}")
    return "\n".join(lines)


def plot_success(summary: dict, path: str | Path, title: str = "") -> Path:
    """Horizontal bar chart of per-task success with Wilson 95 % error bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # headless; never opens a window
    import matplotlib.pyplot as plt

    tasks: Sequence[dict] = summary["tasks"]
    labels = [f"[{t['task_index']}] {t['task'][:50]}" for t in tasks]
    rates = np.array([100 * t["rate"] for t in tasks])
    lo = np.array([100 * (t["rate"] - t["ci95"][0]) for t in tasks])
    hi = np.array([100 * (t["ci95"][1] - t["rate"]) for t in tasks])
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(tasks), 2) + 1.5))
    y = np.arange(len(tasks))
    ax.barh(y, rates, xerr=[lo, hi], color="#4C72B0", ecolor="#333333", capsize=3)
    for yi, t in zip(y, tasks):
        ax.text(101, yi, f"{t['successes']}/{t['n']}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("success rate (%)  [95% Wilson CI]")
    ax.set_title(title or "success per task")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
