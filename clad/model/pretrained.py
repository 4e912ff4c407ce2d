"""Frozen pretrained image towers: `load_pretrained(backbone, checkpoint_dir)` -> a module with attributes
`image_size` and `output_dim`, mapping (N, 3, S, S) CLIP-normalised -> (N, output_dim).

  decisionnce_rn50  CLIP ModifiedResNet in plain PyTorch (clad.model.clip_rn50)
  hf_clip           CLIPVisionModelWithProjection through `transformers` (imported lazily)
  open_clip         an open_clip model (imported lazily; clear error if the package is absent)
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from torch import nn

from clad.errors import CheckpointError, ConfigError
from clad.model.clip_rn50 import load_clip_rn50
from clad.model.pretrained_dir import read_pretrained_dir


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
    path, _ = read_pretrained_dir(directory, "hf_clip")
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
    path, _ = read_pretrained_dir(directory, "open_clip")
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
