"""How a bundle turns a decoded image into its network input: one definition for training and inference.

Each bundle's ``configs/inference.json`` may carry a ``preprocessing`` object
(:class:`Preprocessing`); training (``models.training``) and the engine both call
:func:`prepare` and :meth:`Preprocessing.network_input` with it, so the network sees in
training exactly what it sees in use.

Two methods:

- ``letterbox`` (the default, the detector's): aspect-preserving resize to the network input,
  zero padding; the returned :class:`~models.imaging.geometry.ResizeGeometry` maps boxes back.
- ``centre-crop`` (the shipped classifier's): the central square of the image, downsampled with
  an antialiasing filter to a small ``bottleneck`` square (28 px: what PneumoniaMNIST's images
  are), rounded to ``quantise_levels`` grey levels (8 bits, as the training images were stored),
  then brought up to the network input size with bilinear interpolation. A sharp 2,000 px
  radiograph and a 28 px training image therefore reach the network in the same state, and the
  result hardly depends on the input resolution. The returned :class:`CropGeometry` says which
  source pixels the network saw (the heatmap is drawn there).

``normalise = "standardise"`` maps each network input to zero mean and unit variance (per
image), which removes the brightness and contrast differences between the training data's
display windows and a DICOM's VOI window.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.imaging.dicom_image import SourceImage
from models.imaging.geometry import ResizeGeometry

METHODS: tuple[str, str] = ("letterbox", "centre-crop")
NORMALISATIONS: tuple[str, str] = ("none", "standardise")
#: smallest standard deviation used by "standardise" (a flat image is not blown up into noise)
_MIN_STD = 1e-3
#: PIL's two-step downsampling (integer box reduction first, then Lanczos) beyond this ratio
_REDUCING_GAP = 3.0


@dataclass(frozen=True)
class Preprocessing:
    """The ``preprocessing`` object of a bundle config (see module docstring)."""

    method: str = "letterbox"
    #: centre-crop only: side of the antialiased intermediate square, or None for a direct resize
    bottleneck: int | None = None
    #: centre-crop only: grey levels of the intermediate square (256 = 8-bit rounding), or None
    quantise_levels: int | None = None
    normalise: str = "none"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"preprocessing method must be one of {METHODS}, got {self.method!r}")
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"preprocessing normalise must be one of {NORMALISATIONS}, got {self.normalise!r}")
        for name, low in (("bottleneck", 4), ("quantise_levels", 2)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"preprocessing {name} must be None or an integer >= {low}, got {v!r}")
        if self.method == "letterbox" and (self.bottleneck is not None or self.quantise_levels is not None):
            raise ValueError(
                f"bottleneck/quantise_levels apply to centre-crop only, got them with method {self.method!r}"
            )

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | None) -> Preprocessing:
        """Parse a bundle config's ``preprocessing`` object (None or absent: letterbox, no normalisation)."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ValueError(f"preprocessing must be a JSON object, got {value!r}")
        unknown = set(value) - {"method", "bottleneck", "quantise_levels", "normalise"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}")
        return cls(**dict(value))

    def to_config(self) -> dict[str, Any]:
        """The JSON form :meth:`from_config` reads."""
        out: dict[str, Any] = {"method": self.method, "normalise": self.normalise}
        if self.bottleneck is not None:
            out["bottleneck"] = self.bottleneck
        if self.quantise_levels is not None:
            out["quantise_levels"] = self.quantise_levels
        return out

    def network_input(self, batch: torch.Tensor) -> torch.Tensor:
        """The last step, on a ``(B, 1, H, W)`` batch of :func:`prepare` outputs (after augmentation
        in training): the intensity normalisation."""
        if self.normalise == "none":
            return batch
        mean = batch.mean(dim=(-2, -1), keepdim=True)
        std = batch.std(dim=(-2, -1), keepdim=True).clamp_min(_MIN_STD)
        return (batch - mean) / std


#: the detector's (and the default) preprocessing
LETTERBOX = Preprocessing()


@dataclass(frozen=True)
class CropGeometry:
    """Which source pixels a centre-crop input shows: the square ``(x, y, side, side)``."""

    x: int
    y: int
    side: int
    source_rows: int
    source_columns: int

    def __post_init__(self) -> None:
        if self.side < 1 or self.x < 0 or self.y < 0:
            raise ValueError(f"crop must have side >= 1 and a non-negative origin, got {self!r}")
        if self.x + self.side > self.source_columns or self.y + self.side > self.source_rows:
            raise ValueError(f"crop {self!r} leaves the {self.source_rows}x{self.source_columns} image")

    @classmethod
    def centre_square(cls, rows: int, columns: int) -> CropGeometry:
        side = min(rows, columns)
        return cls((columns - side) // 2, (rows - side) // 2, side, rows, columns)

    def region(self) -> tuple[float, float, float, float]:
        """``(x, y, width, height)`` in source pixels."""
        return float(self.x), float(self.y), float(self.side), float(self.side)


def resize_unit_image(pixels: np.ndarray | Image.Image, height: int, width: int) -> np.ndarray:
    """Resize a 2-D float image to ``height x width`` with PIL's antialiased bilinear (triangle)
    filter: area-like when shrinking, no overshoot, so values stay within the input range.
    ``pixels`` may be that image as a Pillow "F" image already."""
    img = pixels if isinstance(pixels, Image.Image) else _float_image_of(pixels)
    if (img.height, img.width) == (height, width):
        return np.array(img, dtype=np.float32)
    out = img.resize((width, height), resample=Image.Resampling.BILINEAR)
    return np.array(out, dtype=np.float32)  # a writable copy


def downsample_antialiased(pixels: np.ndarray | Image.Image, side: int) -> np.ndarray:
    """A square 2-D float image shrunk to ``side x side`` with a Lanczos (antialiasing) filter,
    clipped to [0, 1]. An image already that size is returned unchanged (as a copy). ``pixels`` may
    be that image as a Pillow "F" image already."""
    img = pixels if isinstance(pixels, Image.Image) else _float_image_of(pixels)
    if (img.height, img.width) == (side, side):
        return np.array(img, dtype=np.float32)
    out = img.resize((side, side), resample=Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    return np.clip(np.array(out, dtype=np.float32), 0.0, 1.0)


def _float_image_of(pixels: np.ndarray) -> Image.Image:
    """A 2-D array as a Pillow "F" (float32) image (a copy: Pillow cannot map float pixels in place)."""
    return Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))


#: the Pillow image of the last SourceImage prepared by this thread (see _pillow_image)
_LAST_IMAGE = threading.local()


def _pillow_image(image: SourceImage) -> Image.Image:
    """``image.pixels`` as a Pillow "F" image, made once per image and thread: the engine prepares
    each image once per model input, and the copy into Pillow is a third of a resize's cost. Kept
    until the thread prepares another image (a SourceImage is immutable; its pixel buffer is
    checked too)."""
    address = image.pixels.__array_interface__["data"][0]
    held = getattr(_LAST_IMAGE, "held", None)
    if held is not None and held[0]() is image and held[1] == address:
        return held[2]
    pil = _float_image_of(image.pixels)
    _LAST_IMAGE.held = (weakref.ref(image), address, pil)
    return pil


def upsample_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``pixels`` (2-D) to ``height x width`` with bilinear interpolation (half-pixel centres), as
    ``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)``."""
    t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def prepare(
    image: SourceImage, image_size: tuple[int, int], preprocessing: Preprocessing = LETTERBOX
) -> tuple[np.ndarray, ResizeGeometry | CropGeometry]:
    """The network input of ``image`` before normalisation: float32, shape ``(1, H, W)``, in [0, 1].

    Returns it with the geometry that maps back to source pixels: a
    :class:`~models.imaging.geometry.ResizeGeometry` (letterbox) or a :class:`CropGeometry` (centre-crop).
    """
    if not isinstance(image, SourceImage):
        raise TypeError(f"prepare() needs a SourceImage, got {type(image).__name__}")
    height, width = int(image_size[0]), int(image_size[1])
    if preprocessing.method == "centre-crop":
        return _centre_crop(image, height, width, preprocessing)
    geometry = ResizeGeometry.letterbox(
        image.rows,
        image.columns,
        (height, width),
        pixel_spacing_mm=image.pixel_spacing_mm,
        spacing_source=image.spacing_source,
    )
    resized = resize_unit_image(_pillow_image(image), geometry.resized_height, geometry.resized_width)
    np.clip(resized, 0.0, 1.0, out=resized)
    out = np.zeros((1, geometry.model_height, geometry.model_width), dtype=np.float32)
    out[
        0,
        geometry.pad_top : geometry.pad_top + geometry.resized_height,
        geometry.pad_left : geometry.pad_left + geometry.resized_width,
    ] = resized
    return out, geometry


def _centre_crop(
    image: SourceImage, height: int, width: int, preprocessing: Preprocessing
) -> tuple[np.ndarray, CropGeometry]:
    crop = CropGeometry.centre_square(image.rows, image.columns)
    whole = _pillow_image(image)
    square = whole if crop.side == image.rows == image.columns else whole.crop(
        (crop.x, crop.y, crop.x + crop.side, crop.y + crop.side)
    )
    if preprocessing.bottleneck is not None:
        small = downsample_antialiased(square, preprocessing.bottleneck)
        if preprocessing.quantise_levels is not None:
            top = preprocessing.quantise_levels - 1
            small = np.round(small * top) / top
        out = upsample_bilinear(small, height, width)
    else:
        out = downsample_antialiased(square, height) if height == width else resize_unit_image(square, height, width)
    np.clip(out, 0.0, 1.0, out=out)
    return np.ascontiguousarray(out, dtype=np.float32)[None], crop
