"""Batched augmentation on tensors (on the training device): random resized crop, small rotation,
brightness and contrast, optional horizontal flip, in one affine resampling per batch.

Horizontal flip is off by default: the heart sits on the patient's left, and a flipped film is a
different anatomy (dextrocardia), not the same finding.

Parameters are drawn per *sample position in the epoch*, from a generator seeded with (seed, epoch):
a sample gets the same augmentation whichever rank draws it and whether or not the run was resumed,
which is what makes 1-process and N-process runs, and resumed runs, comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    crop_scale_min: float = 0.75  # least share of the image area a crop keeps
    rotation_deg: float = 7.0  # largest rotation either way
    brightness: float = 0.1  # multiplicative, 1 +- this
    contrast: float = 0.1  # around the image mean, 1 +- this
    hflip: bool = False  # off: see the module docstring

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if not 0 <= self.rotation_deg <= 45 or self.brightness < 0 or self.contrast < 0:
            raise ValueError("rotation_deg must be in [0, 45]; brightness and contrast >= 0")


def epoch_parameters(config: AugmentConfig, n: int, seed: int, epoch: int) -> np.ndarray:
    """Per-position parameters for one epoch: [n, 8] = scale, log aspect, cx, cy, angle, brightness,
    contrast, flip. Row j depends only on (seed, epoch, j), not on n (rows are drawn in order)."""
    u = np.random.default_rng([seed, epoch, 0xA06]).random((n, 8))
    scale = config.crop_scale_min + (1.0 - config.crop_scale_min) * u[:, 0]
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    centre = 2.0 * u[:, 2:4] - 1.0
    angle = (2.0 * u[:, 4] - 1.0) * config.rotation_deg * math.pi / 180
    bright = 1.0 + (2.0 * u[:, 5] - 1.0) * config.brightness
    contrast = 1.0 + (2.0 * u[:, 6] - 1.0) * config.contrast
    flip = (u[:, 7] < 0.5) if config.hflip else np.zeros(n, dtype=bool)
    return np.column_stack([scale, log_ratio, centre, angle, bright, contrast, flip]).astype(np.float32)


def apply(images: torch.Tensor, params: torch.Tensor, out_size: int) -> torch.Tensor:
    """Augment a float batch [N, 1, H, W] in [0, 1] with per-sample ``params`` rows; returns [N, 1, out, out]."""
    scale, log_ratio, ux, uy, angle, bright, contrast, flip = params.to(images.device, torch.float32).unbind(1)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(scale * ratio).clamp(max=1.0)  # crop size as a share of the image side
    h = torch.sqrt(scale / ratio).clamp(max=1.0)
    cx, cy = ux * (1 - w), uy * (1 - h)  # crop centre, keeping the crop inside the image
    cos, sin = torch.cos(angle), torch.sin(angle)
    sign = 1.0 - 2.0 * flip
    theta = torch.stack(
        [torch.stack([w * cos * sign, -h * sin, cx], 1), torch.stack([w * sin * sign, h * cos, cy], 1)], 1
    )
    grid = F.affine_grid(theta, [images.shape[0], 1, out_size, out_size], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.view(-1, 1, 1, 1) + mean
    return (out * bright.view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def resize(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """Evaluation: only resize (antialiased) when the model's input size differs from the shards'."""
    if images.shape[-1] == out_size:
        return images
    return F.interpolate(images, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)
