"""Stage 1 / stage 2 behaviour on the tiny preset: gradients, freezing, variants, overfitting a fixed batch."""

from __future__ import annotations

import pytest
import torch

from clad.model import CladModel, model_preset
from clad.model.testing import fake_batch, fake_stats, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_stage1_metrics_and_no_gradient_into_targets():
    model = tiny_model()
    batch = fake_batch(model.cfg, 3)
    loss, metrics = model.stage1_loss(batch)
    for k in ("loss", "latent_p", "latent_s", "recon_p", "recon_s", "cos_p", "cos_s", "target_std_p", "target_std_s"):
        assert k in metrics and torch.isfinite(torch.tensor(metrics[k])), k
    loss.backward()
    targets = list(model.dynamics.target_encoders.parameters()) + list(model.target_vision.parameters())
    assert targets and all(not p.requires_grad and p.grad is None for p in targets)
    assert model.dynamics.encoders.f_p.net[0].weight.grad is not None  # online encoders learn
    assert model.vision.nets[0].trunk[0].weight.grad is not None  # the CNN is trained in stage 1
    assert all(p.grad is None for p in model.policy.parameters())


def test_update_ema_moves_targets_by_the_formula():
    model = tiny_model()
    online = model.dynamics.encoders.f_p.net[0].weight
    target = model.dynamics.target_encoders.f_p.net[0].weight
    with torch.no_grad():
        online.add_(1.0)
    before = target.detach().clone()
    model.update_ema()
    m = model.cfg.dynamics.ema_decay
    assert torch.allclose(target, m * before + (1 - m) * online, atol=1e-6)
    tv_on, tv_tg = model.vision.nets[0].trunk[0].weight, model.target_vision.nets[0].trunk[0].weight
    assert torch.allclose(tv_tg, tv_on, atol=1e-6)  # equal copies stay equal


def test_stage2_leaves_stage1_bitwise_unchanged():
    model = tiny_model()
    batch = fake_batch(model.cfg, 3)
    with pytest.raises(RuntimeError, match="freeze_stage1"):
        model.stage2_loss(batch)
    model.freeze_stage1()
    model.train()
    assert not model.dynamics.training and not model.vision.training  # frozen parts stay in eval mode
    stage1 = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("policy.")}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # even over *all* parameters
    for _ in range(2):
        loss, metrics = model.stage2_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in stage1.items())
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("policy."))


def test_own_policy_cnn_starts_from_stage1_and_only_it_learns_in_stage2():
    """policy.obs_vision='own': e_s reads a copy of the stage-1 CNN that the action loss trains; the foresight
    keeps the frozen stage-1 CNN."""
    model = tiny_model(policy={"obs_vision": "own"})
    with torch.no_grad():  # stand in for a trained stage 1
        model.vision.nets[0].trunk[0].weight.add_(0.5)
    model.freeze_stage1()
    model.init_policy_vision()
    own, stage1_cnn = model.policy.vision, model.vision
    assert all(torch.equal(a, b) for a, b in zip(own.state_dict().values(), stage1_cnn.state_dict().values()))
    names = {n for n, _ in model.named_parameters()}
    assert {f"policy.vision.{n}" for n, _ in own.named_parameters()} <= names
    stage1 = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("policy.")}
    model.train()
    opt = torch.optim.AdamW(list(model.stage2_parameters()), lr=1e-2)
    batch = fake_batch(model.cfg, 3)
    for _ in range(2):
        loss, _ = model.stage2_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert own.nets[0].trunk[0].weight.grad is not None
    assert not torch.equal(own.nets[0].trunk[0].weight, stage1_cnn.nets[0].trunk[0].weight)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in stage1.items())


@pytest.mark.parametrize("changes, why", [
    ({"policy": {"obs_vision": "own", "foresight": "none"}}, "already trains its CNN"),
    ({"policy": {"obs_vision": "own", "obs_encoder": "reuse"}}, "no e_s"),
])
def test_own_policy_cnn_rejects_configs_where_it_means_nothing(changes, why):
    from clad.errors import ConfigError
    from clad.config import config_from_dict

    data = model_preset("tiny").to_dict()
    data["policy"].update(changes["policy"])
    with pytest.raises(ConfigError, match=f"policy.obs_vision='own'.*{why}"):
        config_from_dict(type(model_preset("tiny")), data, "test config")


VARIANTS = [
    {"policy": {"foresight": "none"}},
    {"policy": {"foresight": "proprio"}},
    {"policy": {"foresight": "semantic"}},
    {"policy": {"obs_encoder": "reuse"}},
    {"policy": {"temporal_ensemble": True}},
    {"policy": {"obs_vision": "own"}},
    {"dynamics": {"recon": False}},
    {"dynamics": {"attention": "s_to_p"}},
    {"dynamics": {"attention": "symmetric"}},
    {"dynamics": {"mask_ratio": 1.0}},
    {"dynamics": {"normalize_prediction": True, "latent_reduction": "mean", "target_pool": "max"}},
    {"dynamics": {"action_positions": "sinusoidal"}},
]


@pytest.mark.parametrize("changes", VARIANTS, ids=lambda c: ",".join(f"{k}={v}" for s in c.values() for k, v in s.items()))
def test_variant_builds_runs_forward_backward(changes):
    model = tiny_model(**changes)
    batch = fake_batch(model.cfg, 2)
    if model.dynamics is not None:
        loss, _ = model.stage1_loss(batch)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.stage1_parameters() if p.grad is not None)
        model.update_ema()
        model.freeze_stage1()
    else:
        with pytest.raises(Exception, match="none"):
            model.stage1_loss(batch)
    loss, _ = model.stage2_loss(batch)
    loss.backward()
    grads = [p.grad for p in model.stage2_parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    actions = model.predict_actions(batch)
    assert actions.shape == (2, model.cfg.policy.chunk_length, 7) and torch.isfinite(actions).all()


def test_action_free_masks_at_eval_too():
    model = tiny_model(dynamics={"mask_ratio": 1.0}).eval()
    inputs = model._dynamics_inputs(fake_batch(model.cfg, 2))
    _, masked = model.dynamics.dynamics_latent(**inputs)
    assert masked.all()
    model = tiny_model().eval()
    _, masked = model.dynamics.dynamics_latent(**model._dynamics_inputs(fake_batch(model.cfg, 2)))
    assert masked.sum() == 1  # only the padded step of the episode-start sample


def test_overfits_a_fixed_batch():
    model = tiny_model()
    batch = fake_batch(model.cfg, 4)
    opt = torch.optim.AdamW(model.stage1_parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, _ = model.stage1_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_ema()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])

    model.freeze_stage1()
    opt = torch.optim.AdamW(model.stage2_parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        torch.manual_seed(1)  # fixed batch *and* fixed noise / diffusion steps: a pure memorisation task
        loss, _ = model.stage2_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])


def test_future_mask_excludes_padded_steps(monkeypatch):
    model = tiny_model()
    model.freeze_stage1()
    batch = fake_batch(model.cfg, 2)  # the last sample's last future step is padding
    torch.manual_seed(3)
    base, _ = model.stage2_loss(batch)
    unet_forward = model.policy.unet.forward

    def corrupt_padded(sample, t, cond):
        out = unet_forward(sample, t, cond).clone()
        out[-1, -1] += 1e3  # a wrong prediction on the padded step must cost nothing
        return out

    monkeypatch.setattr(model.policy.unet, "forward", corrupt_padded)
    torch.manual_seed(3)
    again, _ = model.stage2_loss(batch)
    assert torch.allclose(base, again)


def test_autocast_is_a_no_op_on_cpu():
    base = tiny_model()
    cfg = base.cfg.replace(autocast="bf16")
    other = CladModel(cfg, fake_stats(cfg))
    other.load_state_dict(base.state_dict())
    batch = fake_batch(base.cfg, 2)
    torch.manual_seed(0)
    l1, _ = base.stage1_loss(batch)
    torch.manual_seed(0)
    l2, _ = other.stage1_loss(batch)
    assert l2.dtype == torch.float32 and torch.equal(l1, l2)
