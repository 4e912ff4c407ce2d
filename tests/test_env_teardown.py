"""A LIBERO simulator's GL context must be freed before robosuite's exit-time `eglTerminate`: one freed after
it (by the garbage collector during interpreter teardown) prints an EGLError traceback from a destructor,
which once made 38 of 79 console lines of `clad pipeline`. Each case runs in its own process and ends the
way a command or a Ray env actor ends; its stderr must hold no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.libero]

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Traceback", "Exception ignored", "EGLError")

CLOSED_ENV = """
import numpy as np
from clad.libero.env import EnvConfig, LiberoEnv
with LiberoEnv(EnvConfig(suite="libero_object", camera_size=32, settle_steps=1), 0) as env:
    env.reset(init_index=0)
    env.step(np.zeros(7))
print("ran", flush=True)
"""

# An env actor is not closed by the pool when its process simply ends; its objects are then freed at
# teardown, after the atexit hooks. The reference cycle makes that certain here: only the final garbage
# collection frees the actor (a Ray worker's objects meet the same fate). The class runs outside Ray here;
# RAY_ENABLE_AUTO_CONNECT=0 keeps its GPU lookup from starting a local cluster.
ENV_ACTOR_LEFT_OPEN = """
from clad.eval.policy import PolicySpec
from clad.eval.protocol import plan_episodes
from pipelines.env_actor import EnvActor
policy = PolicySpec(kind="tiny", cameras=("agentview",))  # reads images: the env renders
actor = EnvActor("libero_object", policy.model_dump(), camera_size=32, slot=0, name="a0", video_size=32)
result = actor.run(plan_episodes("libero_object", [0], 1, 0, max_steps=2, settle_steps=1)[0])
assert result.error is None, result.error
cycle = [actor]
cycle.append(cycle)
del actor, cycle
print("ran", flush=True)
"""


@pytest.mark.parametrize("code", [CLOSED_ENV, ENV_ACTOR_LEFT_OPEN], ids=["closed_env", "env_actor_left_open"])
def test_no_egl_traceback_when_the_process_ends(code):
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_AUTO_CONNECT": "0"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ran"), r.stderr[-3000:]
    assert not [n for n in NOISE if n in r.stderr], r.stderr[-3000:]
