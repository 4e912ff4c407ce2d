"""Framework-free training pieces: optimiser and schedule, checkpointed training state, RNG capture.

The Ray Train loops in `pipelines/` call these; nothing here knows about Ray.
"""
