"""Unit tests of clad/eval logic with fakes: Wilson CI, seeds, work-list bookkeeping, the result log,
summaries, tiny-policy batch invariance, resume-config checks. No LIBERO, no Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clad.errors import ConfigError
from clad.eval.config import EvalConfig
from clad.eval.policy import EpisodeContext, PolicySpec, noise_seed
from clad.eval.registry import make_policy
from clad.eval.protocol import EVAL_SEED_OFFSET, episode_seed, plan_episodes
from clad.eval.results import EpisodeResult, ResultLog
from clad.eval.stats import wilson_interval
from clad.eval.summary import format_table, plot_success, summarize
from clad.eval.worklist import WorkList


def _result(spec, success=True, steps=10, **kw) -> EpisodeResult:
    return EpisodeResult(suite=spec.suite, task_index=spec.task_index, task_name=f"task{spec.task_index}",
                         episode=spec.episode, init_index=spec.init_index, seed=spec.seed, success=success,
                         steps=steps, wall_s=0.1, **kw)


def _plan(tasks=(0, 1), eps=3):
    return plan_episodes("libero_object", list(tasks), eps, base_seed=7, max_steps=20, settle_steps=0)


# ------------------------------------------------------------------ statistics
@pytest.mark.parametrize("s,n,lo,hi", [
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (45, 50, 0.7864, 0.9565),
])
def test_wilson_matches_reference_values(s, n, lo, hi):
    got = wilson_interval(s, n)
    assert got == pytest.approx((lo, hi), abs=5e-4)


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    for n in (1, 7, 50, 500):
        for s in range(0, n + 1, max(1, n // 7)):
            lo, hi = wilson_interval(s, n)
            assert 0.0 <= lo <= s / n <= hi <= 1.0


# ------------------------------------------------------------------ protocol
def test_plan_is_deterministic_disjoint_and_uses_init_states_mod_50():
    plan = plan_episodes("libero_10", [0, 3], 120, base_seed=5, max_steps=520, settle_steps=10, video_episodes=2)
    assert plan == plan_episodes("libero_10", [0, 3], 120, base_seed=5, max_steps=520, settle_steps=10,
                                 video_episodes=2)
    seeds = [s.seed for s in plan]
    assert len(set(seeds)) == len(seeds)
    assert all(s.init_index == s.episode % 50 for s in plan)
    assert [s.record_video for s in plan[:3]] == [True, True, False]
    # a task's seeds do not depend on which other tasks or how many episodes are planned
    alone = plan_episodes("libero_10", [3], 5, base_seed=5, max_steps=520, settle_steps=10)
    assert [s.seed for s in alone] == [s.seed for s in plan if s.task_index == 3][:5]
    assert episode_seed(0, 0, 0) == EVAL_SEED_OFFSET


# ------------------------------------------------------------------ work list
def test_worklist_exactly_once_with_requeue_and_retry_limit():
    plan = _plan()
    wl = WorkList(plan, max_attempts=2)
    a = wl.take("w0")
    b = wl.take("w1")
    assert a.spec.key == (0, 0) and b.spec.key == (0, 1)
    # w1 dies: its episode goes back to the front and is retried by the next taker
    assert wl.requeue("w1", "task0", "died") is None
    c = wl.take("w2")
    assert c.spec.key == (0, 1) and c.attempt == 2
    # it dies again: out of attempts -> an actor_lost failure instead of being dropped
    lost = wl.requeue("w2", "task0", "died again")
    assert lost is not None and lost.error_kind == "actor_lost" and not lost.success and lost.attempt == 2
    assert wl.complete("w0", _result(a.spec))
    while not wl.finished():
        item = wl.take("w3")
        assert wl.complete("w3", _result(item.spec))
    assert sorted(wl.done) == sorted(s.key for s in plan)
    assert wl.done[(0, 0)].attempt == 1


def test_worklist_rejects_duplicates_and_prefers_the_held_task():
    plan = _plan()
    wl = WorkList(plan)
    item = wl.take("w0", prefer_task=1)
    assert item.spec.task_index == 1
    # a fresh worker goes to a task no other worker's simulator holds
    other = wl.take("w1", held=[1])
    assert other.spec.task_index == 0
    assert wl.complete("w1", _result(other.spec))
    assert wl.complete("w0", _result(item.spec))
    # a stale second result for the same episode (e.g. after a re-queue race) is ignored
    wl.in_flight["w9"] = type(item)(spec=item.spec, worker="w9", attempt=2)
    assert not wl.complete("w9", _result(item.spec, success=False))
    assert wl.done[item.spec.key].success
    with pytest.raises(RuntimeError):
        wl.complete("nobody", _result(item.spec))
    with pytest.raises(ValueError):
        WorkList(plan + plan[:1])


def test_worklist_overdue():
    wl = WorkList(_plan())
    item = wl.take("w0")
    assert wl.overdue(10.0, now=item.started + 5) == []
    assert wl.overdue(10.0, now=item.started + 11) == [item]


# ------------------------------------------------------------------ result log
def test_result_log_round_trip_dedup_and_torn_line(tmp_path):
    plan = _plan()
    log = ResultLog(tmp_path / "episodes.jsonl")
    log.append(_result(plan[0], video="videos/x.mp4"))
    log.append(_result(plan[1], success=False, error="step 3: non-finite action", error_kind="bad_action",
                       action_l1=float("nan")))
    # a crash mid-write leaves a torn line; a duplicate record must not count twice
    with log.path.open("a") as f:
        f.write('{"suite": "libero_object", "task_in')
    log2 = ResultLog(log.path)
    log2.append(_result(plan[0], success=False))
    log2.append(_result(plan[2]))
    rs = log2.read()
    assert [r.key for r in rs] == [plan[0].key, plan[1].key, plan[2].key]
    assert rs[0].success and rs[0].video == "videos/x.mp4"       # first record wins
    assert rs[1].error_kind == "bad_action" and np.isnan(rs[1].action_l1)
    for line in log.path.read_text().splitlines()[:2]:
        json.loads(line)  # strict JSON (no NaN)


# ------------------------------------------------------------------ summaries
def test_summary_aggregates_per_task_suite_overall(tmp_path):
    plan = _plan(tasks=(0, 1), eps=4)
    results = [_result(s, success=(s.task_index == 0 or s.episode == 0)) for s in plan]
    results[-1] = _result(plan[-1], success=False, error="boom", error_kind="sim_error")
    s = summarize(results, expected_per_task=4)
    t0, t1 = s["tasks"]
    assert (t0["n"], t0["successes"], t0["rate"]) == (4, 4, 1.0)
    assert (t1["n"], t1["successes"], t1["errors"]) == (4, 1, 1)
    assert t1["error_kinds"] == {"sim_error": 1}
    assert t1["ci95"] == pytest.approx(list(wilson_interval(1, 4)))
    suite = s["suites"]["libero_object"]
    assert suite["task_average"] == pytest.approx(0.625) and suite["n"] == 8 and suite["successes"] == 5
    assert s["overall"]["rate"] == pytest.approx(5 / 8)
    table = format_table(s)
    assert "task0" in table and "62.5%" in table
    png = plot_success(s, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_goal_progress_is_pooled_over_episodes_for_suite_and_overall():
    plan = _plan(tasks=(0, 1), eps=2)
    # task 0: a success (1.0) and 1 of 2 goals (0.5); task 1: 0 of 1 and a run without goal records
    results = [_result(plan[0], goals_met=2, goals_total=2),
               _result(plan[1], success=False, goals_met=1, goals_total=2),
               _result(plan[2], success=False, goals_met=0, goals_total=1), _result(plan[3], success=False)]
    s = summarize(results)
    assert [t["goal_progress"] for t in s["tasks"]] == [pytest.approx(0.75), pytest.approx(0.0)]
    assert s["overall"]["goal_progress"] == pytest.approx(1.5 / 3)  # unrecorded episodes do not count
    assert s["suites"]["libero_object"]["goal_progress"] == pytest.approx(1.5 / 3)
    assert summarize([_result(plan[0])])["overall"]["goal_progress"] is None


def test_summary_lists_planned_tasks_without_results():
    s = summarize([], task_names={("libero_10", 3): "t3"}, expected_per_task=2)
    assert s["tasks"][0]["n"] == 0 and s["tasks"][0]["complete"] is False


# ------------------------------------------------------------------ policies
def _ctx(seed):
    return EpisodeContext(seed=seed, suite="libero_object", task_index=0, task_name="t", language="l", init_index=0)


def test_tiny_policy_rows_do_not_depend_on_the_batch():
    pol = make_policy(PolicySpec(kind="tiny", seed=3, noise=0.2))
    rng = np.random.default_rng(0)
    b = 37
    obs = [{"joint_states": rng.normal(size=7), "gripper_states": rng.normal(size=2)} for _ in range(b)]
    ids, steps = list(range(b)), [int(t) for t in rng.integers(0, 300, size=b)]
    pol.reset(ids, [_ctx(100 + i) for i in ids])
    batched = pol.act(ids, obs, steps)
    single = np.concatenate([pol.act([i], [obs[i]], [steps[i]]) for i in ids])
    # equal up to float rounding: a matmul over 37 rows and over 1 row may take different BLAS kernels
    # (seen once under load); the noise of a row is its own (seed, step), which is what is tested
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pol.act(ids[5:9], obs[5:9], steps[5:9]), batched[5:9], rtol=0, atol=1e-6)
    assert batched.shape == (b, 7) and np.all(np.abs(batched) <= 1)
    # same (seed, step) -> same noise, different step -> different noise
    assert noise_seed(5, 1) == noise_seed(5, 1) != noise_seed(5, 2) != noise_seed(6, 1)


def test_a_checkpoint_reached_through_a_symlink_is_the_same_for_resume(tmp_path):
    from clad.eval.config import EvalConfig

    (tmp_path / "real" / "final").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    a, b = (EvalConfig(suite="libero_object", policy=PolicySpec(kind="clad", checkpoint=str(d / "final")))
            for d in (tmp_path / "real", tmp_path / "link"))
    assert a.result_fields() == b.result_fields()
    other = EvalConfig(suite="libero_object", policy=PolicySpec(kind="clad", checkpoint=str(tmp_path / "x")))
    assert other.result_fields() != a.result_fields()


def test_config_rules_and_resume_check(tmp_path):
    from pipelines.evaluate import _check_resume

    with pytest.raises(ValueError):
        EvalConfig(policy=PolicySpec(kind="expert"), policy_mode="server")
    with pytest.raises(ValueError):
        PolicySpec(kind="clad")
    cfg = EvalConfig(suite="libero_object", policy=PolicySpec(kind="tiny"))
    (tmp_path / "eval_config.json").write_text(json.dumps(cfg.to_dict()))
    _check_resume(tmp_path, cfg.replace(base_seed=1))   # no episodes yet: new settings replace the old file
    (tmp_path / "episodes.jsonl").write_text('{"task_index": 0, "episode": 0}\n')
    _check_resume(tmp_path, cfg.replace(actors=7, video_episodes=0))   # speed-only changes are fine
    with pytest.raises(ConfigError, match="base_seed"):
        _check_resume(tmp_path, cfg.replace(base_seed=1))


# ------------------------------------------------------------------ the episode protocol (fake simulator)
class _FakeEnv:
    """Succeeds at step `succeed_at`; raises at step `raise_at`. Records what the runner did."""

    def __init__(self, succeed_at=None, raise_at=None):
        self.succeed_at, self.raise_at = succeed_at, raise_at
        self.raw = self
        self.resets = []
        self.t = 0

    def seed(self, s):
        self.seeded = s

    def reset(self, init_index, settle_steps):
        self.resets.append((init_index, settle_steps))
        self.t = 0
        return {"joint_states": np.zeros(7), "gripper_states": np.zeros(2)}

    def step(self, a):
        if self.raise_at is not None and self.t == self.raise_at:
            raise RuntimeError("MuJoCo Warning: Nan, Inf or huge value in QACC")
        self.t += 1
        return {"joint_states": np.full(7, self.t), "gripper_states": np.zeros(2)}, 0.0, self.t == self.succeed_at, {}


class _ScriptedPolicy:
    obs_keys = ()
    needs_env = False

    def __init__(self, bad_at=None, raise_at=None):
        self.bad_at, self.raise_at = bad_at, raise_at

    def reset(self, env_ids, contexts):
        self.ctx = contexts[0]

    def act(self, env_ids, obs, steps):
        t = steps[0]
        if t == self.raise_at:
            raise ValueError("policy bug")
        a = np.full((1, 7), 0.1)
        if t == self.bad_at:
            a[0, 2] = np.nan
        return a


class _Task:
    suite, index, name, language = "libero_object", 4, "pick_up_the_ketchup", "pick up the ketchup"


@pytest.mark.parametrize("env_kw,pol_kw,success,steps,kind", [
    ({"succeed_at": 7}, {}, True, 7, None),
    ({}, {}, False, 12, None),                                  # budget exhausted
    ({}, {"bad_at": 3}, False, 3, "bad_action"),
    ({"raise_at": 5}, {}, False, 5, "sim_error"),
    ({}, {"raise_at": 2}, False, 2, "policy_error"),
])
def test_run_episode_protocol_and_error_recording(env_kw, pol_kw, success, steps, kind):
    from clad.eval.episode import run_episode

    env, pol = _FakeEnv(**env_kw), _ScriptedPolicy(**pol_kw)
    r = run_episode(env, pol, _Task(), init_index=3, seed=1234, max_steps=12, settle_steps=10, episode=53)
    assert env.resets == [(3, 10)] and env.seeded == 1234
    assert pol.ctx.seed == 1234 and pol.ctx.language == "pick up the ketchup" and pol.ctx.env is None
    assert (r.success, r.steps, r.error_kind) == (success, steps, kind)
    assert (r.task_index, r.episode, r.init_index) == (4, 53, 3)
    if kind:
        assert r.error and ("step" in r.error)
    if kind == "sim_error":
        assert "QACC" in r.error
    sent = steps + (kind == "sim_error")  # the action the simulator choked on was sent
    assert r.action_l1 == pytest.approx(0.7 * sent)
