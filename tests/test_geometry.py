"""models.imaging.geometry + models.imaging.preprocess: letterbox mapping, exact box round trips, content alignment, mm."""

from __future__ import annotations

import time

import numpy as np
import pytest

from models.findings import Box, BoxMM
from models.imaging.dicom_image import SourceImage
from models.imaging.geometry import ResizeGeometry
from models.imaging.preprocess import prepare

ROWS, COLS = 1001, 777  # odd, non-square, portrait like a CXR


def _image(
    pixels: np.ndarray, spacing: tuple[float, float] | None = None, source: str | None = None
) -> SourceImage:
    return SourceImage(
        pixels=pixels.astype(np.float32),
        rows=pixels.shape[0],
        columns=pixels.shape[1],
        sop_instance_uid="1.2.3.4",
        pixel_spacing_mm=spacing,
        spacing_source=source,
    )


@pytest.mark.parametrize("size", [(256, 256), (224, 320), (512, 384), (333, 211)])
def test_letterbox_keeps_aspect_and_centres(size: tuple[int, int]) -> None:
    g = ResizeGeometry.letterbox(ROWS, COLS, size)
    assert (g.model_height, g.model_width) == size
    # one side fills the model input, the other keeps the aspect ratio (to one pixel)
    assert g.resized_height == size[0] or g.resized_width == size[1]
    assert abs(g.resized_width - COLS * g.resized_height / ROWS) <= 1.0
    bottom = g.model_height - g.pad_top - g.resized_height
    right = g.model_width - g.pad_left - g.resized_width
    assert 0 <= bottom - g.pad_top <= 1 and 0 <= right - g.pad_left <= 1
    assert abs(g.scale_x - g.scale_y) < 2.0 / min(g.resized_height, g.resized_width)


def test_box_round_trip_is_exact() -> None:
    g = ResizeGeometry.letterbox(ROWS, COLS, (256, 320))
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y = rng.uniform(0, COLS), rng.uniform(0, ROWS)
        w, h = rng.uniform(0.1, COLS - x + 0.2), rng.uniform(0.1, ROWS - y + 0.2)
        back = g.box_to_source(*g.box_to_model(x, y, w, h))
        np.testing.assert_allclose(back, (x, y, w, h), rtol=0, atol=1e-6)
        mx, my = rng.uniform(0, 320), rng.uniform(0, 256)
        again = g.box_to_model(*g.box_to_source(mx, my, 5.0, 7.0))
        np.testing.assert_allclose(again, (mx, my, 5.0, 7.0), rtol=0, atol=1e-6)


def test_whole_image_maps_to_the_content_region() -> None:
    g = ResizeGeometry.letterbox(ROWS, COLS, (256, 320))
    x, y, w, h = g.box_to_model(0, 0, COLS, ROWS)
    assert (x, y) == pytest.approx((g.pad_left, g.pad_top))
    assert (w, h) == pytest.approx((g.resized_width, g.resized_height))


@pytest.mark.parametrize("size", [(256, 256), (224, 320), (320, 224)])
def test_box_lands_on_the_same_content(size: tuple[int, int]) -> None:
    """Render a bright rectangle into the source, prepare, find it in the model input."""
    rect = (301.0, 402.0, 260.0, 180.0)  # x, y, w, h in source pixels (integer-aligned)
    x, y, w, h = (int(v) for v in rect)
    pixels = np.full((ROWS, COLS), 0.2, dtype=np.float32)
    pixels[y : y + h, x : x + w] = 1.0
    model, g = prepare(_image(pixels), size)
    found = np.argwhere(model[0] > 0.6)  # half way between background and the rectangle
    y0, x0 = found.min(axis=0)
    y1, x1 = found.max(axis=0) + 1
    ex, ey, ew, eh = g.box_to_model(*rect)
    assert abs(x0 - ex) <= 1.0 and abs(y0 - ey) <= 1.0
    assert abs(x1 - (ex + ew)) <= 1.0 and abs(y1 - (ey + eh)) <= 1.0
    # and back: the found model box maps onto the drawn rectangle to within one model pixel
    sx, sy, sw, sh = g.box_to_source(float(x0), float(y0), float(x1 - x0), float(y1 - y0))
    tol_x, tol_y = 1.0 / g.scale_x + 1e-6, 1.0 / g.scale_y + 1e-6
    assert abs(sx - rect[0]) <= tol_x and abs(sy - rect[1]) <= tol_y
    assert abs(sx + sw - rect[0] - rect[2]) <= tol_x and abs(sy + sh - rect[1] - rect[3]) <= tol_y
    # padding is exactly 0 and the background inside the content stays 0.2
    if g.pad_left:
        assert (model[0, :, : g.pad_left] == 0).all()
    if g.pad_top:
        assert (model[0, : g.pad_top, :] == 0).all()
    assert model[0, g.pad_top + 2, g.pad_left + 2] == pytest.approx(0.2, abs=1e-5)


def test_box_to_mm_uses_row_spacing_for_y_and_column_spacing_for_x() -> None:
    g = ResizeGeometry.letterbox(
        ROWS, COLS, (256, 256), pixel_spacing_mm=(0.2, 0.1), spacing_source="ImagerPixelSpacing"
    )
    mm = g.box_to_mm(10.0, 20.0, 30.0, 40.0)
    assert isinstance(mm, BoxMM)
    assert (mm.x, mm.y, mm.width, mm.height) == pytest.approx((1.0, 4.0, 3.0, 8.0))
    assert mm.spacing_source == "ImagerPixelSpacing"
    assert ResizeGeometry.letterbox(ROWS, COLS, (256, 256)).box_to_mm(10, 20, 30, 40) is None


def test_clip_to_source_and_detector_boxes() -> None:
    g = ResizeGeometry.letterbox(ROWS, COLS, (256, 256))
    assert g.clip_to_source(-10.0, -5.0, 50.0, 25.0) == pytest.approx((0.0, 0.0, 40.0, 20.0))
    assert g.clip_to_source(COLS - 10.0, ROWS - 10.0, 50.0, 50.0) == pytest.approx(
        (COLS - 10.0, ROWS - 10.0, 10.0, 10.0)
    )
    assert g.clip_to_source(COLS + 1.0, 0.0, 5.0, 5.0) is None
    assert g.pad_left > 0
    assert g.xyxy_model_to_source(0.0, 10.0, g.pad_left - 0.5, 50.0) is None  # entirely in the padding
    x1, y1 = g.pad_left + 10.0, 30.0
    box = g.xyxy_model_to_source(x1, y1, x1 + 20.0, y1 + 40.0)
    assert box is not None
    np.testing.assert_allclose(g.box_to_model(*box), (x1, y1, 20.0, 40.0), atol=1e-6)
    Box(*box, score=0.5)  # usable as a findings Box


def test_geometry_validation() -> None:
    with pytest.raises(ValueError, match="pad_left"):
        ResizeGeometry(10, 10, 8, 8, 8, 8, 0, 1)
    with pytest.raises(ValueError, match="source_rows"):
        ResizeGeometry.letterbox(0, 10, (8, 8))
    with pytest.raises(ValueError, match="spacing_source"):
        ResizeGeometry.letterbox(10, 10, (8, 8), pixel_spacing_mm=(0.1, 0.1))
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        ResizeGeometry.letterbox(10, 10, (8, 8), pixel_spacing_mm=(0.1, -1.0), spacing_source="PixelSpacing")
    with pytest.raises(ValueError, match="image_size"):
        ResizeGeometry.letterbox(10, 10, (8, 0))


def test_prepare_output_and_spacing() -> None:
    rng = np.random.default_rng(1)
    img = _image(rng.random((ROWS, COLS)), spacing=(0.15, 0.16), source="PixelSpacing")
    model, g = prepare(img, (224, 224))
    assert model.dtype == np.float32 and model.shape == (1, 224, 224)
    assert model.min() >= 0.0 and model.max() <= 1.0
    assert g.pixel_spacing_mm == (0.15, 0.16) and g.spacing_source == "PixelSpacing"
    # antialiased: random noise averages out instead of aliasing through
    content = model[0, g.pad_top : g.pad_top + g.resized_height, g.pad_left : g.pad_left + g.resized_width]
    assert content.std() < 0.1 < img.pixels.std()


def test_prepare_upscales_small_images() -> None:
    small = _image(np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28))
    model, g = prepare(small, (224, 224))
    assert (g.resized_height, g.resized_width, g.pad_top, g.pad_left) == (224, 224, 0, 0)
    assert model.min() >= 0.0 and model.max() <= 1.0
    assert model[0, 0, 0] < 0.01 and model[0, -1, -1] > 0.99


def test_prepare_is_fast_on_4096() -> None:
    img = _image(np.random.default_rng(2).random((4096, 4096), dtype=np.float32))
    prepare(img, (256, 256))  # warm-up
    start = time.perf_counter()
    model, _ = prepare(img, (512, 512))
    elapsed = time.perf_counter() - start
    assert model.shape == (1, 512, 512)
    assert elapsed < 2.0, f"prepare took {elapsed:.2f} s on a 4096 x 4096 image"
