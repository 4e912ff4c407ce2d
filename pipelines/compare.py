"""`clad compare`: paired, scene-by-scene comparison of evaluation runs (no Ray needed).

    clad compare outputs/po/eval outputs/clad/eval [--names policy-only clad] [--out compare.json]
    clad compare outputs/po/eval outputs/clad/eval --init-states 0-24   # only scenes from init states 0..24
    clad compare po_s0/eval po_s1/eval clad_s0/eval clad_s1/eval --names po po clad clad   # seeds pooled

The first folder is the baseline; every other one is compared with it on the scenes both ran (same
suite, task, init state and seed), with the exact McNemar test. A name given to several folders pools
them as replicates of one variant (e.g. training seeds), paired in the order given. See clad/eval/compare.py.
"""

from __future__ import annotations

import argparse
import json

from clad import storage


def _default_names(paths: list[str]) -> list[str]:
    parts = [storage.normalize(p).split("://", 1)[-1].split("/") for p in paths]  # local paths and URIs alike
    names = [p[-1] for p in parts]
    if len(set(names)) == len(names):
        return names
    # e.g. two runs' `eval` folders: name them by their parent too
    return ["/".join(p[-2:]) for p in parts]


def run_compare(paths: list[str], names: list[str] | None = None, out: str | None = None,
                init_states: str | None = None) -> dict:
    from clad.errors import CladError
    from clad.eval.compare import compare_runs, format_comparison, load_eval_run, parse_init_states, pool_replicates

    if names is not None and len(names) != len(paths):
        raise CladError(f"--names gives {len(names)} names for {len(paths)} evaluation folders; give one per folder")
    names = names or _default_names(paths)
    keep = parse_init_states(init_states) if init_states is not None else None
    result = compare_runs(pool_replicates([load_eval_run(p, n, keep) for p, n in zip(paths, names)]))
    if keep is not None:
        result["init_states"] = [keep.start, keep.stop - 1]
        print(f"init states {keep.start}-{keep.stop - 1} only")
    print(format_comparison(result))
    if out:
        storage.write_text(out, json.dumps(result, indent=2) + "\n")  # a local path or a URI
        print(f"wrote {out}")
    return result


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="paired comparison of evaluation folders (exact McNemar test)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("evals", nargs="+", metavar="EVAL_DIR",
                   help="folders written by `clad eval --out` (paths or URIs); the first is the baseline")
    p.add_argument("--names", nargs="+", help="one label per folder (default: the folder names); a label given to "
                                              "several folders pools them as replicates, e.g. training seeds")
    p.add_argument("--out", help="also write the comparison as JSON here (a path or a URI)")
    p.add_argument("--init-states", metavar="FIRST-LAST",
                   help="keep only episodes started from these init states (inclusive), e.g. 0-24 for scenes "
                        "held out from demonstrations recorded from 25-49")
    p.set_defaults(func=_main)


def _main(args) -> int:
    run_compare(args.evals, args.names, args.out, args.init_states)
    return 0
