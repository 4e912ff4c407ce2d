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
    present; being relative to each horizon's own trivial predictor, it is comparable across tau."""
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
        rows.append(metrics)
    model.train(was_training)
    return {f"val/{k}": v for k, v in _mean(rows).items()}


@torch.no_grad()
def validate_stage2(model: CladModel, batches: Iterable[Batch], seed: int = 0) -> dict[str, float]:
    """Stage-2 denoising loss and the error of sampled action chunks against the demonstrated ones
    (MSE and L1 in normalised units, over the valid steps of each chunk)."""
    was_training = model.training
    model.eval()
    rows = []
    gen = torch.Generator(device=model.device).manual_seed(seed)
    for batch in batches:
        _, metrics = model.stage2_loss(batch)
        pred = model.predict_actions(batch, generator=gen)
        norm = model.normalizer
        target = batch["actions_future"].to(model.device).float()
        mask = batch["actions_future_mask"].to(model.device).bool()
        err = norm.normalize("actions", pred) - norm.normalize("actions", target)
        valid = mask.unsqueeze(-1).expand_as(err)
        metrics["action_mse"] = err.pow(2)[valid].mean().item()
        metrics["action_l1"] = err.abs()[valid].mean().item()
        rows.append(metrics)
    model.train(was_training)
    return {f"val/{k}": v for k, v in _mean(rows).items()}
