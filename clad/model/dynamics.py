"""Stage 1: cross-modal latent dynamics (CLaD), on features (images are handled by CladModel).

Notation: B batch, N tokens per state, H width, tau look-back / horizon, D_p proprio width, D_v visual width.

    p_{t-tau}, p_t  (B, D_p)  --f_p-->  (B, N, H)            s = FiLM(v, l)  --f_s-->  (B, N, H)
    a_{t-tau:t}     (B, tau, A) --f_a (+ masking)--> (B, tau, H)
    z_p = CrossAttn(p_t tokens, [p_{t-tau} tokens ; action tokens])          (B, N, H)
    z_s = CrossAttn(s_t tokens, [s_{t-tau} tokens ; action tokens])          (B, N, H)
    z_{p->s} = CrossAttn(z_p, z_s)   (or s->p, or self-attention over both)
    z_dyn = Pool(q_out, z_{p->s})                                           (B, H)
    foresight  z^_p = g_p(z_dyn), z^_s = g_s(z_dyn)                         (B, H) each
    targets    EMA encoders on (p_{t+tau}, v_{t+tau}, l), tokens pooled, L2-normalised (B, H), no gradient
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from clad.model.attention import AttentionStack, LearnedQueryPool, mlp
from clad.model.config import ModelConfig
from clad.model.film import FiLM
from clad.model.tokenizers import ActionTokenizer, StateTokenizer


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """theta_target <- decay * theta_target + (1 - decay) * theta_online; buffers are copied."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o.detach(), 1.0 - decay)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


class StateEncoders(nn.Module):
    """The online state encoders (EMA-copied for the targets).

    semantic: v (B, D_v), l (B, E) -> s tokens (B, N, H), with s = FiLM(LN(v), l) (language scales and
              shifts the visual feature; the LayerNorm puts frozen and learned features on one scale, ours).
    proprio:  p (B, D_p) normalised -> (B, N, H)
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dynamics
        self.visual_norm = nn.LayerNorm(cfg.visual_dim)
        self.lang_film = FiLM(cfg.visual_dim, cfg.lang_dim)
        self.f_s = StateTokenizer(cfg.visual_dim, d.num_tokens, d.hidden_dim, d.tokenizer_layers)
        self.f_p = StateTokenizer(cfg.proprio_dim, d.num_tokens, d.hidden_dim, d.tokenizer_layers)

    def semantic_state(self, v: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        """s_t = FiLM(v_t, l): (B, D_v), (B, E) -> (B, D_v)."""
        return self.lang_film(self.visual_norm(v), lang)

    def semantic(self, v: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        return self.f_s(self.semantic_state(v, lang))

    def proprio(self, p: torch.Tensor) -> torch.Tensor:
        return self.f_p(p)


def pool_tokens(tokens: torch.Tensor, how: str) -> torch.Tensor:
    """(B, N, H) -> (B, H)."""
    return tokens.mean(1) if how == "mean" else tokens.amax(1)


class CrossModalDynamics(nn.Module):
    """CLaD stage 1. `recon_dim` is the width of the semantic reconstruction target (frozen feature of the
    future frame, or the down-sampled future image for a trainable backbone)."""

    def __init__(self, cfg: ModelConfig, recon_dim: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.dynamics
        h = d.hidden_dim
        self.encoders = StateEncoders(cfg)
        self.target_encoders = copy.deepcopy(self.encoders).requires_grad_(False)
        self.f_a = ActionTokenizer(cfg.action_dim, d.tau, h, d.tokenizer_layers, d.action_positions)
        stack = dict(dim=h, heads=d.num_heads, ffn_ratio=d.ffn_ratio, dropout=d.dropout)
        self.proprio_transition = AttentionStack(depth=d.transition_layers, **stack)
        self.semantic_transition = AttentionStack(depth=d.transition_layers, **stack)
        self.cross = AttentionStack(depth=d.cross_layers, **stack)
        if d.attention == "symmetric":
            # tells the shared self-attention which tokens are kinematic and which semantic
            self.modality_emb = nn.Parameter(torch.randn(2, h) * 0.02)
        self.pool = LearnedQueryPool(depth=d.pool_layers, **stack)
        self.g_p = mlp(h, h, h, d.head_layers)
        self.g_s = mlp(h, h, h, d.head_layers)
        if d.recon:
            self.h_p = mlp(h, h, cfg.proprio_dim, d.head_layers)
            self.h_s = mlp(h, h, recon_dim, d.head_layers)

    def train(self, mode: bool = True):
        super().train(mode)
        self.target_encoders.eval()  # targets never use dropout
        return self

    # ------------------------------------------------------------------------------------------------------

    def dynamics_latent(
        self,
        p_prev: torch.Tensor,
        p_curr: torch.Tensor,
        v_prev: torch.Tensor,
        v_curr: torch.Tensor,
        lang: torch.Tensor,
        actions: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z_dyn (B, H) and the action mask used (B, tau) from normalised p (B, D_p), features v (B, D_v),
        lang (B, E), normalised past actions (B, tau, A) and their validity (B, tau)."""
        d = self.cfg.dynamics
        enc = self.encoders
        b = p_curr.shape[0]
        # encode t-tau and t together: one pass per encoder
        p_tok = enc.proprio(torch.cat([p_prev, p_curr]))
        s_tok = enc.semantic(torch.cat([v_prev, v_curr]), torch.cat([lang, lang]))
        p_prev_t, p_curr_t = p_tok[:b], p_tok[b:]
        s_prev_t, s_curr_t = s_tok[:b], s_tok[b:]
        ratio = d.mask_ratio if (self.training or d.mask_ratio >= 1.0) else 0.0
        a_tok, masked = self.f_a(actions, valid, ratio, d.chunk_mask_prob if self.training else 0.0)
        z_p = self.proprio_transition(p_curr_t, torch.cat([p_prev_t, a_tok], 1))
        z_s = self.semantic_transition(s_curr_t, torch.cat([s_prev_t, a_tok], 1))
        if d.attention == "p_to_s":
            z = self.cross(z_p, z_s)
        elif d.attention == "s_to_p":
            z = self.cross(z_s, z_p)
        else:
            z = self.cross(torch.cat([z_p + self.modality_emb[0], z_s + self.modality_emb[1]], 1))
        return self.pool(z), masked

    def foresight(self, z_dyn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_dyn (B, H) -> (z^_p, z^_s), (B, H) each: both futures come from the one shared dynamics latent."""
        return self.g_p(z_dyn), self.g_s(z_dyn)

    def forward(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Same inputs as `dynamics_latent`; returns the foresights (z^_p, z^_s), (B, H) each."""
        return self.foresight(self.dynamics_latent(*args, **kwargs)[0])

    @torch.no_grad()
    def targets(self, p_next: torch.Tensor, v_next: torch.Tensor, lang: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """EMA encoders on the real future states -> L2-normalised (z_p, z_s), (B, H) each, detached."""
        how = self.cfg.dynamics.target_pool
        z_p = pool_tokens(self.target_encoders.proprio(p_next), how)
        z_s = pool_tokens(self.target_encoders.semantic(v_next, lang), how)
        return F.normalize(z_p.float(), dim=-1), F.normalize(z_s.float(), dim=-1)

    @torch.no_grad()
    def update_ema(self) -> None:
        ema_update(self.target_encoders, self.encoders, self.cfg.dynamics.ema_decay)

    # ------------------------------------------------------------------------------------------------------

    def loss(
        self,
        inputs: dict[str, torch.Tensor],
        p_next: torch.Tensor,
        v_next_target: torch.Tensor,
        recon_s_target: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage-1 loss L_latent + lambda * L_recon and its metrics.

        inputs: the keyword arguments of `dynamics_latent`; p_next (B, D_p) normalised; v_next_target (B, D_v)
        the future visual feature from the target backbone; recon_s_target (B, R) the fixed semantic target.
        """
        d = self.cfg.dynamics
        z_dyn, masked = self.dynamics_latent(**inputs)
        zp_hat, zs_hat = self.foresight(z_dyn)
        tp, ts = self.targets(p_next, v_next_target, inputs["lang"])
        zp_hat, zs_hat = zp_hat.float(), zs_hat.float()

        def latent(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if d.normalize_prediction:
                pred = F.normalize(pred, dim=-1)
            sq = (pred - target).pow(2)
            return (sq.sum(-1) if d.latent_reduction == "sum" else sq.mean(-1)).mean()

        lat_p, lat_s = latent(zp_hat, tp), latent(zs_hat, ts)
        loss = lat_p + lat_s
        metrics = {"latent_p": lat_p.detach(), "latent_s": lat_s.detach()}
        if d.recon:
            rec_p = F.l1_loss(self.h_p(zp_hat).float(), p_next.float())
            rec_s = F.l1_loss(self.h_s(zs_hat).float(), recon_s_target.float())
            loss = loss + d.lambda_recon * (rec_p + rec_s)
            metrics.update(recon_p=rec_p.detach(), recon_s=rec_s.detach())
        metrics.update(
            loss=loss.detach(),
            cos_p=F.cosine_similarity(zp_hat.detach(), tp, dim=-1).mean(),
            cos_s=F.cosine_similarity(zs_hat.detach(), ts, dim=-1).mean(),
            # collapse indicator: ~1/sqrt(H) for spread-out unit targets, -> 0 when every target is the same
            target_std_p=tp.std(0).mean() if tp.shape[0] > 1 else torch.zeros(()),
            target_std_s=ts.std(0).mean() if ts.shape[0] > 1 else torch.zeros(()),
            mask_rate=masked.float().mean(),
            chunk_masked_rate=masked.all(-1).float().mean(),  # samples that saw none of their past actions
        )
        return loss, {k: float(v) for k, v in metrics.items()}
