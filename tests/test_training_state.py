"""Training state round trip without pickle: optimiser moments, lr schedule position and RNG continue."""

import random

import numpy as np
import pytest
import torch

from clad.errors import CheckpointError
from clad.training.optim import OptimConfig, build_optimizer, build_scheduler, lr_factor
from clad.training.state import load_training_state, save_training_state


def _train(model, opt, sched, steps):
    for _ in range(steps):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)
    assert lr_factor(100, 100, 10, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_resume_matches_uninterrupted_run(tmp_path):
    cfg = OptimConfig(lr=1e-2, warmup_steps=2)

    def fresh():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))
        o = build_optimizer(m, cfg)
        return m, o, build_scheduler(o, cfg, total_steps=10)

    # uninterrupted 4 steps
    m1, o1, s1 = fresh()
    torch.manual_seed(1)
    _train(m1, o1, s1, 4)

    # 2 steps, save, rebuild from scratch, load, 2 more steps
    m2, o2, s2 = fresh()
    torch.manual_seed(1)
    _train(m2, o2, s2, 2)
    save_training_state(tmp_path, step=2, optimizer=o2, scheduler=s2, extra={"samples_seen": 16})
    weights = {k: v.clone() for k, v in m2.state_dict().items()}
    torch.manual_seed(123)  # disturb the RNG: the restore must bring it back
    random.seed(5)
    np.random.seed(5)

    m3, o3, s3 = fresh()
    m3.load_state_dict(weights)
    info = load_training_state(tmp_path, optimizer=o3, scheduler=s3)
    assert info["step"] == 2 and info["extra"]["samples_seen"] == 16
    assert s3.last_epoch == 2 and o3.param_groups[0]["lr"] == pytest.approx(s2.get_last_lr()[0])
    _train(m3, o3, s3, 2)

    for (k, a), b in zip(m1.state_dict().items(), m3.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert o3.param_groups[0]["lr"] == pytest.approx(o1.param_groups[0]["lr"])


def test_missing_state_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="training state"):
        load_training_state(tmp_path)
