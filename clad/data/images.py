"""Image resizing for preprocessing (torch on CPU; images stay HWC uint8 on both sides)."""

from __future__ import annotations

import numpy as np


def resize_images(images: np.ndarray, size: tuple[int, int], chunk: int = 256) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) uint8, bilinear with antialiasing (area-like when shrinking).

    Returns the input unchanged when it already has the target size.
    """
    h, w = size
    if images.shape[1:3] == (h, w):
        return images
    import torch
    import torch.nn.functional as F

    out = np.empty((images.shape[0], h, w, 3), np.uint8)
    for s in range(0, images.shape[0], chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[s:s + chunk])).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out[s:s + chunk] = y.round().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
