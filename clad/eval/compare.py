"""Comparing evaluation runs episode by episode: which variant is better, and is the difference real?

Two evaluations made with the same base seed run the same scenes: episode k of task i starts from the
same init state with the same seed. Comparing them scene by scene (paired) is far more sensitive than
comparing two success rates: at 150 episodes per variant the Wilson intervals of 48 % and 57 % overlap,
yet the paired test sees only the scenes where the two variants disagree. The test is the exact
McNemar test (a two-sided binomial test on the discordant scenes), the standard choice for paired binary
outcomes; it needs no normal approximation, so it stays valid at the small counts per-task splits give.

A scene is identified by (suite, task_index, init_index, seed); episodes present in only one run are
left out of the paired counts and reported as `unpaired`.

Replicates (e.g. a variant trained with two seeds) are pooled with `pool_replicates`: the k-th replicate of
one variant is paired with the k-th replicate of the other, so the unit is (replicate, scene) and the exact
McNemar test runs on the discordant pairs of all replicates together. Each replicate's own comparison is
still the one to read first; the pooled test says whether the difference holds across seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from clad.errors import CladError
from clad.eval.results import EPISODES_FILE, EpisodeResult, ResultLog
from clad.eval.summary import rate_block

__all__ = ["EvalRun", "load_eval_run", "parse_init_states", "pool_replicates", "mcnemar_exact", "compare_runs",
           "format_comparison"]

# suite, task_index, init_index, seed (+ the replicate index once pooled: suite and task stay first)
SceneKey = tuple


@dataclass(frozen=True)
class EvalRun:
    """One evaluation's episodes, keyed by scene."""

    name: str
    path: str
    episodes: dict[SceneKey, EpisodeResult]
    replicates: tuple[str, ...] = ()  # the folders pooled into this run, in pairing order (empty: one folder)


def _scene(r: EpisodeResult) -> SceneKey:
    return r.suite, r.task_index, r.init_index, r.seed


def parse_init_states(text: str) -> range:
    """"FIRST-LAST" (inclusive) or one index, e.g. "0-24": the init states a comparison keeps."""
    first, sep, last = text.partition("-")
    try:
        lo, hi = int(first), int(last if sep else first)
    except ValueError:
        lo, hi = -1, -1
    if lo < 0 or hi < lo:
        raise CladError(f"--init-states {text!r}: give FIRST-LAST with 0 <= FIRST <= LAST, e.g. --init-states 0-24")
    return range(lo, hi + 1)


def load_eval_run(path: str | Path, name: str | None = None, init_states: range | None = None) -> EvalRun:
    """Read `<path>/episodes.jsonl` (the folder `clad eval --out` wrote); `path` may also be the file.

    `init_states` keeps only the episodes that started from those init states, e.g. to report scenes held
    out from the demonstrations apart from the demonstrations' own scenes."""
    from clad import storage

    loc = str(path)  # a folder or the file itself, local or a URI (s3://...)
    file = loc if loc.endswith(".jsonl") else storage.join(loc, EPISODES_FILE)
    folder = storage.parent(file)
    # a wrong bucket, missing credentials or no permission: StorageError naming the location and the fix
    if storage.is_remote(loc):
        storage.check_readable(loc, "evaluation folder")
    if not storage.is_file(file):
        raise CladError(f"{file}: no evaluation results here. Pass the folder given to `clad eval --out` "
                        f"(it holds {EPISODES_FILE}).")
    results = ResultLog(storage.local_copy(file)).read()  # an object: read from a local copy (the log reader)
    if not results:
        raise CladError(f"{file}: holds no readable episode records; run or resume `clad eval --out {folder}`.")
    if init_states is not None:
        results = [r for r in results if r.init_index in init_states]
        if not results:
            raise CladError(f"{file}: no episode started from init states {init_states.start}-{init_states.stop - 1}; "
                            f"widen --init-states or evaluate more --episodes-per-task")
    episodes: dict[SceneKey, EpisodeResult] = {}
    for r in results:
        key = _scene(r)
        if key in episodes:  # two episodes of one task on the same scene: the seeds were not per episode
            raise CladError(f"{file}: task {r.task_index} has two episodes with init state {r.init_index} and seed "
                            f"{r.seed}; episodes must have distinct seeds (see clad/eval/protocol.py)")
        episodes[key] = r
    label = name or storage.name(folder) or str(file)
    return EvalRun(name=label, path=str(folder), episodes=episodes)


def pool_replicates(runs: Sequence[EvalRun]) -> list[EvalRun]:
    """Runs that share a name are replicates of one variant (e.g. its training seeds): one pooled run per name,
    in order of first appearance. Replicate k's scenes get the key suffix k, so they pair with replicate k of
    every other variant; every variant must then have the same number of replicates."""
    groups: dict[str, list[EvalRun]] = {}
    for r in runs:
        groups.setdefault(r.name, []).append(r)
    if all(len(g) == 1 for g in groups.values()):
        return list(runs)
    counts = {name: len(g) for name, g in groups.items()}
    if len(set(counts.values())) != 1:
        raise CladError(f"replicates per variant differ: {counts}. A name given to several folders pools them as "
                        "replicates (e.g. training seeds) paired in the order given, so every variant needs the "
                        "same number of folders, in the same seed order; fix --names or the folder list")
    pooled = []
    for name, group in groups.items():
        episodes = {key + (k,): ep for k, r in enumerate(group) for key, ep in r.episodes.items()}
        paths = tuple(r.path for r in group)
        pooled.append(EvalRun(name=name, path=" + ".join(paths), episodes=episodes, replicates=paths))
    return pooled


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (scenes only A solved, only B solved).

    Under the null hypothesis each discordant scene is equally likely to favour A or B, so
    min(only_a, only_b) ~ Binomial(only_a + only_b, 1/2); the p-value doubles its lower tail (capped at 1).
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_a}, {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def _paired_progress(a: EvalRun, b: EvalRun, keys: list[SceneKey]) -> dict | None:
    """Partial credit on the same scenes: mean goal progress of each run and an exact two-sided sign test
    on the scenes where the two differ (the McNemar test generalised to graded outcomes)."""
    pairs = [(a.episodes[k].goal_progress, b.episodes[k].goal_progress) for k in keys]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    if not pairs:
        return None
    worse = sum(y < x for x, y in pairs)
    better = sum(y > x for x, y in pairs)
    return {"n": len(pairs), "a": sum(x for x, _ in pairs) / len(pairs), "b": sum(y for _, y in pairs) / len(pairs),
            "b_better": better, "b_worse": worse, "p_sign": mcnemar_exact(worse, better)}


def _paired(a: EvalRun, b: EvalRun, task: tuple[str, int] | None = None) -> dict:
    keys = sorted(set(a.episodes) & set(b.episodes))
    if task is not None:
        keys = [k for k in keys if (k[0], k[1]) == task]
    both = sum(a.episodes[k].success and b.episodes[k].success for k in keys)
    only_a = sum(a.episodes[k].success and not b.episodes[k].success for k in keys)
    only_b = sum(b.episodes[k].success and not a.episodes[k].success for k in keys)
    return {"n": len(keys), "both": both, "only_a": only_a, "only_b": only_b,
            "neither": len(keys) - both - only_a - only_b,
            "a": rate_block(both + only_a, len(keys)), "b": rate_block(both + only_b, len(keys)),
            "diff": ((only_b - only_a) / len(keys)) if keys else 0.0,
            "p_mcnemar": mcnemar_exact(only_a, only_b), "goal_progress": _paired_progress(a, b, keys)}


def compare_runs(runs: Sequence[EvalRun]) -> dict:
    """Each run's own success (all its episodes) and, for every run after the first, a paired comparison
    against the first (the baseline, `a`), overall and per task. In each pair `a` and `b` are the two
    runs' success on the shared scenes only, and `diff` is b - a there."""
    if len(runs) < 2:
        raise CladError(f"need at least two evaluation folders to compare, got {len(runs)}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise CladError(f"evaluation names must differ, got {names}; pass --names")
    base = runs[0]
    summary = []
    for r in runs:
        eps = list(r.episodes.values())
        tasks = sorted({(e.suite, e.task_index) for e in eps})
        per_task = {f"{s}/{t}": rate_block(sum(e.success for e in eps if (e.suite, e.task_index) == (s, t)),
                                            sum((e.suite, e.task_index) == (s, t) for e in eps))
                    for s, t in tasks}
        summary.append({"name": r.name, "path": r.path, **rate_block(sum(e.success for e in eps), len(eps)),
                        "tasks": per_task, **({"replicates": list(r.replicates)} if r.replicates else {})})
    pairs = []
    for other in runs[1:]:
        shared_tasks = sorted({(k[0], k[1]) for k in set(base.episodes) & set(other.episodes)})
        overall = _paired(base, other)
        if overall["n"] == 0:
            raise CladError(f"{base.path} and {other.path} share no scene (suite, task, init state, seed): "
                            f"evaluate both with the same --suite, --tasks and --seed")
        pairs.append({"a_name": base.name, "b_name": other.name, **overall,
                      "unpaired": {base.name: len(base.episodes) - overall["n"],
                                   other.name: len(other.episodes) - overall["n"]},
                      "tasks": {f"{s}/{t}": _paired(base, other, (s, t)) for s, t in shared_tasks}})
    return {"runs": summary, "paired": pairs}


def format_comparison(result: dict) -> str:
    """Fixed-width text: each run's success, then each paired comparison against the baseline."""
    w = max(len(r["name"]) for r in result["runs"])
    lines = [f"{'run':<{w}} {'succ/n':>9} {'rate':>6}  95% CI (Wilson)"]
    for r in result["runs"]:
        lo, hi = r["ci95"]
        pooled = f"  ({len(r['replicates'])} replicates pooled)" if r.get("replicates") else ""
        lines.append(f"{r['name']:<{w}} {r['successes']:>4}/{r['n']:<4} {100 * r['rate']:>5.1f}%  "
                     f"[{100 * lo:5.1f}, {100 * hi:5.1f}]{pooled}")
    for p in result["paired"]:
        lines.append("")
        lines.append(f"paired: {p['a_name']} (a) vs {p['b_name']} (b) on {p['n']} shared scenes")
        lines.append(f"  {'task':<22} {'n':>4} {'a':>4} {'b':>4} {'only a':>7} {'only b':>7} {'b - a':>7} {'p':>7}")
        rows = list(p["tasks"].items()) + [("all", p)]
        for label, t in rows:
            lines.append(f"  {label[:22]:<22} {t['n']:>4} {t['a']['successes']:>4} {t['b']['successes']:>4} "
                         f"{t['only_a']:>7} {t['only_b']:>7} {100 * t['diff']:>+6.1f}% {_p(t['p_mcnemar']):>7}")
        if p.get("goal_progress"):
            lines.append("  goal progress (fraction of the goal's predicates met; exact sign test on scenes that differ)")
            lines.append(f"  {'task':<22} {'n':>4} {'a':>6} {'b':>6} {'b > a':>7} {'b < a':>7} {'p':>7}")
            for label, t in rows:
                g = t.get("goal_progress")
                if g:
                    lines.append(f"  {label[:22]:<22} {g['n']:>4} {g['a']:>6.3f} {g['b']:>6.3f} {g['b_better']:>7} "
                                 f"{g['b_worse']:>7} {_p(g['p_sign']):>7}")
        skipped = {k: v for k, v in p["unpaired"].items() if v}
        if skipped:
            lines.append(f"  unpaired episodes left out: {skipped}")
    return "\n".join(lines)


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"
