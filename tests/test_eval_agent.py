"""The CLaD agent behind the rollout-policy protocol: observation adapter shapes, a tiny real checkpoint
loaded through `PolicySpec(kind="clad")`, seeded noise that does not depend on batching, and a short real
LIBERO episode driven by the agent."""

from __future__ import annotations

import numpy as np
import pytest

from clad.eval.agent_adapter import AgentInputAdapter
from clad.eval.policy import EpisodeContext, PolicySpec
from clad.eval.registry import make_policy


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from clad.model.checkpoint import save_checkpoint
    from clad.model.model import CladModel
    from clad.model.sizes import model_preset
    from clad.model.testing import fake_stats

    torch.manual_seed(0)
    cfg = model_preset("tiny")
    model = CladModel(cfg, fake_stats(cfg))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "stage2", "stage2")


def _obs(rng, size=32):
    return {"agentview_rgb": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            "eye_in_hand_rgb": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            "joint_states": rng.normal(size=7), "gripper_states": rng.normal(size=2),
            "ee_states": rng.normal(size=6), "ee_pos": rng.normal(size=3), "ee_ori": rng.normal(size=3)}


def test_adapter_shapes_follow_the_config_order():
    rng = np.random.default_rng(0)
    obs = [_obs(rng) for _ in range(3)]
    ad = AgentInputAdapter(cameras=("eye_in_hand", "agentview"), proprio_keys=("gripper_states", "joint_states"))
    rgb, proprio = ad.images_and_proprio(obs)
    assert rgb.shape == (3, 2, 3, 32, 32) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1, 0], obs[1]["eye_in_hand_rgb"].transpose(2, 0, 1))
    assert proprio.shape == (3, 9) and proprio.dtype == np.float32
    np.testing.assert_allclose(proprio[2, :2], obs[2]["gripper_states"], rtol=1e-6)
    assert ad.obs_keys == ("eye_in_hand_rgb", "agentview_rgb", "gripper_states", "joint_states")
    with pytest.raises(ValueError):
        AgentInputAdapter(cameras=(), proprio_keys=("velocity",))


def test_runtime_overrides_change_how_the_checkpoint_runs_not_its_weights(tiny_checkpoint):
    import torch

    from clad.eval.agent_adapter import CladAgentPolicy

    plain = CladAgentPolicy.from_checkpoint(str(tiny_checkpoint))
    spec = PolicySpec(kind="clad", checkpoint=str(tiny_checkpoint),
                      runtime=("policy.execution_horizon=1", "policy.num_inference_steps=3"))
    tuned = CladAgentPolicy.from_checkpoint(spec.checkpoint, runtime=spec.runtime)
    p0, p1 = plain.agent.config.policy, tuned.agent.config.policy
    assert (p1.execution_horizon, p1.num_inference_steps) == (1, 3)
    assert (p0.execution_horizon, p0.num_inference_steps) != (1, 3)
    a, b = plain.agent.model.state_dict(), tuned.agent.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("runtime, match", [
    (("policy.chunk_length=2",), "change the trained weights"),   # a weight-shaping field
    (("policy.execution_horizon",), "KEY=VALUE"),
])
def test_runtime_overrides_refuse_fields_that_shape_the_weights(runtime, match):
    with pytest.raises(ValueError, match=match):
        PolicySpec(kind="clad", checkpoint="ckpt", runtime=runtime)
    with pytest.raises(ValueError, match="CLaD agent only"):
        PolicySpec(kind="tiny", runtime=("policy.execution_horizon=1",))


def test_runtime_override_with_a_bad_value_names_the_field(tiny_checkpoint):
    from clad.errors import ConfigError
    from clad.eval.agent_adapter import CladAgentPolicy

    with pytest.raises(ConfigError, match="execution_horizon"):  # the tiny preset's chunk is shorter than 9
        CladAgentPolicy.from_checkpoint(str(tiny_checkpoint), runtime=("policy.execution_horizon=9",))


@pytest.mark.slow  # loads the MiniLM instruction encoder (5-40 s)
def test_clad_policy_from_checkpoint_seeded_and_batch_independent(tiny_checkpoint):
    rng = np.random.default_rng(1)
    obs = [_obs(rng) for _ in range(3)]
    ctxs = [EpisodeContext(seed=10 + i, suite="libero_object", task_index=0, task_name="t",
                           language="pick up the ketchup and place it in the basket", init_index=0)
            for i in range(3)]
    spec = PolicySpec(kind="clad", checkpoint=str(tiny_checkpoint))
    batched, single = make_policy(spec), make_policy(spec)
    assert batched.obs_keys == ("agentview_rgb", "joint_states", "gripper_states")
    batched.reset([0, 1, 2], ctxs)
    single.reset([0, 1, 2], ctxs)
    for t in range(3):  # replans at t = 0 and 2 (execution_horizon 2)
        a = batched.act([0, 1, 2], obs, [t] * 3)
        b = np.concatenate([single.act([i], [obs[i]], [t]) for i in range(3)])
        assert a.shape == (3, 7) and np.all(np.isfinite(a))
        # same noise per (seed, step); only float rounding of batched GEMMs may differ
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a[0], a[1])  # different seeds/observations, different actions


@pytest.mark.slow
@pytest.mark.libero
def test_clad_policy_drives_a_real_libero_episode(tiny_checkpoint):
    from clad.eval.protocol import plan_episodes
    from clad.eval.worker import EpisodeWorker

    policy = make_policy(PolicySpec(kind="clad", checkpoint=str(tiny_checkpoint)))
    worker = EpisodeWorker("libero_object", policy, camera_size=32, name="w")
    try:
        spec = plan_episodes("libero_object", [0], 1, 0, max_steps=5, settle_steps=1)[0]
        res = worker.run(spec)
    finally:
        worker.close_env()
    assert res.error is None, res.error
    assert res.steps == 5 and not res.success and res.action_l1 > 0


class _Recorder:
    """Wraps a rollout policy: records which steps came with images; optionally asks for every frame."""

    def __init__(self, policy, always_render: bool):
        self.policy, self.always_render, self.rendered = policy, always_render, []
        self.obs_keys, self.needs_env = policy.obs_keys, policy.needs_env

    def reset(self, env_ids, contexts):
        self.policy.reset(env_ids, contexts)

    def frames_needed(self, env_id, step):
        return True if self.always_render else self.policy.frames_needed(env_id, step)

    def act(self, env_ids, obs, steps):
        self.rendered += [s for s, o in zip(steps, obs) if "agentview_rgb" in o]
        return self.policy.act(env_ids, obs, steps)


@pytest.mark.slow
@pytest.mark.libero
def test_rendering_only_the_frames_the_agent_reads_changes_no_action(tmp_path):
    import torch

    from clad.eval.protocol import plan_episodes
    from clad.eval.worker import EpisodeWorker
    from clad.model.checkpoint import save_checkpoint
    from clad.model.model import CladModel
    from clad.model.sizes import model_preset
    from clad.model.testing import fake_stats

    torch.manual_seed(0)
    cfg = model_preset("tiny")  # tau 3; execution horizon 4 -> frames read at steps 0, 1, 4, 5, 8, 9
    cfg = cfg.replace(policy=cfg.policy.replace(execution_horizon=4))
    ckpt = save_checkpoint(CladModel(cfg, fake_stats(cfg)), tmp_path / "stage2", "stage2")
    spec = plan_episodes("libero_object", [0], 1, 0, max_steps=10, settle_steps=1)[0]
    results = {}
    for always in (True, False):
        policy = _Recorder(make_policy(PolicySpec(kind="clad", checkpoint=str(ckpt))), always_render=always)
        worker = EpisodeWorker("libero_object", policy, camera_size=32, name="w")
        try:
            results[always] = worker.run(spec), policy.rendered
        finally:
            worker.close_env()
    (full, full_frames), (sparse, sparse_frames) = results[True], results[False]
    assert full.error is None and sparse.error is None, (full.error, sparse.error)
    assert full_frames == list(range(10)) and sparse_frames == [0, 1, 4, 5, 8, 9]
    assert sparse.steps == full.steps == 10 and sparse.action_l1 == full.action_l1 > 0
