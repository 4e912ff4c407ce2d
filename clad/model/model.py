"""CladModel: normaliser + vision + stage-1 dynamics + stage-2 policy, consuming clad/data/batch.py batches.

Training:
    model = CladModel(cfg, stats)
    # stage 1
    loss, metrics = model.stage1_loss(batch); loss.backward(); opt1.step(); model.update_ema()
    # stage 2
    model.freeze_stage1()
    loss, metrics = model.stage2_loss(batch); loss.backward(); opt2.step()
    (optimisers over model.stage1_parameters() / model.stage2_parameters())

Inference (see clad/model/agent.py for the closed loop):
    model.foresight(obs)        -> (z^_p, z^_s), (B, H) each
    model.predict_actions(obs)  -> (B, C, 7) raw env units

Batch keys consumed (values raw, see clad/data/batch.py):
    stage 1: rgb_prev/curr/next (or feat_prev/curr/next), proprio_prev/curr/next, actions_past,
             actions_past_mask, lang_emb
    stage 2: rgb_prev/curr (or feat_*), proprio_prev/curr, actions_past, actions_past_mask, lang_emb,
             actions_future, actions_future_mask
    inference (`obs`): the stage-2 keys without actions_future*.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from clad.errors import ConfigError
from clad.model.config import ModelConfig
from clad.model.dynamics import CrossModalDynamics, ema_update, pool_tokens
from clad.model.image_ops import downsample_images
from clad.model.normalizer import Normalizer
from clad.model.policy import ForesightPolicy
from clad.model.vision import VisionEncoder

Batch = Mapping[str, torch.Tensor]


def autocast_context(mode: str, device: torch.device):
    """bf16/fp16 autocast on CUDA; a no-op on CPU or with mode 'none'."""
    if mode == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


class CladModel(nn.Module):
    def __init__(self, cfg: ModelConfig, stats: Mapping | None = None):
        super().__init__()
        self.cfg = cfg
        self.normalizer = Normalizer(
            {"proprio": (cfg.proprio_dim, cfg.proprio_norm), "actions": (cfg.action_dim, "minmax")}
        )
        if stats is not None:
            self.normalizer.set_stats(stats)
        v = cfg.vision
        # A frozen backbone without a checkpoint directory = features-only mode (batches carry feat_*).
        self.vision = VisionEncoder(v) if (v.trainable or v.checkpoint_dir is not None) else None
        self.target_vision = None
        self.dynamics = None
        if cfg.has_dynamics:
            recon_dim = v.num_views * 3 * v.recon_image_size**2 if v.trainable else cfg.visual_dim
            self.dynamics = CrossModalDynamics(cfg, recon_dim)
            if v.trainable:  # the EMA targets include the trainable backbone
                self.target_vision = copy.deepcopy(self.vision).requires_grad_(False)
        self.policy = ForesightPolicy(cfg)
        self.stage1_frozen = False
        if self.target_vision is not None:
            self.target_vision.eval()

    # ------------------------------------------------------------------------------------------------------
    # bookkeeping

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def autocast(self):
        return autocast_context(self.cfg.autocast, self.device)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.target_vision is not None:
            self.target_vision.eval()
        if self.stage1_frozen:
            for m in self._stage1_modules():
                m.eval()
        return self

    def _stage1_modules(self) -> list[nn.Module]:
        mods = [self.dynamics, self.target_vision]
        if self.dynamics is not None or self.cfg.stage1_vision_frozen:
            mods.append(self.vision)  # a trainable backbone is trained in stage 1 only
        return [m for m in mods if m is not None]

    @property
    def has_stage1(self) -> bool:
        """Parts trained in stage 1 are in this model (dynamics, or the matched control's frozen CNN)."""
        return self.dynamics is not None or self.cfg.stage1_vision_frozen

    def freeze_stage1(self) -> None:
        """Stage 2: stage 1 gets no gradient, stays in eval mode (no action masking, no dropout)."""
        for m in self._stage1_modules():
            m.requires_grad_(False)
            m.eval()
        self.stage1_frozen = True

    def init_policy_vision(self) -> None:
        """policy.obs_vision='own': start the policy's CNN from the (loaded) stage-1 CNN. Call once, before stage 2."""
        if self.policy.vision is not None:
            self.policy.vision.load_state_dict(self.vision.state_dict())

    def stage1_parameters(self) -> Iterator[nn.Parameter]:
        if self.dynamics is None:
            raise ConfigError("policy.foresight='none' has no stage 1 to train")
        mods = [self.dynamics] + ([self.vision] if self.cfg.vision.trainable else [])
        for m in mods:
            yield from (p for p in m.parameters() if p.requires_grad)

    def stage2_parameters(self) -> Iterator[nn.Parameter]:
        yield from (p for p in self.policy.parameters() if p.requires_grad)
        if self.dynamics is None and self.cfg.vision.trainable and not self.cfg.stage1_vision_frozen:
            yield from self.vision.parameters()  # policy-only with its own CNN: the CNN is trained here

    @torch.no_grad()
    def update_ema(self) -> None:
        """Call after every stage-1 optimizer step."""
        if self.dynamics is None:
            return
        self.dynamics.update_ema()
        if self.target_vision is not None:
            ema_update(self.target_vision, self.vision, self.cfg.dynamics.ema_decay)

    @property
    def vision_frozen(self) -> bool:
        """The backbone gets no gradient (a frozen pretrained one, or the stage-1 CNN in stage 2), so cached
        features of it (clad features) may stand in for the images."""
        return self.vision is None or not any(p.requires_grad for p in self.vision.parameters())

    def _to_device(self, batch: Batch) -> dict[str, torch.Tensor]:
        dev = self.device
        return {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    # ------------------------------------------------------------------------------------------------------
    # inputs

    def visual_features(self, batch: Batch, frames: Sequence[str], target: bool = False,
                        offsets: torch.Tensor | None = None) -> list[torch.Tensor]:
        """v for each frame name ('prev', 'curr', 'next'): a list of (B, V * F).

        Precomputed `feat_<frame>` keys (B, V, F) are used when the backbone is frozen; otherwise the frames
        go through the (target) backbone together, sharing one random crop per sample, or the crops `offsets`
        (B, V, 2) from `crop_offsets` when given (so that several networks see the same crop).
        """
        keys = [f"feat_{f}" for f in frames]
        if all(k in batch for k in keys) and (not self.cfg.vision.trainable or self.vision_frozen):
            return [batch[k].flatten(1).float() for k in keys]
        if self.vision is None:
            raise ConfigError(
                f"vision.backbone='{self.cfg.vision.backbone}' without vision.checkpoint_dir runs on precomputed "
                f"features, but the batch lacks {[k for k in keys if k not in batch]}: set vision.checkpoint_dir "
                "or precompute the features"
            )
        net = self.target_vision if target and self.target_vision is not None else self.vision
        rgb = torch.cat([batch[f"rgb_{f}"] for f in frames])
        with torch.no_grad() if target else contextlib.nullcontext():
            feats = net(rgb, share=len(frames), offsets=offsets)
        return list(feats.float().split(batch[f"rgb_{frames[0]}"].shape[0]))

    def crop_offsets(self, batch: Batch, random: bool) -> torch.Tensor | None:
        """One crop per sample (B, V, 2), random or centre, for every network that reads this batch's frames;
        None when nothing is cropped."""
        if self.vision is None or not self.cfg.vision.trainable:
            return None
        key = next((k for k in batch if k.startswith("rgb_")), None)
        if key is None:
            return None
        return self.vision.draw_offsets(batch[key].shape[0], random, device=self.device)

    def _dynamics_inputs(self, batch: Batch, offsets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        norm = self.normalizer
        v_prev, v_curr = self.visual_features(batch, ("prev", "curr"), offsets=offsets)
        return dict(
            p_prev=norm.normalize("proprio", batch["proprio_prev"].float()),
            p_curr=norm.normalize("proprio", batch["proprio_curr"].float()),
            v_prev=v_prev,
            v_curr=v_curr,
            lang=batch["lang_emb"].float(),
            actions=norm.normalize("actions", batch["actions_past"].float()),
            valid=batch["actions_past_mask"].bool(),
        )

    # ------------------------------------------------------------------------------------------------------
    # stage 1

    def stage1_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """L_latent + lambda_recon * L_recon on a training batch; metrics as floats."""
        if self.dynamics is None:
            raise ConfigError("policy.foresight='none' has no stage 1 to train")
        batch = self._to_device(batch)
        with self.autocast():
            # one crop per sample for the online frames (t - tau, t) and the EMA target's frame (t + tau)
            offsets = self.crop_offsets(batch, random=self.training)
            inputs = self._dynamics_inputs(batch, offsets)
            p_next = self.normalizer.normalize("proprio", batch["proprio_next"].float())
            if self.cfg.vision.trainable:
                (v_next,) = self.visual_features(batch, ("next",), target=True, offsets=offsets)
                # a fixed, observable target: the learned feature would move with the weights
                recon_s = downsample_images(batch["rgb_next"], self.cfg.vision.recon_image_size)
            else:
                (v_next,) = self.visual_features(batch, ("next",))
                recon_s = v_next
            return self.dynamics.loss(inputs, p_next, v_next, recon_s)

    @torch.no_grad()
    def target_baselines(self, batch: Batch) -> dict[str, float]:
        """What the stage-1 cosines must beat, from the EMA targets (centre crop): `cos_still_p/s` = mean cosine
        of the target at t with the target at t + tau ("nothing changes"), and `target_cos_pairwise_p/s` = mean
        cosine between the targets of different samples (how spread out the targets are; 1 = collapsed)."""
        if self.dynamics is None:
            raise ConfigError("policy.foresight='none' has no stage 1")
        now, later = self.latent_targets(batch, "curr"), self.latent_targets(batch, "next")
        out = {}
        for name, a, b in (("p", now[0], later[0]), ("s", now[1], later[1])):
            out[f"cos_still_{name}"] = float((a * b).sum(-1).mean())  # targets are unit vectors
            n = b.shape[0]
            off = ~torch.eye(n, dtype=torch.bool, device=b.device)
            out[f"target_cos_pairwise_{name}"] = float((b @ b.T)[off].mean()) if n > 1 else 1.0
        return out

    @torch.no_grad()
    def latent_targets(self, batch: Batch, frame: str = "curr") -> tuple[torch.Tensor, torch.Tensor]:
        """The EMA target latents (y_p, y_s), (B, H) each, of one frame of `batch` (`rgb_<frame>` or
        `feat_<frame>`, `proprio_<frame>`, `lang_emb`; centre crop): what a foresight made tau steps before
        that frame should match."""
        if self.dynamics is None:
            raise ConfigError("policy.foresight='none' has no stage 1")
        batch = self._to_device(batch)
        if self.cfg.vision.trainable:
            offsets = self.crop_offsets(batch, random=False)
            (v,) = self.visual_features(batch, (frame,), target=True, offsets=offsets)
        else:
            (v,) = self.visual_features(batch, (frame,))
        p = self.normalizer.normalize("proprio", batch[f"proprio_{frame}"].float())
        return self.dynamics.targets(p, v, batch["lang_emb"].float())

    # ------------------------------------------------------------------------------------------------------
    # stage 2 and inference

    def foresight(self, obs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent foresight at t + tau: (z^_p, z^_s), (B, H) each. Gradients flow only if stage 1 is trainable."""
        if self.dynamics is None:
            raise ConfigError("policy.foresight='none' has no foresight")
        obs = self._to_device(obs)
        with self.autocast():
            return self.dynamics(**self._dynamics_inputs(obs))

    def policy_condition(self, obs: Batch) -> torch.Tensor:
        """The denoiser's condition (B, G) for the current observation window."""
        pol = self.policy
        obs = self._to_device(obs)
        frozen = torch.no_grad() if self.has_stage1 else contextlib.nullcontext()
        # stage-2 augmentation, the same for every variant: one crop per sample shared by every network that
        # reads the frames (frozen stage-1 CNN, the CNN trained in stage 2); evaluation: centre crop
        offsets = self.crop_offsets(obs, random=self.training and self.cfg.policy.augment == "random_crop")
        p_curr = self.normalizer.normalize("proprio", obs["proprio_curr"].float())
        lang = obs["lang_emb"].float()
        z_p = z_s = None
        with frozen:  # stage 1 (incl. a stage-1-trained backbone) never receives policy gradients
            if self.dynamics is not None:
                inputs = self._dynamics_inputs(obs, offsets)
                z_p, z_s = self.dynamics(**inputs)
                v_curr = inputs["v_curr"]
            else:
                (v_curr,) = self.visual_features(obs, ("curr",), offsets=offsets)
            if pol.obs_encoders is None:  # reuse the frozen stage-1 state encoders
                how = self.cfg.dynamics.target_pool
                o_p = pool_tokens(self.dynamics.encoders.proprio(p_curr), how)
                o_s = pool_tokens(self.dynamics.encoders.semantic(v_curr, lang), how)
        if pol.vision is not None:  # the policy's own trainable CNN (policy.obs_vision='own')
            v_curr = pol.vision(obs["rgb_curr"], offsets=offsets).float()
        elif self.has_stage1:
            v_curr = v_curr.detach()
        if pol.obs_encoders is not None:
            o_p = pol.obs_encoders.proprio(p_curr)
            o_s = pol.obs_encoders.semantic(v_curr, lang)
        return pol.condition(o_p, o_s, z_p, z_s)

    def stage2_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """DDPM epsilon loss of the policy, masked by actions_future_mask. Stage 1 must be frozen."""
        if self.has_stage1 and not self.stage1_frozen:
            raise RuntimeError("call model.freeze_stage1() before stage-2 training")
        batch = self._to_device(batch)
        with self.autocast():
            cond = self.policy_condition(batch)
            actions = self.normalizer.normalize("actions", batch["actions_future"].float())
            if actions.shape[1] != self.cfg.policy.chunk_length:
                raise ValueError(
                    f"batch has {actions.shape[1]} future actions, policy.chunk_length is {self.cfg.policy.chunk_length}"
                )
            return self.policy.loss(actions, batch["actions_future_mask"].bool(), cond)

    @torch.no_grad()
    def predict_actions(
        self, obs: Batch, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """obs window -> action chunk (B, C, A) in raw env units. `noise` (B, C, A) optionally fixes the
        initial diffusion sample (DDIM is then deterministic)."""
        with self.autocast():
            cond = self.policy_condition(obs)
            actions = self.policy.sample(cond.float(), generator, noise)
        return self.normalizer.unnormalize("actions", actions.float())
