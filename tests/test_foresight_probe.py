"""`clad probe-foresight` (clad/eval/foresight_probe.py, pipelines/probe.py): CLaD's foresight against the
"nothing moves" baseline along real rollouts. Unit tests of the arithmetic and of `CladAgent.advance`, then
real LIBERO episodes with a tiny checkpoint: CLaD driving (the same episode `clad eval` runs) and the
scripted expert driving."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clad.errors import CladError
from clad.eval.foresight_probe import cosines
from pipelines.probe import run_probe, summarize_probe


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_cosines_pair_each_prediction_with_the_target_tau_steps_later():
    rng = np.random.default_rng(0)
    target = _unit(rng.normal(size=(10, 8)))
    perfect = np.concatenate([target[3:], target[:3]])  # pred[t] = target[t + 3]
    c = cosines(perfect, target, tau=3)
    assert c["n"] == 7 and c["cos"] == pytest.approx(1.0)
    assert c["cos_still"] == pytest.approx(float((target[:7] * target[3:]).sum(-1).mean()))
    assert cosines(target, target, tau=3)["cos"] == pytest.approx(c["cos_still"])  # "nothing moves" = still
    # a prediction's length does not count (the foresight regresses unit targets but is not normalised)
    assert cosines(perfect * 1.7, target, tau=3)["cos"] == pytest.approx(1.0)
    short = cosines(target[:2], target[:2], tau=3)
    assert short["n"] == 0 and math.isnan(short["cos"])


def test_summary_pools_episodes_and_splits_successes_from_failures():
    rows = [dict(success=True, cos_p=0.99, cos_still_p=0.95, cos_s=0.97, cos_still_s=0.98),
            dict(success=False, cos_p=0.97, cos_still_p=0.96, cos_s=0.95, cos_still_s=0.99),
            dict(success=False, cos_p=float("nan"), cos_still_p=float("nan"), cos_s=float("nan"),
                 cos_still_s=float("nan"))]  # an episode shorter than tau: counted, not averaged
    s = summarize_probe(rows)
    assert s["all"]["episodes"] == 3 and s["all"]["successes"] == 1
    assert s["all"]["cos_p"] == pytest.approx(0.98) and s["all"]["margin_p"] == pytest.approx(0.98 - 0.955)
    assert s["all"]["beats_still_p"] == 2 and s["all"]["beats_still_s"] == 0
    assert s["failures"]["episodes"] == 2 and s["failures"]["cos_s"] == pytest.approx(0.95)
    assert s["successes"]["margin_s"] == pytest.approx(-0.01)


@pytest.fixture(scope="module")
def tiny_model():
    from clad.model.model import CladModel
    from clad.model.sizes import model_preset
    from clad.model.testing import fake_stats

    torch.manual_seed(0)
    cfg = model_preset("tiny")
    return CladModel(cfg, fake_stats(cfg))


def _obs(cfg, b, rng):
    v, s = len(cfg.vision.cameras), cfg.vision.image_size
    return {"rgb": torch.as_tensor(rng.integers(0, 255, (b, v, 3, s, s), dtype=np.uint8)),
            "proprio": torch.as_tensor(rng.normal(size=(b, cfg.proprio_dim)).astype(np.float32)),
            "lang_emb": torch.as_tensor(rng.normal(size=(b, cfg.lang_dim)).astype(np.float32))}


def test_advance_records_what_another_controller_executed(tiny_model):
    from clad.model.agent import CladAgent

    cfg, rng = tiny_model.cfg, np.random.default_rng(1)
    agent = CladAgent(tiny_model, num_envs=2)
    executed = torch.tensor([[0.1, 0, 0, 0, 0, 0, 0.3], [0, 0.2, 0, 0, 0, 0, -0.7]])
    agent.advance(_obs(cfg, 2, rng), executed)
    assert agent.t.tolist() == [1, 1]
    win = agent._window(torch.arange(2), _obs(cfg, 2, rng))
    assert win["actions_past_mask"][:, -1].all() and not win["actions_past_mask"][:, :-1].any()
    # the gripper as the simulator acts on it (its sign, as in the demonstrations)
    torch.testing.assert_close(win["actions_past"][:, -1], torch.tensor([[0.1, 0, 0, 0, 0, 0, 1.0],
                                                                          [0, 0.2, 0, 0, 0, 0, -1.0]]))


def test_latent_targets_are_the_targets_the_still_baseline_compares(tiny_model):
    cfg, rng = tiny_model.cfg, np.random.default_rng(2)
    a, b = _obs(cfg, 3, rng), _obs(cfg, 3, rng)
    batch = {"rgb_curr": a["rgb"], "proprio_curr": a["proprio"], "rgb_next": b["rgb"], "proprio_next": b["proprio"],
             "lang_emb": a["lang_emb"]}
    y_p, y_s = tiny_model.latent_targets(batch, "curr")
    z_p, z_s = tiny_model.latent_targets(batch, "next")
    assert y_p.shape == (3, cfg.dynamics.hidden_dim) and torch.allclose(y_s.norm(dim=-1), torch.ones(3))
    base = tiny_model.target_baselines(batch)
    assert base["cos_still_p"] == pytest.approx(float((y_p * z_p).sum(-1).mean()), abs=1e-6)
    assert base["cos_still_s"] == pytest.approx(float((y_s * z_s).sum(-1).mean()), abs=1e-6)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    from clad.model.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("probe_ckpt") / "stage2", "stage2")


@pytest.mark.slow
@pytest.mark.libero
def test_closed_loop_probe_runs_the_episode_clad_eval_runs(tiny_checkpoint):
    from clad.eval.agent_adapter import CladAgentPolicy
    from clad.eval.foresight_probe import ForesightProbe
    from clad.eval.protocol import plan_episodes
    from clad.eval.worker import EpisodeWorker

    spec = plan_episodes("libero_object", [0], 1, 0, max_steps=12, settle_steps=1)[0]
    results = {}
    for name in ("eval", "probe"):
        policy = CladAgentPolicy.from_checkpoint(str(tiny_checkpoint))
        probe = ForesightProbe(policy) if name == "probe" else None
        worker = EpisodeWorker("libero_object", probe or policy, camera_size=32, name=name)
        try:
            results[name] = worker.run(spec)
        finally:
            worker.close_env()
    assert results["probe"].error is None, results["probe"].error
    # the same actions (seeded per episode and step; rendering every step changes none of them)
    assert results["probe"].steps == results["eval"].steps == 12
    assert results["probe"].action_l1 == pytest.approx(results["eval"].action_l1, rel=1e-6)
    stats = probe.episode_stats(0)
    tau = policy.agent.config.dynamics.tau
    assert stats["n"] == 12 - tau and all(-1 <= stats[k] <= 1 for k in ("cos_p", "cos_s", "cos_still_p", "cos_still_s"))


@pytest.mark.slow
@pytest.mark.libero
def test_probe_command_with_the_expert_driving_resumes_and_refuses_bad_inputs(tiny_checkpoint, tmp_path):
    out = tmp_path / "probe"
    kw = dict(checkpoint=str(tiny_checkpoint), suite="libero_object", tasks=["0"], out=str(out), driver="expert",
              max_steps=10, settle_steps=1, camera_size=32)
    summary = run_probe(init_states="0-0", **kw)
    rows = [json.loads(x) for x in (out / "probe.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["driver"] == "expert" and rows[0]["steps"] == 10
    assert rows[0]["n"] == 10 - 3 and math.isfinite(rows[0]["cos_s"])  # tiny preset: tau = 3
    assert summary["all"]["episodes"] == 1 and (out / "probe_summary.json").is_file()
    run_probe(init_states="0-0", **kw)  # finished episodes are skipped, not run or logged twice
    assert len((out / "probe.jsonl").read_text().splitlines()) == 1
    with pytest.raises(CladError, match="another probe"):
        run_probe(init_states="0-0", **{**kw, "driver": "policy"})
    with pytest.raises(CladError, match="--max-steps 10"):  # another step budget would mix two probes' rows
        run_probe(init_states="0-0", **{**kw, "max_steps": 20})
    with pytest.raises(CladError, match="init states per task"):
        run_probe(init_states="0-50", **{**kw, "out": str(tmp_path / "x")})


def test_a_checkpoint_without_stage_1_is_refused_before_any_simulator(tiny_model, tmp_path):
    from clad.model.checkpoint import save_checkpoint
    from clad.model.model import CladModel
    from clad.model.testing import fake_stats

    cfg = tiny_model.cfg.replace(policy=tiny_model.cfg.policy.replace(foresight="none"))
    ckpt = save_checkpoint(CladModel(cfg, fake_stats(cfg)), tmp_path / "control", "stage2")
    with pytest.raises(CladError, match="policy.foresight='none'"):
        run_probe(str(ckpt), "libero_object", ["0"], "0-0", str(tmp_path / "p"))
    assert not (tmp_path / "p" / "probe.jsonl").exists()


def test_an_agent_walked_through_a_recorded_episode_plans_the_training_windows_foresight(tiny_model):
    """What the probe measures is what stage-1 validation measures: stepping the agent through a recorded
    episode (plan, then `advance` with the recorded action) gives, at every step t, the foresight of the
    training window at t, and the target latent of frame t + tau (the window's `next`)."""
    from clad.data.windows import WindowSpec, window_batch
    from clad.eval.foresight_probe import cosines
    from clad.model.agent import CladAgent
    from test_windows import make_episode

    cfg = tiny_model.eval().cfg  # as the agent runs it: no action masking, no dropout
    s = cfg.vision.image_size
    ep = make_episode(T=14, H=s, W=s)
    ep["actions"][:, -1] = np.sign(ep["actions"][:, -1] - 5)  # the gripper as recorded: +-1
    lang = np.random.default_rng(3).normal(size=cfg.lang_dim).astype(np.float32)
    spec = WindowSpec(tau=cfg.dynamics.tau, chunk=cfg.policy.chunk_length, views=cfg.vision.cameras,
                      proprio_keys=cfg.proprio_keys)
    T = ep["length"]
    win = {k: torch.as_tensor(v) for k, v in window_batch(ep, spec, lang, np.arange(T)).items()}
    with torch.no_grad():
        want_p, want_s = tiny_model.foresight(win)
        next_p, next_s = tiny_model.latent_targets(win, "next")

    agent = CladAgent(tiny_model, num_envs=1)
    got_p, got_s, tgt_p, tgt_s = [], [], [], []
    for t in range(T):
        obs = {"rgb": win["rgb_curr"][t:t + 1], "proprio": win["proprio_curr"][t:t + 1],
               "lang_emb": win["lang_emb"][t:t + 1]}
        z_p, z_s = agent.plan(obs)
        y_p, y_s = tiny_model.latent_targets({"rgb_curr": obs["rgb"], "proprio_curr": obs["proprio"],
                                              "lang_emb": obs["lang_emb"]})
        got_p.append(z_p[0]), got_s.append(z_s[0]), tgt_p.append(y_p[0]), tgt_s.append(y_s[0])
        agent.advance(obs, torch.as_tensor(ep["actions"][t:t + 1]))
    torch.testing.assert_close(torch.stack(got_p), want_p.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.stack(got_s), want_s.float(), atol=1e-5, rtol=1e-4)
    tau = cfg.dynamics.tau
    torch.testing.assert_close(torch.stack(tgt_s)[tau:], next_s[:T - tau].float(), atol=1e-5, rtol=1e-4)
    # so the probe's episode cosine is validation's cosine over the windows whose t + tau is in the episode
    c = cosines(torch.stack(got_s).numpy(), torch.stack(tgt_s).numpy(), tau)
    cos = torch.nn.functional.cosine_similarity(want_s[:T - tau].float(), next_s[:T - tau].float(), dim=-1)
    assert c["cos"] == pytest.approx(float(cos.mean()), abs=1e-5)
