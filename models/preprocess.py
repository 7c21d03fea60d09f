"""The one preprocessing step shared by training and inference: letterbox resize to the model input."""

from __future__ import annotations

import numpy as np
from PIL import Image

from models.dicom_image import SourceImage
from models.geometry import ResizeGeometry


def resize_unit_image(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D float image to ``height x width`` with PIL's antialiased bilinear (triangle)
    filter: area-like when shrinking, no overshoot, so values stay within the input range."""
    src = np.ascontiguousarray(pixels, dtype=np.float32)
    if src.shape == (height, width):
        return src.copy()
    img = Image.fromarray(src)  # 2-D float32 -> mode "F"
    out = img.resize((width, height), resample=Image.Resampling.BILINEAR)
    return np.array(out, dtype=np.float32)  # a writable copy


def prepare(image: SourceImage, image_size: tuple[int, int]) -> tuple[np.ndarray, ResizeGeometry]:
    """Letterbox ``image`` into ``image_size = (H, W)``.

    Returns the model input (float32, shape ``(1, H, W)``, values in [0, 1], padding 0) and the
    :class:`~models.geometry.ResizeGeometry` that maps boxes between the two spaces.
    """
    if not isinstance(image, SourceImage):
        raise TypeError(f"prepare() needs a SourceImage, got {type(image).__name__}")
    geometry = ResizeGeometry.letterbox(
        image.rows,
        image.columns,
        (int(image_size[0]), int(image_size[1])),
        pixel_spacing_mm=image.pixel_spacing_mm,
        spacing_source=image.spacing_source,
    )
    resized = resize_unit_image(image.pixels, geometry.resized_height, geometry.resized_width)
    np.clip(resized, 0.0, 1.0, out=resized)
    out = np.zeros((1, geometry.model_height, geometry.model_width), dtype=np.float32)
    out[
        0,
        geometry.pad_top : geometry.pad_top + geometry.resized_height,
        geometry.pad_left : geometry.pad_left + geometry.resized_width,
    ] = resized
    return out, geometry
