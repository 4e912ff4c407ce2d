"""`clad probe-foresight`: CLaD's foresight quality on the states a rollout visits, next to its baseline.

    clad probe-foresight --checkpoint RUN/final --suite libero_object --tasks 0 1 --init-states 0-1 --out P
    clad probe-foresight ... --driver expert    # the scripted expert drives, CLaD only watches

Stage-1 validation scores the foresight on demonstration windows: cos(z^(t), y(t + tau)) against the
"nothing moves" baseline cos(y(t), y(t + tau)). This command measures the same two numbers along real
LIBERO episodes: driven by the CLaD policy itself (closed loop: its own states and past actions), or by
the scripted expert (states and actions like the demonstrations'). Episode k of a task runs init state k
with `clad eval`'s seed and one torch thread as its env actors do, so a closed-loop episode is the one
`clad eval --seed S` ran. One process, no Ray: a diagnostic of tens of episodes. Each episode is appended to
`<out>/probe.jsonl` as it ends (a re-run skips finished ones); `<out>/probe_summary.json` pools them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

EPISODES_FILE = "probe.jsonl"


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


def summarize_probe(rows: list[dict]) -> dict:
    """Means of the per-episode cosines: all episodes, successes and failures; `margin_*` = cos - cos_still
    (> 0: the foresight predicts the future better than "nothing moves")."""
    def pool(sel: list[dict]) -> dict:
        out = {"episodes": len(sel), "successes": sum(bool(r["success"]) for r in sel)}
        for k in ("cos_p", "cos_still_p", "cos_s", "cos_still_s"):
            out[k] = _mean([r[k] for r in sel])
        for m in ("p", "s"):
            a, b = out[f"cos_{m}"], out[f"cos_still_{m}"]
            out[f"margin_{m}"] = None if a is None or b is None else a - b
            out[f"beats_still_{m}"] = sum(r[f"cos_{m}"] > r[f"cos_still_{m}"] for r in sel
                                          if not math.isnan(r[f"cos_{m}"]))
        return out

    return {"all": pool(rows), "successes": pool([r for r in rows if r["success"]]),
            "failures": pool([r for r in rows if not r["success"]])}


def run_probe(checkpoint: str, suite: str, tasks: list[str], init_states: str, out: str, driver: str = "policy",
              base_seed: int = 0, max_steps: int | None = None, settle_steps: int = 10, camera_size: int = 128) -> dict:
    from clad import storage
    from clad.errors import CladError
    from clad.eval.agent_adapter import CladAgentPolicy
    from clad.eval.compare import parse_init_states
    from clad.eval.foresight_probe import ForesightProbe
    from clad.eval.protocol import NUM_INIT_STATES, plan_episodes
    from clad.eval.worker import EpisodeWorker
    from clad.libero.suites import MAX_STEPS, check_suite, get_task
    from clad.model.checkpoint import read_checkpoint_config

    # every input is checked before a simulator starts
    suite = check_suite(suite)
    task_specs = [get_task(suite, t) for t in tasks]
    keep = parse_init_states(init_states)
    if keep.stop > NUM_INIT_STATES:
        raise CladError(f"--init-states {init_states}: LIBERO has {NUM_INIT_STATES} init states per task (0-49)")
    source = checkpoint if storage.is_remote(checkpoint) else str(Path(checkpoint).resolve())  # the probe's identity
    checkpoint = str(storage.local_copy(checkpoint))  # a bucket URI is downloaded once into the node's cache
    cfg = read_checkpoint_config(checkpoint)
    if not cfg.has_dynamics:
        raise CladError(f"--checkpoint {checkpoint}: its config.json has policy.foresight="
                        f"'{cfg.policy.foresight}', a policy without a stage 1: there is no foresight to probe")
    if driver not in ("policy", "expert"):
        raise CladError(f"--driver {driver!r}: choose 'policy' (CLaD drives) or 'expert' (the scripted expert drives)")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    file = out_dir / EPISODES_FILE
    steps = max_steps or MAX_STEPS[suite]
    rows = [json.loads(x) for x in file.read_text().splitlines() if x.strip()] if file.is_file() else []
    for r in rows:
        # rows written before max_steps was logged all ran the suite's default budget
        theirs = (r["checkpoint"], r["driver"], r["base_seed"], r.get("max_steps", MAX_STEPS[r["suite"]]))
        if theirs != (source, driver, base_seed, steps):
            raise CladError(f"{file} holds episodes of another probe ({r['checkpoint']}, --driver {r['driver']}, "
                            f"--seed {r['base_seed']}, --max-steps {theirs[3]}): give another --out, or delete "
                            f"the file to start over")
    done = {(r["task_index"], r["episode"]) for r in rows}

    plan = [s for s in plan_episodes(suite, [t.index for t in task_specs], keep.stop, base_seed, steps, settle_steps)
            if s.init_index in keep and s.key not in done]
    import torch

    # one torch thread, as in clad eval's env actors (pipelines/env_actor.py): another thread count sums in
    # another order, and the rollout drifts from the logged one by float rounding (seen: 125 vs 126 steps)
    torch.set_num_threads(1)
    clad = CladAgentPolicy.from_checkpoint(checkpoint)
    drive = None
    if driver == "expert":
        from clad.eval.expert_policy import ExpertPolicy

        drive = ExpertPolicy()
    probe = ForesightProbe(clad, driver=drive)
    worker = EpisodeWorker(suite, probe, camera_size=camera_size, name="probe")
    log.info("probing %d episode(s) (%d already in %s), driver %s", len(plan), len(done), file, driver)
    try:
        for spec in plan:
            res = worker.run(spec)
            if res.error_kind:
                raise CladError(f"episode {spec.key} ended with {res.error_kind}: {res.error}")
            row = {"suite": suite, "task_index": spec.task_index, "episode": spec.episode, "init_index": spec.init_index,
                   "seed": spec.seed, "success": bool(res.success), "steps": res.steps, "driver": driver,
                   "base_seed": base_seed, "max_steps": steps, "checkpoint": source, **probe.episode_stats(0)}
            with file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            log.info("task %d init %d: success=%s steps=%d cos_s %.4f (still %.4f) cos_p %.4f (still %.4f)",
                     spec.task_index, spec.init_index, res.success, res.steps, row["cos_s"], row["cos_still_s"],
                     row["cos_p"], row["cos_still_p"])
    finally:
        worker.close_env()
    summary = {"checkpoint": source, "driver": driver, "suite": suite,
               "tau": int(cfg.dynamics.tau), **summarize_probe(rows)}
    storage.write_json(out_dir / "probe_summary.json", summary, indent=2)
    return summary


def format_probe(summary: dict) -> str:
    lines = [f"foresight probe, driver {summary['driver']}, tau {summary['tau']}",
             f"{'episodes':<12}{'n':>4}{'succ':>6}{'cos_s':>9}{'still_s':>9}{'margin':>9}{'cos_p':>9}{'still_p':>9}{'margin':>9}"]
    f = lambda x: f"{x:9.4f}" if x is not None else f"{'-':>9}"  # noqa: E731
    for name in ("all", "successes", "failures"):
        s = summary[name]
        lines.append(f"{name:<12}{s['episodes']:>4}{s['successes']:>6}{f(s['cos_s'])}{f(s['cos_still_s'])}"
                     f"{f(s['margin_s'])}{f(s['cos_p'])}{f(s['cos_still_p'])}{f(s['margin_p'])}")
    return "\n".join(lines)


def register(subparsers) -> None:
    p = subparsers.add_parser("probe-foresight", help="CLaD's foresight vs the 'nothing moves' baseline along "
                              "real rollouts (closed loop or expert-driven)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a CLaD stage-2 model folder (e.g. RUN/final), a path or a URI")
    p.add_argument("--suite", required=True)
    p.add_argument("--tasks", nargs="+", required=True, help="task indices or names")
    p.add_argument("--init-states", default="0-1", metavar="FIRST-LAST", help="init states to run (default 0-1)")
    p.add_argument("--driver", default="policy", choices=("policy", "expert"),
                   help="who acts: the CLaD policy (closed loop) or the scripted expert (CLaD watches)")
    p.add_argument("--seed", type=int, default=0, help="base seed, as `clad eval --seed` (default 0)")
    p.add_argument("--max-steps", type=int, help="step budget per episode (default: the suite's)")
    p.add_argument("--out", required=True, help="output folder (probe.jsonl, probe_summary.json)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from pipelines import logs

    Path(args.out).mkdir(parents=True, exist_ok=True)
    logs.attach_log_file(args.out)  # clad.log beside the results
    summary = run_probe(args.checkpoint, args.suite, args.tasks, args.init_states, args.out, driver=args.driver,
                        base_seed=args.seed, max_steps=args.max_steps)
    print(format_probe(summary))
    print(f"wrote {Path(args.out) / EPISODES_FILE} and probe_summary.json")
    return 0
