"""Benchmarks (not tests): side-by-side speed ratios on real parts, JSON out.

`python -m pipelines.bench` runs them all (see `__main__.py`); each module also runs alone,
e.g. `python -m pipelines.bench.inference --help`.
"""
