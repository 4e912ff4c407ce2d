"""Model configuration: `ModelConfig` = `VisionConfig` + `DynamicsConfig` (stage 1) + `PolicyConfig` (stage 2).

Every field says where its default comes from:
  [paper]  stated by the paper (see /work/shared/docs/paper-digest.md),
  [ours]   the paper is silent; the comment says what we chose and why.
Named presets (`paper`, `cpu`, `tiny`) live in clad/model/sizes.py (`model_preset`).
"""

from __future__ import annotations

from typing import Literal, Optional

import pydantic

from clad.config import FrozenConfig
from clad.data.libero_layout import ACTION_DIM, LOWDIM_KEYS

__all__ = ["VisionConfig", "DynamicsConfig", "PolicyConfig", "ModelConfig", "RUNTIME_FIELDS"]

Camera = Literal["agentview", "eye_in_hand"]
Backbone = Literal["cnn", "decisionnce_rn50", "hf_clip", "open_clip"]

# Fields that change how a trained model is *run*, not its weights: a checkpoint may be loaded with a
# config that differs from the saved one only in these (dotted names).
RUNTIME_FIELDS = frozenset(
    {
        "autocast",
        "vision.checkpoint_dir",
        "policy.num_inference_steps",
        "policy.execution_horizon",
        "policy.temporal_ensemble",
        "policy.ensemble_k",
    }
)


class VisionConfig(FrozenConfig):
    """Visual backbone producing v_t (one feature vector per camera view, concatenated)."""

    # [paper] a frozen DecisionNCE (CLIP-RN50) VLM. [ours] default `cnn`: a small trainable CNN (GroupNorm +
    # spatial softmax, diffusion_policy style) that needs no download; it is trained in stage 1 and frozen
    # in stage 2. `decisionnce_rn50` / `hf_clip` / `open_clip` are frozen and load from `checkpoint_dir`.
    backbone: Backbone = "cnn"
    # [ours] the paper never names the camera(s); the LBP lineage encodes only agentview.
    cameras: tuple[Camera, ...] = ("agentview",)
    # [ours] images are resized on the fly to this square size (pretrained backbones use their own size).
    image_size: int = pydantic.Field(84, ge=16)
    # [ours] random-crop augmentation (train) / centre crop (eval) keeping this fraction of each side;
    # 1.0 disables it. diffusion_policy uses ~0.9. Only applied to the trainable CNN.
    crop_ratio: float = pydantic.Field(1.0, gt=0.0, le=1.0)
    # [ours] LIBERO stores OpenGL-flipped frames; rotate 180 degrees to upright (what pretrained models saw).
    rotate180: bool = True
    # Directory with `model.safetensors` + `config.json` of a frozen pretrained backbone. None with a
    # pretrained backbone = features-only mode: batches must carry precomputed `feat_*` keys.
    checkpoint_dir: str | None = None
    # open_clip architecture name (only for backbone="open_clip").
    open_clip_model: str = "RN50"
    # Width F of one view's feature: the CNN's output width, or the pretrained model's embedding width
    # (checked against the checkpoint; DecisionNCE RN50 = 1024).
    feature_dim: int = pydantic.Field(64, ge=1)
    # [ours] CNN widths; each stage halves the resolution.
    cnn_channels: tuple[int, ...] = (32, 64, 128)
    cnn_groups: int = pydantic.Field(8, ge=1)
    cnn_keypoints: int = pydantic.Field(32, ge=1)
    # [ours] with a trainable backbone the semantic reconstruction target must not move with the weights,
    # so h_s reconstructs the future image down-sampled to this size (per view, RGB in [-1, 1]).
    recon_image_size: int = pydantic.Field(16, ge=2)

    @pydantic.field_validator("cameras")
    @classmethod
    def _cameras(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError("cameras must be a non-empty list of distinct camera names")
        return v

    @property
    def trainable(self) -> bool:
        return self.backbone == "cnn"

    @property
    def num_views(self) -> int:
        return len(self.cameras)


class DynamicsConfig(FrozenConfig):
    """Stage 1: cross-modal latent dynamics (CLaD)."""

    hidden_dim: int = pydantic.Field(1024, ge=8)  # [paper] H = 1024
    num_tokens: int = pydantic.Field(4, ge=1)  # [paper] N_p = N_s = 4
    tau: int = pydantic.Field(6, ge=1)  # [paper] look-back = foresight horizon = 6 (must equal the data's tau)
    num_heads: int = pydantic.Field(16, ge=1)  # [ours] 16 heads of 64 at H=1024
    ffn_ratio: int = pydantic.Field(4, ge=1)  # [ours] FFN width 4H (transformer default)
    transition_layers: int = pydantic.Field(8, ge=1)  # [ours] per-modality transition depth
    cross_layers: int = pydantic.Field(8, ge=1)  # [ours] cross-modal attention depth
    pool_layers: int = pydantic.Field(1, ge=1)  # [ours] learnable-query (q_out) readout depth
    dropout: float = pydantic.Field(0.0, ge=0.0, lt=1.0)  # [ours]
    tokenizer_layers: int = pydantic.Field(2, ge=1)  # [ours] MLP depth of f_p, f_s, f_a
    # [ours] f_a positions: learned (default) or fixed sinusoidal.
    action_positions: Literal["learned", "sinusoidal"] = "learned"
    # [paper] r = 0.3, per-token Bernoulli [ours]; r = 1 is action-free training (then also masked at eval,
    # so train and test see the same input distribution). Padded past actions (episode start) are always masked.
    mask_ratio: float = pydantic.Field(0.3, ge=0.0, le=1.0)
    # [ours, issue 15] probability of masking a sample's whole past-action chunk in training, on top of the
    # per-token masking. With a scripted expert a_{t-1} alone predicts the next chunk well (normalised MSE
    # 0.079 vs 0.230 for the mean), and per-token masking at r = 0.3 hides all six past actions in only
    # 0.07 % of samples, so the model can learn to copy the demonstrated past, which in closed loop is the
    # policy's own. p > 0 makes it also learn without that shortcut. 0 = the paper's per-token masking only.
    chunk_mask_prob: float = pydantic.Field(0.0, ge=0.0, le=1.0)
    # [paper] proprio transition queries semantic transition; [ablations] s_to_p, symmetric self-attention.
    attention: Literal["p_to_s", "s_to_p", "symmetric"] = "p_to_s"
    ema_decay: float = pydantic.Field(0.995, ge=0.0, le=1.0)  # [paper] m = 0.995
    # [ours] how the N target tokens become one H-vector (the paper is silent; mean as the reproduction).
    target_pool: Literal["mean", "max"] = "mean"
    # [paper eq. 17] only the target is L2-normalised; True also normalises the prediction (the prose reading).
    normalize_prediction: bool = False
    # [paper eq. 17] squared L2 norm summed over dims ("sum"); "mean" averages over dims.
    latent_reduction: Literal["sum", "mean"] = "sum"
    recon: bool = True  # [paper] L_recon on (ablation: off)
    lambda_recon: float = pydantic.Field(0.1, ge=0.0)  # [paper] 0.1
    head_layers: int = pydantic.Field(2, ge=1)  # [ours] "lightweight MLP" g_p, g_s, h_p, h_s depth


class PolicyConfig(FrozenConfig):
    """Stage 2: diffusion policy conditioned on FiLM(foresight, observation)."""

    # [paper] both; ablations: none (policy only), proprio only (CLaD_p), semantic only (CLaD_s). A modality
    # without foresight conditions the policy with its observation encoding alone.
    foresight: Literal["both", "proprio", "semantic", "none"] = "both"
    # [ours] new e_p, e_s modules (default) or reuse of the frozen stage-1 state encoders (mean-pooled tokens).
    obs_encoder: Literal["new", "reuse"] = "new"
    obs_dim: int | None = None  # [ours] width of e_p, e_s outputs; None = dynamics.hidden_dim
    # [ours] which CNN e_s reads when the backbone is trainable (the paper has one frozen VLM for everything).
    # "stage1": the frozen stage-1 CNN. "own": a copy of it, initialised from stage 1 and trained on the action
    # loss in stage 2, as the policy-only variant trains its CNN; the foresight still uses the frozen stage-1
    # CNN. With "own", CLaD vs policy only differ only in the foresight.
    # "frozen_stage1" (issue 15, the matched-vision control): e_s always reads the frozen stage-1 CNN, loaded
    # from the stage-1 checkpoint, also with foresight='none'; CLaD vs that control then differ only in the
    # foresight. ("stage1" with foresight='none' is the plain policy-only variant, which trains its CNN.)
    obs_vision: Literal["stage1", "own", "frozen_stage1"] = "stage1"
    # [ours, issue 15] image augmentation in stage-2 training, identical for every variant: "random_crop"
    # draws one crop (vision.crop_ratio) per sample and feeds it to every network that reads the frames (the
    # frozen stage-1 CNN behind the foresight and e_s, or the CNN trained in stage 2); "none" uses the
    # centre crop everywhere. Evaluation always uses the centre crop. Paper-like: "none" (the paper's policy
    # reads a frozen VLM whose features are not augmented). Frozen pretrained backbones never crop.
    augment: Literal["none", "random_crop"] = "none"
    # [ours] foresights are trained towards unit-norm targets (entries ~1/sqrt(H)); scale them by sqrt(H)
    # before FiLM so the denoiser sees O(1) inputs.
    foresight_rescale: bool = True
    chunk_length: int = pydantic.Field(6, ge=1)  # [paper] action chunk a_{t:t+tau}, tau = 6
    execution_horizon: int = pydantic.Field(6, ge=1)  # [ours] actions executed before replanning
    temporal_ensemble: bool = False  # [ours] ACT-style: predict every step, exponentially weighted average
    ensemble_k: float = pydantic.Field(0.25, ge=0.0)  # [ours] LBP's evaluator uses k = 0.25
    # [ours] diffusion_policy ConditionalUnet1D; widths chosen to reach the paper's ~0.23B policy.
    down_dims: tuple[int, ...] = (512, 1024, 1536)
    kernel_size: int = pydantic.Field(5, ge=1)
    n_groups: int = pydantic.Field(8, ge=1)
    step_embed_dim: int = pydantic.Field(256, ge=2)
    num_train_timesteps: int = pydantic.Field(100, ge=1)  # [ours] diffusion_policy default
    num_inference_steps: int = pydantic.Field(10, ge=1)  # [ours] DDIM steps at inference
    beta_schedule: str = "squaredcos_cap_v2"  # [ours] diffusion_policy default
    clip_sample: bool = True  # [ours] actions are in [-1, 1]

    @pydantic.field_validator("down_dims")
    @classmethod
    def _dims(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("down_dims must list at least one width")
        return v

    @pydantic.model_validator(mode="after")
    def _horizon(self):
        if self.execution_horizon > self.chunk_length:
            raise ValueError(
                f"policy.execution_horizon ({self.execution_horizon}) must be <= policy.chunk_length "
                f"({self.chunk_length})"
            )
        return self


class ModelConfig(FrozenConfig):
    """The whole model: normaliser + vision + stage-1 dynamics + stage-2 policy."""

    # [paper] "joint angles and velocities"; LIBERO has no velocities. [ours] joint angles + gripper (9-D).
    proprio_keys: tuple[str, ...] = ("joint_states", "gripper_states")
    # [ours] proprio normalisation: min-max to [-1, 1] (LBP lineage) or per-dim z-score.
    proprio_norm: Literal["minmax", "gaussian"] = "minmax"
    # Orientation of the frames the model reads (clad/data/conventions.py): null = the training dataset's,
    # resolved when training starts and saved with the checkpoint; evaluation turns the simulator's frames
    # to it. Checkpoints from before this field were trained on LIBERO's HDF5 (opengl) frames.
    image_orientation: Optional[Literal["opengl", "upright"]] = None
    action_dim: int = ACTION_DIM  # LIBERO OSC_POSE delta + gripper
    lang_dim: int = pydantic.Field(384, ge=1)  # all-MiniLM-L6-v2 instruction embedding
    # [ours] mixed precision on CUDA only; a no-op on CPU.
    autocast: Literal["none", "bf16", "fp16"] = "none"
    vision: VisionConfig = VisionConfig()
    dynamics: DynamicsConfig = DynamicsConfig()
    policy: PolicyConfig = PolicyConfig()

    @pydantic.field_validator("proprio_keys")
    @classmethod
    def _proprio(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [k for k in v if k not in LOWDIM_KEYS]
        if bad or not v:
            raise ValueError(f"proprio_keys must be a non-empty subset of {sorted(LOWDIM_KEYS)}, got {list(v)}")
        return v

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        d = self.dynamics
        if d.hidden_dim % d.num_heads:
            raise ValueError(f"dynamics.hidden_dim ({d.hidden_dim}) must be divisible by dynamics.num_heads ({d.num_heads})")
        if self.policy.obs_encoder == "reuse" and self.policy.obs_dim not in (None, d.hidden_dim):
            raise ValueError("policy.obs_dim must be null (= dynamics.hidden_dim) when policy.obs_encoder='reuse'")
        if self.policy.obs_encoder == "reuse" and self.policy.foresight == "none":
            raise ValueError("policy.obs_encoder='reuse' needs stage-1 encoders, but policy.foresight='none' has none")
        if self.policy.obs_vision == "frozen_stage1" and not self.vision.trainable:
            raise ValueError(f"policy.obs_vision='frozen_stage1' reads the stage-1 CNN, but vision.backbone="
                             f"'{self.vision.backbone}' is a frozen pretrained model that every variant already "
                             "shares: use policy.obs_vision='stage1'")
        if self.policy.obs_vision == "own":
            why = None
            if not self.vision.trainable:
                why = f"vision.backbone='{self.vision.backbone}' is frozen, so there is no CNN to train"
            elif self.policy.foresight == "none":
                why = "policy.foresight='none' already trains its CNN in stage 2"
            elif self.policy.obs_encoder == "reuse":
                why = "policy.obs_encoder='reuse' has no e_s to feed"
            if why:
                raise ValueError(f"policy.obs_vision='own' needs a trainable CNN, foresight and new encoders: {why}; "
                                 "use policy.obs_vision='stage1'")
        return self

    @property
    def proprio_dim(self) -> int:
        return sum(LOWDIM_KEYS[k] for k in self.proprio_keys)

    @property
    def visual_dim(self) -> int:
        """Width of v_t: views x per-view feature."""
        return self.vision.num_views * self.vision.feature_dim

    @property
    def obs_dim(self) -> int:
        return self.policy.obs_dim or self.dynamics.hidden_dim

    @property
    def has_dynamics(self) -> bool:
        return self.policy.foresight != "none"

    @property
    def stage1_vision_frozen(self) -> bool:
        """The (trainable-type) CNN comes from stage 1 and is frozen in stage 2: every variant with a foresight,
        and the matched-vision control (foresight='none', obs_vision='frozen_stage1')."""
        return self.vision.trainable and (self.has_dynamics or self.policy.obs_vision == "frozen_stage1")

    @property
    def needs_stage1_checkpoint(self) -> bool:
        """Stage 2 starts from a stage-1 checkpoint (its dynamics, or only its CNN for the control)."""
        return self.has_dynamics or self.stage1_vision_frozen
