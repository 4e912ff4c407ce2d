"""`clad demos`: scripted-expert demonstrations for a LIBERO suite, one task per Ray actor call.

    clad demos --suite libero_object --tasks 0 1 --episodes-per-task 50 --out data/libero_object [--actors 2]

Each actor owns its simulators (built inside the actor after `ensure_libero()`, never pickled) and runs
`clad.libero.demos.generate_task_demos` for one task at a time. Actors claim fractional CPUs (`size_pool`):
whole-CPU actors on a 2-core node starve Ray's own tasks. Resumable: a task whose final
`<task>_demo.hdf5` exists is skipped (files are written under a temporary name and renamed when done).
The per-task expert report goes to `<out>/expert_report.json` and to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from clad import storage

log = logging.getLogger(__name__)

REPORT_NAME = "expert_report.json"


class DemoWorker:
    """A Ray actor generating one task's demos per call (plain class; wrapped with ray.remote in run)."""

    def __init__(self) -> None:
        from clad.libero.runtime import ensure_libero

        self.runtime = ensure_libero()  # GL backend, assets link and config before any libero import

    def generate(self, suite: str, task: int, out_dir: str, episodes: int, image_size: int,
                 max_attempts: int | None, screen: bool, first_init: int = 0) -> dict:
        from clad.libero.demos import generate_task_demos

        if not storage.is_remote(out_dir):
            return generate_task_demos(suite, task, out_dir, episodes, image_size=image_size,
                                       max_attempts=max_attempts, screen=screen, first_init=first_init).to_dict()
        # a bucket: record on this node's disk, then upload the finished file as one object (storage.upload_file:
        # an interrupted upload leaves no file that a resume would take for a finished task)
        local = storage.cache_root().parent / "work" / f"demos-{storage.name(out_dir)}-{os.getpid()}"
        rep = generate_task_demos(suite, task, local, episodes, image_size=image_size, max_attempts=max_attempts,
                                  screen=screen, first_init=first_init).to_dict()
        if rep.get("file"):
            done = Path(rep["file"])
            rep["file"] = storage.upload_file(done, storage.join(out_dir, done.name))
            done.unlink()
        return rep


def _resolve_tasks(suite: str, tasks: list[str] | None) -> list[int]:
    from clad.libero.suites import get_task, list_tasks

    if not tasks:
        return list(range(len(list_tasks(suite))))
    return [get_task(suite, t).index for t in tasks]


def _load_report(path: str) -> dict[tuple[str, int], dict]:
    if not storage.is_file(path):
        return {}
    try:
        return {(r["suite"], int(r["task_index"])): r for r in storage.read_json(path)}
    except (ValueError, KeyError, TypeError):
        return {}


def run_demos(suite: str, tasks: list[str] | None, episodes: int, out: str | Path, actors: int | None = None,
              image_size: int = 128, max_attempts: int | None = None, screen: bool = True, first_init: int = 0,
              address: str | None = None, progress: bool = True) -> list[dict]:
    """Generate demos for `tasks` of `suite` on Ray; returns the per-task report (also written as JSON)."""
    import ray
    from tqdm import tqdm

    from clad.libero.demos import task_file
    from clad.libero.suites import check_suite
    from pipelines.ray_runtime import init_ray, size_pool

    check_suite(suite)
    from clad.errors import ConfigError
    from clad.eval.protocol import NUM_INIT_STATES

    if not 0 <= first_init < NUM_INIT_STATES:  # fail on the driver with the fix, not inside an actor
        raise ConfigError(f"first_init={first_init} (--first-init / demos.first_init) is out of range: LIBERO tasks "
                          f"have init states 0..{NUM_INIT_STATES - 1}")
    if storage.is_remote(out):  # files are recorded on the actors' disks and uploaded whole when finished
        out = storage.check_writable(storage.normalize(out), "--out")
    else:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    report_path = storage.join(out, REPORT_NAME)
    previous = _load_report(report_path)
    indices = _resolve_tasks(suite, tasks)

    reports: dict[int, dict] = {}
    todo = []
    for i in indices:
        final = storage.join(out, task_file(".", suite, i).name)
        if storage.is_file(final):
            old = previous.get((suite, i), {"suite": suite, "task_index": i, "file": final})
            reports[i] = {**old, "skipped": True}
        else:
            todo.append(i)
    if todo:
        init_ray(address=address)
        pool = size_pool(min(actors, len(todo)) if actors else min(len(todo), 2))
        worker_cls = ray.remote(num_cpus=pool.cpus_per_actor)(DemoWorker)
        workers = [worker_cls.remote() for _ in range(pool.num_actors)]
        log.info("generating %d task(s) on %d actor(s) x %.2f CPU", len(todo), pool.num_actors, pool.cpus_per_actor)
        queue = list(todo)
        running: dict = {}

        def submit(w) -> None:
            t = queue.pop(0)
            running[w.generate.remote(suite, t, str(out), episodes, image_size, max_attempts, screen, first_init)] = (w, t)

        bar = tqdm(total=len(todo) * episodes, unit="demo", desc=f"demos {suite}", disable=not progress)
        try:
            for w in workers:
                if queue:
                    submit(w)
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                w, t = running.pop(done[0])
                rep = ray.get(done[0])
                reports[t] = rep
                bar.update(episodes)
                bar.set_postfix(task=t, demos=rep["demos"], rate=f"{rep['success_rate']:.2f}")
                _write(report_path, previous, reports, suite)
                if queue:
                    submit(w)
        finally:
            bar.close()
            for w in workers:
                ray.kill(w)
    _write(report_path, previous, reports, suite)
    return [reports[i] for i in indices]


def _write(path: str, previous: dict, reports: dict[int, dict], suite: str) -> None:
    merged = dict(previous)
    for i, r in reports.items():
        merged[(suite, i)] = r
    storage.write_json(path, [merged[k] for k in sorted(merged)])  # atomic, locally and in a bucket


def _print_report(rows: list[dict]) -> None:
    print(f"{'task':>4}  {'demos':>5}  {'attempts':>8}  {'rate':>5}  {'s':>7}  name")
    for r in rows:
        if r.get("skipped") and "attempts" not in r:
            print(f"{r['task_index']:>4}  {'-':>5}  {'-':>8}  {'-':>5}  {'-':>7}  (existing file, skipped)")
            continue
        note = " (existing file, skipped)" if r.get("skipped") else ""
        print(f"{r['task_index']:>4}  {r.get('demos', 0):>5}  {r.get('attempts', 0):>8}  "
              f"{r.get('success_rate', 0.0):>5.2f}  {r.get('seconds', 0.0):>7.1f}  {r.get('task_name', '')}{note}")


def _cmd(args: argparse.Namespace) -> int:
    from pipelines import logs

    logs.attach_log_file(args.out)
    rows = run_demos(args.suite, args.tasks, args.episodes_per_task, args.out, actors=args.actors,
                     image_size=args.image_size, max_attempts=args.max_attempts, screen=not args.no_screen,
                     first_init=args.first_init, address=args.address, progress=not args.no_progress)
    _print_report(rows)
    print(f"report: {storage.join(args.out, REPORT_NAME)}")
    empty = [r["task_index"] for r in rows if not r.get("skipped") and r.get("demos", 0) == 0]
    if empty:
        log.error("the expert solved no init state of task(s) %s", empty)
        return 1
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demos", help="generate scripted-expert LIBERO demonstrations (Ray actors)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", required=True,
                   choices=["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"])
    p.add_argument("--tasks", nargs="*", default=None, help="task indices or names (default: every task)")
    p.add_argument("--episodes-per-task", type=int, default=50)
    p.add_argument("--out", required=True, help="output directory (one <task>_demo.hdf5 per task), or a URI "
                                                   "(s3://..., files are uploaded when finished)")
    p.add_argument("--actors", type=int, default=None, help="simulator actors (default: one per CPU, max 2)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-attempts", type=int, default=None, help="init states to try per task (default 50)")
    p.add_argument("--first-init", type=int, default=0,
                   help="first init state to try; e.g. 25 keeps init states 0-24 unseen for evaluation")
    p.add_argument("--no-screen", action="store_true", help="record every attempt (no camera-less screen)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd)
