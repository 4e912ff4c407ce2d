"""Stage 2: a diffusion policy over the action chunk, conditioned on FiLM(foresight, observation).

    o_p = e_p(p_t)                    (B, H_o)      o_s = e_s(v_t, l)              (B, H_o)
    g_p = FiLM(z^_p, o_p)             (B, H)        g_s = FiLM(z^_s, o_s)          (B, H)
    cond = [g_p ; g_s]                (B, 2H)       (a modality without foresight contributes o_m instead)
    eps^ = UNet(a_k, k, cond)         (B, C, A)     DDPM epsilon-prediction; DDIM at inference

The observation gives FiLM's scale and shift and the foresight is what gets modulated, which anchors the
predicted future to the present (paper eq. 21).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from clad.model.attention import mlp
from clad.model.config import ModelConfig
from clad.model.film import FiLM
from clad.model.unet1d import ConditionalUnet1D
from clad.model.vision import VisionEncoder


class ObservationEncoders(nn.Module):
    """New stage-2 encoders. e_p: p (B, D_p) -> (B, H_o); e_s: v (B, D_v), l (B, E) -> (B, H_o)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.obs_dim
        self.e_p = mlp(cfg.proprio_dim, h, h, 2)
        self.visual_norm = nn.LayerNorm(cfg.visual_dim)
        self.lang_film = FiLM(cfg.visual_dim, cfg.lang_dim)
        self.e_s = mlp(cfg.visual_dim, h, h, 2)

    def proprio(self, p: torch.Tensor) -> torch.Tensor:
        return self.e_p(p)

    def semantic(self, v: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        return self.e_s(self.lang_film(self.visual_norm(v), lang))


class ForesightPolicy(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.policy
        h, ho = cfg.dynamics.hidden_dim, cfg.obs_dim
        self.use_p = p.foresight in ("both", "proprio")
        self.use_s = p.foresight in ("both", "semantic")
        self.obs_encoders = ObservationEncoders(cfg) if p.obs_encoder == "new" else None
        # policy.obs_vision='own': e_s reads this trainable CNN (initialised from stage 1, see CladModel)
        self.vision = VisionEncoder(cfg.vision) if p.obs_vision == "own" else None
        self.film_p = FiLM(h, ho) if self.use_p else None
        self.film_s = FiLM(h, ho) if self.use_s else None
        self.cond_dim = (h if self.use_p else ho) + (h if self.use_s else ho)
        self.unet = ConditionalUnet1D(
            cfg.action_dim, self.cond_dim, p.down_dims, p.step_embed_dim, p.kernel_size, p.n_groups
        )
        sched = dict(
            num_train_timesteps=p.num_train_timesteps,
            beta_schedule=p.beta_schedule,
            clip_sample=p.clip_sample,
            prediction_type="epsilon",
        )
        self.noise_scheduler = DDPMScheduler(**sched)
        self.inference_scheduler = DDIMScheduler(**sched, set_alpha_to_one=True, steps_offset=0)
        self.foresight_scale = math.sqrt(h) if p.foresight_rescale else 1.0

    def condition(
        self, o_p: torch.Tensor, o_s: torch.Tensor, z_p: torch.Tensor | None, z_s: torch.Tensor | None
    ) -> torch.Tensor:
        """o_p, o_s (B, H_o) observation encodings, z_p, z_s (B, H) foresights (or None) -> cond (B, G)."""
        g_p = self.film_p(z_p * self.foresight_scale, o_p) if self.use_p else o_p
        g_s = self.film_s(z_s * self.foresight_scale, o_s) if self.use_s else o_s
        return torch.cat([g_p, g_s], dim=-1)

    def loss(self, actions: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """DDPM epsilon loss. actions (B, C, A) normalised, mask (B, C) bool (False = padded), cond (B, G)."""
        b = actions.shape[0]
        noise = torch.randn_like(actions)
        k = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), device=actions.device)
        noisy = self.noise_scheduler.add_noise(actions, noise, k)
        eps = self.unet(noisy, k, cond).float()
        w = mask.to(eps.dtype)[..., None]
        loss = ((eps - noise).pow(2) * w).sum() / (w.sum() * actions.shape[-1]).clamp_min(1.0)
        return loss, {"loss": float(loss.detach()), "mse_unmasked": float(F.mse_loss(eps.detach(), noise))}

    @torch.no_grad()
    def sample(
        self, cond: torch.Tensor, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """DDIM sampling (deterministic given the initial noise): cond (B, G) -> normalised chunk (B, C, A).

        `noise` (B, C, A) fixes the initial sample (e.g. drawn per env from its seed); otherwise it is drawn
        from `generator` (or the global RNG)."""
        p = self.cfg.policy
        shape = (cond.shape[0], p.chunk_length, self.cfg.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=cond.device if generator is None else generator.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        x = noise.to(cond.device, torch.float32)
        sched = self.inference_scheduler
        sched.set_timesteps(p.num_inference_steps)  # CPU timesteps: the scheduler indexes its CPU tables
        for t in sched.timesteps:
            eps = self.unet(x, t, cond).float()
            x = sched.step(eps, t, x).prev_sample
        return x.clamp(-1, 1)
