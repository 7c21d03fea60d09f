"""CXR-suitable augmentation that moves boxes with the image.

Geometric: a small rotation (±7°), isotropic zoom (0.9–1.1) and shift about the image
centre; **no horizontal flip** by default (heart side and labels are anatomical).
Intensity: brightness, contrast and gamma. Boxes (``xyxy``, model-input pixels,
continuous coordinates with the origin at the top-left pixel corner) are transformed by
the same affine: the four corners are mapped, re-boxed (min/max) and clipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation."""

    max_rotation_deg: float = 7.0
    zoom: tuple[float, float] = (0.9, 1.1)
    max_shift_fraction: float = 0.06
    brightness: float = 0.08
    contrast: tuple[float, float] = (0.85, 1.15)
    gamma: tuple[float, float] = (0.8, 1.25)
    horizontal_flip: bool = False
    min_box_side: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_rotation_deg <= 45:
            raise ValueError(f"max_rotation_deg must be in [0, 45], got {self.max_rotation_deg!r}")
        for name in ("zoom", "contrast", "gamma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)!r}")
        if not 0 <= self.max_shift_fraction < 0.5:
            raise ValueError(f"max_shift_fraction must be in [0, 0.5), got {self.max_shift_fraction!r}")
        if self.brightness < 0:
            raise ValueError(f"brightness must be >= 0, got {self.brightness!r}")


@dataclass(frozen=True)
class AffineParams:
    """One draw of the geometric part (forward map: input pixel → output pixel)."""

    angle_deg: float = 0.0
    zoom: float = 1.0
    shift_x: float = 0.0  # pixels
    shift_y: float = 0.0
    flip: bool = False

    def matrix(self, height: int, width: int) -> np.ndarray:
        """3×3 forward matrix in pixel coordinates ``(x, y, 1)``."""
        cx, cy = width / 2.0, height / 2.0
        a = math.radians(self.angle_deg)
        c, s = math.cos(a) * self.zoom, math.sin(a) * self.zoom
        to_c = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=np.float64)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)
        flip = np.diag([-1.0 if self.flip else 1.0, 1.0, 1.0])
        back = np.array([[1, 0, cx + self.shift_x], [0, 1, cy + self.shift_y], [0, 0, 1]], dtype=np.float64)
        return back @ rot @ flip @ to_c


def draw_params(rng: np.random.Generator, cfg: AugmentConfig, height: int, width: int) -> AffineParams:
    """Random geometric parameters within ``cfg``."""
    return AffineParams(
        angle_deg=float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)),
        zoom=float(rng.uniform(*cfg.zoom)),
        shift_x=float(rng.uniform(-cfg.max_shift_fraction, cfg.max_shift_fraction) * width),
        shift_y=float(rng.uniform(-cfg.max_shift_fraction, cfg.max_shift_fraction) * height),
        flip=bool(cfg.horizontal_flip and rng.uniform() < 0.5),
    )


def warp_image(image: torch.Tensor, params: AffineParams) -> torch.Tensor:
    """Apply the affine to a ``(C, H, W)`` float image (bilinear, zero padding)."""
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)!r}")
    _, h, w = image.shape
    inv = np.linalg.inv(params.matrix(h, w))
    # output pixel centres → source pixel coordinates → normalised [-1, 1] (align_corners=False)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij"
    )
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    grid = torch.stack([2.0 * src_x / w - 1.0, 2.0 * src_y / h - 1.0], dim=-1).to(image.dtype)
    out = F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0]


def warp_boxes(
    boxes: np.ndarray, params: AffineParams, height: int, width: int, *, min_side: float = 2.0
) -> np.ndarray:
    """Map ``xyxy`` boxes through the affine: corners mapped, re-boxed, clipped; tiny boxes dropped."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    m = params.matrix(height, width)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack(
        [np.stack([x1, y1]), np.stack([x2, y1]), np.stack([x2, y2]), np.stack([x1, y2])], axis=0
    )  # (4, 2, N)
    xs = m[0, 0] * corners[:, 0] + m[0, 1] * corners[:, 1] + m[0, 2]
    ys = m[1, 0] * corners[:, 0] + m[1, 1] * corners[:, 1] + m[1, 2]
    out = np.stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    keep = ((out[:, 2] - out[:, 0]) >= min_side) & ((out[:, 3] - out[:, 1]) >= min_side)
    return out[keep].astype(np.float32)


def adjust_intensity(image: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Random gamma, contrast (about 0.5) and brightness; result clipped to [0, 1]."""
    gamma = float(np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1]))))
    contrast = float(rng.uniform(*cfg.contrast))
    brightness = float(rng.uniform(-cfg.brightness, cfg.brightness))
    out = image.clamp(0, 1).pow(gamma)
    out = (out - 0.5) * contrast + 0.5 + brightness
    return out.clamp_(0, 1)


def augment(
    image: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[torch.Tensor, np.ndarray]:
    """Random geometric + intensity augmentation of a ``(C, H, W)`` image and its ``xyxy`` boxes."""
    _, h, w = image.shape
    params = draw_params(rng, cfg, h, w)
    out = warp_image(image, params)
    out = adjust_intensity(out, rng, cfg)
    return out, warp_boxes(boxes, params, h, w, min_side=cfg.min_box_side)
