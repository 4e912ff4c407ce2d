"""What one training step optimises and what validation measures, per stage.

`StageObjective` exposes the stage's loss as `forward`, so data-parallel wrappers (DDP) see a regular
module call and synchronise gradients. Validation functions average metrics over a few batches of the
held-out episodes.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from clad.model.model import CladModel

Batch = Mapping[str, torch.Tensor]


class StageObjective(nn.Module):
    """`forward(batch) -> (loss, metrics)` for stage 1 or stage 2 of a CladModel."""

    def __init__(self, model: CladModel, stage: str):
        super().__init__()
        if stage not in ("stage1", "stage2"):
            raise ValueError(f"unknown stage {stage!r}")
        self.model = model
        self.stage = stage

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.stage == "stage1":
            return self.model.stage1_loss(batch)
        return self.model.stage2_loss(batch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = self.model.stage1_parameters() if self.stage == "stage1" else self.model.stage2_parameters()
        return [p for p in params if p.requires_grad]


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


@torch.no_grad()
def validate_stage1(model: CladModel, batches: Iterable[Batch]) -> dict[str, float]:
    """Stage-1 losses, foresight-to-target cosine and collapse indicator on held-out windows, plus
    `recon_at_horizon`: the L1 error of the decoded proprio foresight at t+tau divided by the error of the
    "nothing moves" predictor p_t, both in normalised units. < 1 means the foresight knows more than the
    present; being relative to each horizon's own trivial predictor, it is comparable across tau.
    `cos_still_p/s` (cosine of the target at t with the target at t + tau) and `target_cos_pairwise_p/s`
    (between the targets of different samples) are the baselines the cosines are read against."""
    was_training = model.training
    model.eval()
    rows = []
    for batch in batches:
        _, metrics = model.stage1_loss(batch)
        norm = model.normalizer
        p_curr = norm.normalize("proprio", batch["proprio_curr"].to(model.device).float())
        p_next = norm.normalize("proprio", batch["proprio_next"].to(model.device).float())
        baseline = F.l1_loss(p_curr, p_next).item()
        if "recon_p" in metrics:
            metrics["recon_at_horizon"] = metrics["recon_p"] / max(baseline, 1e-6)
        metrics["still_baseline_p"] = baseline
        # what cos_p / cos_s must beat: the target at t against the target at t + tau, and the targets' spread
        metrics.update(model.target_baselines(batch))
        rows.append(metrics)
    model.train(was_training)
    return {f"val/{k}": v for k, v in _mean(rows).items()}


@torch.no_grad()
def validate_stage2(model: CladModel, batches: Iterable[Batch], seed: int = 0) -> dict[str, float]:
    """Stage-2 denoising loss and the error of sampled action chunks against the demonstrated ones
    (MSE and L1 in normalised units, over the valid steps of each chunk).

    `action_mse_past_masked` / `action_l1_past_masked`: the same with every past action masked (the same
    diffusion noise): in open loop the past actions are the demonstrator's, so `action_mse` rewards copying
    them; the masked number does not (in closed loop the past actions are the policy's own)."""
    was_training = model.training
    model.eval()
    rows = []
    gen = torch.Generator(device=model.device).manual_seed(seed)
    gen_masked = torch.Generator(device=model.device).manual_seed(seed)
    for batch in batches:
        _, metrics = model.stage2_loss(batch)
        norm = model.normalizer
        target = norm.normalize("actions", batch["actions_future"].to(model.device).float())
        mask = batch["actions_future_mask"].to(model.device).bool()
        masked_past = dict(batch, actions_past_mask=torch.zeros_like(batch["actions_past_mask"]))
        for suffix, b, g in (("", batch, gen), ("_past_masked", masked_past, gen_masked)):
            err = norm.normalize("actions", model.predict_actions(b, generator=g)) - target
            valid = mask.unsqueeze(-1).expand_as(err)
            metrics[f"action_mse{suffix}"] = err.pow(2)[valid].mean().item()
            metrics[f"action_l1{suffix}"] = err.abs()[valid].mean().item()
        rows.append(metrics)
    model.train(was_training)
    return {f"val/{k}": v for k, v in _mean(rows).items()}
