"""Visual backbones: uint8 camera views -> one feature vector per view, concatenated into v_t.

    VisionEncoder(cfg).forward(rgb)   rgb (B, V, 3, H, W) uint8 -> (B, V * F) float

Backbones (`VisionConfig.backbone`):
  cnn               trainable small CNN per view (GroupNorm + spatial softmax, diffusion_policy style)
  decisionnce_rn50  frozen CLIP ModifiedResNet (DecisionNCE's image tower), plain PyTorch, OpenAI key names
  hf_clip           frozen CLIPVisionModelWithProjection through `transformers` (imported lazily)
  open_clip         frozen open_clip model (imported lazily; clear error if the package is absent)

A pretrained checkpoint directory holds `model.safetensors` and `config.json`; nothing is unpickled.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file
from torch import nn

from clad.errors import CheckpointError, ConfigError
from clad.model.config import VisionConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------------------
# image preprocessing


def to_float_images(rgb: torch.Tensor, size: int, rotate180: bool) -> torch.Tensor:
    """rgb (N, 3, H, W) uint8 -> (N, 3, size, size) float in [0, 1] (bilinear resize, antialiased)."""
    x = rgb.float() / 255.0
    if rotate180:
        x = torch.flip(x, dims=(-2, -1))
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def crop(x: torch.Tensor, ratio: float, random: bool, share: int = 1, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, S, S) -> (N, C, s, s) with s = round(S * ratio): a random crop per image, or the centre crop.

    With `share` > 1, x is `share` stacked groups of N // share images that get the same offsets (the frames
    of one sample must be cropped alike, or the crop itself looks like motion). `offsets` (N // share, 2)
    (row, col) fixes the crops instead (`crop_offsets`), so that several networks can see the same crop."""
    if ratio >= 1.0:
        return x
    n, _, size, _ = x.shape
    s = max(1, round(size * ratio))
    if offsets is None and not random:
        o = (size - s) // 2
        return x[..., o : o + s, o : o + s]
    if offsets is None:
        offsets = crop_offsets(n // share, size, ratio, random=True, device=x.device)
    if offsets.shape != (n // share, 2):
        raise ValueError(f"crop offsets have shape {tuple(offsets.shape)}, expected ({n // share}, 2)")
    oy, ox = offsets.to(x.device).long().repeat(share, 1).unbind(-1)
    ar = torch.arange(s, device=x.device)
    rows = (oy[:, None] + ar)[:, None, :, None]  # (N, 1, s, 1)
    cols = (ox[:, None] + ar)[:, None, None, :]  # (N, 1, 1, s)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[idx_n, idx_c, rows, cols]


def crop_offsets(n: int, size: int, ratio: float, random: bool, device=None) -> torch.Tensor:
    """(n, 2) crop offsets (row, col) for `crop` of (size x size) images: uniform, or all at the centre."""
    s = max(1, round(size * ratio))
    if not random:
        return torch.full((n, 2), (size - s) // 2, dtype=torch.long, device=device)
    return torch.randint(0, size - s + 1, (n, 2), device=device)


def downsample_images(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """Fixed reconstruction target: rgb (B, V, 3, H, W) uint8 -> (B, V * 3 * size * size) in [-1, 1]."""
    b = rgb.shape[0]
    x = rgb.flatten(0, 1).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="area")
    return rearrange(x * 2 - 1, "(b v) c h w -> b (v c h w)", b=b)


# ----------------------------------------------------------------------------------------------------------
# trainable CNN


class SpatialSoftmax(nn.Module):
    """(N, C, h, w) -> (N, 2K): K learned keypoint maps, each reduced to its expected (x, y) in [-1, 1]."""

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        attn = self.proj(x).flatten(2).softmax(-1)  # (N, K, h*w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=attn.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=attn.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)  # (h*w, 2)
        return (attn @ grid).reshape(n, -1)


class SmallCNN(nn.Module):
    """One view: (N, 3, S, S) in [-1, 1] -> (N, F). Stride-2 conv + GroupNorm + Mish stages, spatial softmax."""

    def __init__(self, channels: tuple[int, ...], groups: int, keypoints: int, out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            g = groups if c % groups == 0 else 1
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.GroupNorm(g, c),
                nn.Mish(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(g, c),
                nn.Mish(),
            ]
            c_in = c
        self.trunk = nn.Sequential(*layers)
        self.pool = SpatialSoftmax(c_in, keypoints)
        self.out = nn.Sequential(nn.Linear(2 * keypoints, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.trunk(x)))


# ----------------------------------------------------------------------------------------------------------
# CLIP ModifiedResNet (RN50) -- the DecisionNCE image tower. Parameter names follow OpenAI CLIP's `visual.*`.


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "n c h w -> (h w) n c")
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=self.training, need_weights=False,
        )  # fmt: skip
        return x.squeeze(0)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower (RN50 = layers (3, 4, 6, 3), width 64, heads 32, output 1024, 224 px)."""

    def __init__(self, layers: list[int], output_dim: int, heads: int, image_size: int = 224, width: int = 64):
        super().__init__()
        self.image_size = image_size
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) CLIP-normalised -> (N, output_dim)."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


def _read_pretrained_dir(directory: str | None, backbone: str) -> tuple[Path, dict]:
    if directory is None:
        raise ConfigError(f"vision.checkpoint_dir must be set for vision.backbone='{backbone}'")
    path = Path(directory)
    for name in ("model.safetensors", "config.json"):
        if not (path / name).is_file():
            raise CheckpointError(
                f"vision.checkpoint_dir={directory}: missing {name} (a pretrained backbone directory holds "
                "model.safetensors + config.json; convert .pth/.pt weights to safetensors once)"
            )
    try:
        meta = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {err}") from None
    return path, meta


def load_clip_rn50(directory: str | None) -> ModifiedResNet:
    """Build a CLIP ModifiedResNet from `directory/config.json` and load `directory/model.safetensors`.

    config.json: {"layers": [3, 4, 6, 3], "width": 64, "heads": 32, "output_dim": 1024, "image_size": 224}.
    Keys may carry any prefix ending in `visual.` (e.g. DecisionNCE's `model.visual.conv1.weight`); keys of
    other towers (text) are ignored.
    """
    path, meta = _read_pretrained_dir(directory, "decisionnce_rn50")
    try:
        net = ModifiedResNet(
            layers=list(meta["layers"]), output_dim=int(meta["output_dim"]), heads=int(meta["heads"]),
            image_size=int(meta.get("image_size", 224)), width=int(meta.get("width", 64)),
        )  # fmt: skip
    except KeyError as err:
        raise CheckpointError(f"{path / 'config.json'} lacks field {err}") from None
    raw = load_file(str(path / "model.safetensors"))
    state = {}
    for k, v in raw.items():
        if "visual." in k:
            state[k.split("visual.", 1)[1]] = v
        elif not any("visual." in kk for kk in raw):
            state[k] = v  # a file holding only the image tower, without prefix
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path / 'model.safetensors'} does not match its config.json: {err}") from None
    return net


class _HFClip(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.image_size = int(model.config.image_size)
        self.output_dim = int(getattr(model.config, "projection_dim", model.config.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).image_embeds


def load_hf_clip(directory: str | None) -> nn.Module:
    """A transformers CLIPVisionModelWithProjection saved with `save_pretrained` (safetensors only)."""
    path, _ = _read_pretrained_dir(directory, "hf_clip")
    try:
        from transformers import CLIPVisionModelWithProjection
    except ImportError:
        raise ConfigError(
            "vision.backbone='hf_clip' needs the `transformers` package (pip install transformers), "
            "or choose another vision.backbone"
        ) from None
    model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    return _HFClip(model)


class _OpenClip(nn.Module):
    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.output_dim = int(visual.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def load_open_clip(directory: str | None, arch: str) -> nn.Module:
    """An open_clip model `arch` whose weights are in `directory/model.safetensors` (image tower used)."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError(
            "vision.backbone='open_clip' needs the open_clip package: pip install open_clip_torch "
            "(or choose vision.backbone='decisionnce_rn50', 'hf_clip' or 'cnn')"
        ) from None
    path, _ = _read_pretrained_dir(directory, "open_clip")
    model = open_clip.create_model(arch, pretrained=None)
    state = load_file(str(path / "model.safetensors"))
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{path / 'model.safetensors'} does not match open_clip '{arch}': {err}") from None
    return _OpenClip(model.visual)


def load_pretrained(backbone: str, checkpoint_dir: str | None, open_clip_model: str = "RN50") -> nn.Module:
    """A frozen pretrained image tower with attributes `image_size` and `output_dim`:
    (N, 3, S, S) CLIP-normalised -> (N, output_dim)."""
    if backbone == "decisionnce_rn50":
        net = load_clip_rn50(checkpoint_dir)
    elif backbone == "hf_clip":
        net = load_hf_clip(checkpoint_dir)
    elif backbone == "open_clip":
        net = load_open_clip(checkpoint_dir, open_clip_model)
    else:
        raise ConfigError(f"vision.backbone='{backbone}' is not a pretrained backbone")
    net.requires_grad_(False)
    return net.eval()


def clip_inputs(rgb: torch.Tensor, size: int, rotate180: bool) -> torch.Tensor:
    """(N, 3, H, W) uint8 as stored -> (N, 3, size, size) CLIP-normalised. The one preprocessing of frozen
    backbones, shared by the model and by preprocessing-time feature extraction."""
    x = to_float_images(rgb, size, rotate180)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------------------


class VisionEncoder(nn.Module):
    """Camera views -> v_t. rgb (B, V, 3, H, W) uint8 -> (B, V * F).

    The trainable CNN has one network per view (views differ a lot: wrist vs third person). A pretrained
    backbone is shared across views, kept in eval mode and run without gradients.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.trainable = cfg.trainable
        if cfg.trainable:
            self.nets = nn.ModuleList(
                SmallCNN(cfg.cnn_channels, cfg.cnn_groups, cfg.cnn_keypoints, cfg.feature_dim) for _ in cfg.cameras
            )
            self.image_size = cfg.image_size
            self.register_buffer("mean", torch.full((3,), 0.5).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.full((3,), 0.5).view(1, 3, 1, 1), persistent=False)
            return
        self.backbone = load_pretrained(cfg.backbone, cfg.checkpoint_dir, cfg.open_clip_model)
        if self.backbone.output_dim != cfg.feature_dim:
            raise ConfigError(
                f"vision.feature_dim={cfg.feature_dim} but the {cfg.backbone} checkpoint in {cfg.checkpoint_dir} "
                f"outputs {self.backbone.output_dim}-d features: set vision.feature_dim={self.backbone.output_dim}"
            )
        self.image_size = self.backbone.image_size

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.backbone.eval()  # frozen: BatchNorm statistics and dropout never change
        return self

    def preprocess(self, rgb: torch.Tensor, share: int = 1, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> (N, 3, S, S) normalised float."""
        if not self.trainable:
            return clip_inputs(rgb, self.image_size, self.cfg.rotate180)
        x = to_float_images(rgb, self.image_size, self.cfg.rotate180)
        x = crop(x, self.cfg.crop_ratio, random=self.training, share=share, offsets=offsets)
        return (x - self.mean) / self.std

    def draw_offsets(self, batch: int, random: bool, device=None) -> torch.Tensor | None:
        """Crop offsets (batch, V, 2) for `forward(offsets=...)`: random or centre; None when nothing is cropped
        (crop_ratio 1, or a frozen pretrained backbone, which never crops)."""
        if not self.trainable or self.cfg.crop_ratio >= 1.0:
            return None
        o = crop_offsets(batch * self.cfg.num_views, self.image_size, self.cfg.crop_ratio, random, device)
        return o.view(batch, self.cfg.num_views, 2)

    def forward(self, rgb: torch.Tensor, share: int = 1, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """rgb (B, V, 3, H, W) uint8 -> (B, V * F). `share`: rgb stacks `share` frames of B // share samples
        along B; they get the same random crop. `offsets` (B // share, V, 2) from `draw_offsets` fixes the
        crops (whatever the train/eval mode), so that other networks can be given the same ones."""
        b, v = rgb.shape[:2]
        if v != self.cfg.num_views:
            raise ValueError(f"got {v} camera views, vision.cameras lists {self.cfg.num_views}")
        if self.trainable:
            feats = [net(self.preprocess(rgb[:, i], share, None if offsets is None else offsets[:, i]))
                     for i, net in enumerate(self.nets)]
            return torch.cat(feats, dim=-1)
        with torch.no_grad():
            x = self.preprocess(rgb.flatten(0, 1))
            feats = self.backbone(x).float()
        return rearrange(feats, "(b v) f -> b (v f)", b=b)
