"""The rollout agent: batched history, replanning / ensembling, per-env reset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clad.model import CladModel, model_preset
from clad.model.agent import Agent, CladAgent
from clad.model.checkpoint import save_checkpoint
from clad.model.testing import fake_stats, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_agent(b: int = 2, **policy) -> CladAgent:
    model = tiny_model(policy=policy)
    model.freeze_stage1()
    return CladAgent(model, num_envs=b, generator=torch.Generator().manual_seed(0))


def obs(agent: CladAgent, step: int) -> dict:
    cfg = agent.cfg
    g = torch.Generator().manual_seed(step)
    b = agent.num_envs
    return {
        "rgb": torch.randint(0, 256, (b, cfg.vision.num_views, 3, 24, 24), generator=g, dtype=torch.uint8).numpy(),
        "proprio": torch.randn(b, cfg.proprio_dim, generator=g).numpy(),
        "lang_emb": torch.randn(b, cfg.lang_dim, generator=g).numpy(),
    }


def test_act_returns_finite_actions_and_keeps_history():
    agent = make_agent()
    tau = agent.tau
    frames, acts = [], []
    for step in range(tau + 3):
        o = obs(agent, step)
        frames.append(o)
        if step == 0:  # at episode start the past is the current frame and zero, masked actions
            win = agent._window(torch.arange(2), {k: torch.as_tensor(v) for k, v in o.items()})
            assert torch.equal(win["rgb_prev"], win["rgb_curr"]) and not win["actions_past_mask"].any()
        a = agent.act(o)
        assert a.shape == (2, 7) and a.dtype == np.float32 and np.isfinite(a).all()
        acts.append(a)
    # the window at step t holds frame max(t - tau, 0) and actions a_{t-tau} .. a_{t-1}
    t = tau + 3
    o = obs(agent, t)
    win = agent._window(torch.arange(2), {k: torch.as_tensor(v) for k, v in o.items()})
    assert torch.equal(win["rgb_prev"], torch.as_tensor(frames[t - tau]["rgb"]))
    assert torch.equal(win["proprio_prev"], torch.as_tensor(frames[t - tau]["proprio"]))
    assert win["actions_past_mask"].all()
    executed = np.stack(acts[t - tau : t], 1)
    executed[..., -1] = np.sign(executed[..., -1])  # the simulator acts on the gripper's sign (issue 15)
    assert torch.allclose(win["actions_past"], torch.as_tensor(executed))
    assert not np.isin(np.stack(acts, 1)[..., -1], (-1.0, 0.0, 1.0)).all()  # the policy's output is continuous
    z_p, z_s = agent.plan(o)
    assert z_p.shape == z_s.shape == (2, agent.cfg.dynamics.hidden_dim) and torch.isfinite(z_p).all()
    assert int(agent.t[0]) == t  # plan() does not advance time


def test_receding_horizon_replans_every_execution_horizon(monkeypatch):
    agent = make_agent()  # tiny: chunk 4, execution horizon 2
    calls = []
    predict = agent.model.predict_actions
    monkeypatch.setattr(agent.model, "predict_actions", lambda o, g=None, n=None: calls.append(len(o["lang_emb"])) or predict(o, g, n))
    chunks = []
    for step in range(5):
        agent.act(obs(agent, step))
        chunks.append(agent.queue.clone())
    assert calls == [2, 2, 2]  # steps 0, 2, 4
    agent.reset([1])  # env 1 starts a new episode: only it replans, and its past is cleared
    assert int(agent.t[1]) == 0 and int(agent.t[0]) == 5 and agent.past_actions[1].abs().sum() == 0
    agent.act(obs(agent, 5))
    assert calls == [2, 2, 2, 1]
    win = agent._window(torch.arange(2), {k: torch.as_tensor(v) for k, v in obs(agent, 6).items()})
    assert win["actions_past_mask"][1].sum() == 1 and win["actions_past_mask"][0].all()


def test_temporal_ensembling_weights_oldest_most():
    agent = make_agent(temporal_ensemble=True)
    for step in range(6):
        a = agent.act(obs(agent, step))
        assert a.shape == (2, 7) and np.isfinite(a).all()
    assert agent.ens_valid.all()
    agent.reset([0])
    assert not agent.ens_valid[0].any() and agent.ens_valid[1].all()
    # first action after a reset is the newest chunk's first action
    agent.act(obs(agent, 7))
    executed = agent.ens[0, 0, 0].clone()
    executed[-1] = torch.sign(executed[-1])  # stored as executed: the gripper's sign (issue 15)
    assert np.allclose(agent.past_actions[0, -1].numpy(), executed.numpy())


def test_eval_adapter_form_subsets_seeds_and_checkpoint(tmp_path):
    agent = make_agent(b=3)
    save_checkpoint(agent.model, tmp_path, "stage2")
    loaded = Agent.from_checkpoint(str(tmp_path), device="cpu")  # the eval adapter's entry point
    assert loaded.config == agent.cfg and loaded.num_envs == 1
    o = obs(agent, 0)
    # seeded noise: the action of an env does not depend on which other envs share the batch
    full = loaded.act([0, 1, 2], o["rgb"], o["proprio"], o["lang_emb"], seeds=[7, 8, 9], steps=[0, 0, 0])
    assert full.shape == (3, 7) and loaded.num_envs == 3
    loaded.reset([0, 1, 2])
    part = loaded.act([2], o["rgb"][2:], o["proprio"][2:], o["lang_emb"][2:], seeds=[9], steps=[0])
    assert np.allclose(part[0], full[2], atol=1e-5)
    assert loaded.t.tolist() == [0, 0, 1]  # only env 2 advanced
    # the dict form with env ids is the same call
    out = loaded.act({"env_ids": [0], "rgb": o["rgb"][:1], "proprio": o["proprio"][:1], "lang_emb": o["lang_emb"][:1]})
    assert out.shape == (1, 7) and loaded.t.tolist() == [1, 0, 1]


def test_features_only_agent_uses_precomputed_features():
    cfg = model_preset("tiny")
    cfg = cfg.replace(vision=cfg.vision.replace(backbone="decisionnce_rn50", feature_dim=12))
    model = CladModel(cfg, fake_stats(cfg))
    model.freeze_stage1()
    agent = CladAgent(model, 2)
    for step in range(3):
        o = {"feat": torch.randn(2, 1, 12), "proprio": torch.randn(2, cfg.proprio_dim), "lang_emb": torch.randn(2, cfg.lang_dim)}
        assert np.isfinite(agent.act(o)).all()


def test_skipping_unread_frames_gives_identical_actions():
    """Rendering only the steps `frames_needed` names (what the evaluator does) changes no action."""
    full, sparse = make_agent(execution_horizon=4), make_agent(execution_horizon=4)  # tiny: tau 3, chunk 4
    needed = [s for s in range(14) if sparse.frames_needed(s)]
    assert needed == [0, 1, 4, 5, 8, 9, 12, 13]  # replans at 0, 4, 8, 12 read frames 1, 5, 9 as t - tau
    ids = [0, 1]
    for step in range(14):
        o = obs(full, step)
        kw = dict(seeds=[11, 12], steps=[step, step])
        a = full.act(ids, o["rgb"], o["proprio"], o["lang_emb"], **kw)
        b = sparse.act(ids, o["rgb"] if step in needed else None, o["proprio"], o["lang_emb"], **kw)
        assert np.array_equal(a, b), step
    # a replanning step without images is refused with the reason, not run on a stale frame
    for _ in (14, 15):  # unread frames
        sparse.act(ids, None, o["proprio"], o["lang_emb"])
    with pytest.raises(ValueError, match="no images"):  # step 16 replans
        sparse.act(ids, None, o["proprio"], o["lang_emb"])
    assert make_agent(temporal_ensemble=True).frames_needed(7)
