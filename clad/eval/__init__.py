"""Evaluation of rollout policies on LIBERO: the episode protocol, policies, result logs and summaries.

Plain Python (no Ray): `pipelines/rollout_pool.py` schedules what lives here on Ray actors, and
`pipelines/evaluate.py` is the `clad eval` command.

    protocol.py      EpisodeSpec, plan_episodes, episode_seed: deterministic (task, episode) work items
    policy.py        RolloutPolicy protocol (reset / act over env ids), EpisodeContext, PolicySpec
    registry.py      make_policy: PolicySpec -> a policy (the one module that imports the implementations)
    agent_adapter.py env observations -> CLaD agent inputs; CladAgentPolicy
    expert_policy.py the scripted expert as a policy;  tiny_policy.py a tiny torch policy (tests, benchmarks)
    zero_policy.py   the no-motion baseline
    episode.py       run_episode: reset to init state k mod 50, settle, step budget, errors recorded
    worker.py        EpisodeWorker: one simulator (lazy, soft-reset, rebuilt on task change or sim error)
    worklist.py      WorkList: pending / in flight / done, re-queue with an attempt limit, exactly once
    results.py       EpisodeResult and the JSONL ResultLog (streamed; read back to resume)
    stats.py         wilson_interval;  summary.py per task / suite / overall, table, bar chart
    video.py         frame grabbing next to the simulator, MP4 writing on a background thread
    config.py        EvalConfig (saved as eval_config.json)

    plan = plan_episodes("libero_10", range(10), 50, base_seed=0, max_steps=520, settle_steps=10)
    result = run_spec(env, make_policy(PolicySpec(kind="expert")), task, plan[0])
    summary = summarize(results)
"""

from clad.eval.episode import run_episode, run_spec
from clad.eval.policy import EpisodeContext, PolicySpec, RolloutPolicy
from clad.eval.registry import make_policy
from clad.eval.protocol import EpisodeSpec, episode_seed, plan_episodes
from clad.eval.results import EpisodeResult, ResultLog
from clad.eval.stats import wilson_interval
from clad.eval.summary import format_table, summarize

__all__ = ["EpisodeContext", "EpisodeResult", "EpisodeSpec", "PolicySpec", "ResultLog", "RolloutPolicy",
           "episode_seed", "format_table", "make_policy", "plan_episodes", "run_episode", "run_spec",
           "summarize", "wilson_interval"]
