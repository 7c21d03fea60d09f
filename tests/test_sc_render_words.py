"""The overlay renderer's fast paths (dicom_node.results.sc.render, .text, .heatmap, .pillow_array) are pixel
for pixel the straightforward computations they replace: the grey image as RGBX words, the text bands
composed as words, the heatmap blended by blocks from the grey held in the words, Pillow's pixels
copied out by its paste."""

from __future__ import annotations

import numpy as np
import pytest
from _results_data import findings_for, rsna_source
from PIL import Image

from dicom_node.results.common import models_label
from dicom_node.results.sc import pillow_array
from dicom_node.results.sc.heatmap import blend_heatmap, blend_heatmap_over_grey, grey_of_words
from dicom_node.results.sc.pillow_array import to_array
from dicom_node.results.sc.render import grey_u8, grey_words, render_overlay
from dicom_node.results.sc.text import (
    BAND_COLOUR,
    RULE_COLOUR,
    TextLine,
    clear_caches,
    margin,
    render_band,
    row_height,
    text_mask,
    wrap,
)


def _expected_words(pixels: np.ndarray) -> np.ndarray:
    """What the renderer did before: the uint8 image, then one multiply into words."""
    return grey_u8(pixels, *pixels.shape).astype(np.uint32) * np.uint32(0x010101)


def _awkward_pixels(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Values in and out of [0, 1], exact halves after * 255 (rint rounds them to even), NaN, +-inf, -0."""
    pixels = (rng.random((rows, cols), dtype=np.float32) * 1.4 - 0.2).astype(np.float32)
    flat = pixels.reshape(-1)
    n = flat.size
    pick = rng.integers(0, n, size=(6, max(1, n // 50)))
    flat[pick[0]] = (rng.integers(0, 256, pick.shape[1]) + 0.5).astype(np.float32) / np.float32(255.0)
    flat[pick[1]] = np.nan
    flat[pick[2]] = np.inf
    flat[pick[3]] = -np.inf
    flat[pick[4]] = -0.0
    flat[pick[5]] = rng.choice(np.array([0.0, 1.0, 1e30, -1e30], dtype=np.float32), pick.shape[1])
    return pixels


@pytest.mark.parametrize("shape", [(1, 1), (1, 70_000), (70_000, 1), (37, 1025), (600, 333), (1024, 1024)])
def test_grey_words_are_the_uint8_image_times_0x010101(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    pixels = _awkward_pixels(rng, *shape)
    out = np.full(shape, 0xDEADBEEF, dtype=np.uint32)
    with np.errstate(invalid="ignore"):
        grey_words(pixels, out)
        expected = _expected_words(pixels)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("bad", [np.nan, 1.2, -0.01, np.inf, 0.5 / 255.0])
def test_grey_words_blocks_in_and_out_of_range(bad: float) -> None:
    """Most blocks of rows in [0, 1] (no clamping needed), one value elsewhere in one of them."""
    rng = np.random.default_rng(11)
    pixels = rng.random((700, 1024), dtype=np.float32)
    pixels[0, 0] = 1.0
    pixels[1, 5] = 0.0
    pixels[333, 517] = bad
    out = np.empty(pixels.shape, dtype=np.uint32)
    with np.errstate(invalid="ignore"):
        grey_words(pixels, out)
        expected = _expected_words(pixels)
    np.testing.assert_array_equal(out, expected)


def test_grey_words_into_a_canvas_rows_view_and_from_a_strided_source() -> None:
    rng = np.random.default_rng(3)
    pixels = rng.random((300, 500), dtype=np.float32)
    canvas = np.zeros((340, 250), dtype=np.uint32)
    grey_words(pixels[:, ::2], canvas[20:320])  # a column-strided source into the image rows of a canvas
    np.testing.assert_array_equal(canvas[20:320], _expected_words(np.ascontiguousarray(pixels[:, ::2])))
    assert not canvas[:20].any() and not canvas[320:].any()
    with pytest.raises(ValueError, match="uint32"):
        grey_words(pixels, np.zeros((300, 500), dtype=np.int32))


def _band_reference(
    lines: tuple[TextLine, ...], width: int, size: int, rule_at_top: bool, band
) -> np.ndarray:
    """The band composed channel by channel as (rows, width, 3) uint8: background, each text row's
    coverage mask blended from the background to its line's colour, the grey rule."""
    pixels = np.empty((band.words.shape[0], width, 3), dtype=np.uint8)
    pixels[:] = BAND_COLOUR
    pad, step, rule = margin(size), row_height(size), max(1, size // 12)
    y = pad + (rule if rule_at_top else 0)
    for line in lines:
        m = np.arange(256, dtype=np.uint32)[:, None]
        shades = ((np.asarray(BAND_COLOUR) * (255 - m) + np.asarray(line.colour) * m + 127) // 255).astype(
            np.uint8
        )
        for row in wrap(line.text, size, width - 2 * pad - line.indent):
            x = pad + line.indent
            mask = text_mask(row, size)[:, : max(0, width - x)]
            pixels[y : y + step, x : x + mask.shape[1]] = shades[mask]
            y += step
    rule_y = 0 if rule_at_top else pixels.shape[0] - rule
    pixels[rule_y : rule_y + rule] = RULE_COLOUR
    return pixels


@pytest.mark.parametrize("width", [12, 90, 400, 1024])
@pytest.mark.parametrize("rule_at_top", [False, True])
def test_band_words_are_the_coloured_text_masks(width: int, rule_at_top: bool) -> None:
    clear_caches()
    lines = (
        TextLine("Opacity probability 0.73 (threshold 0.50): POSITIVE", (255, 128, 64)),
        TextLine(
            "Lung opacity boxes: 2 (detector score >= 0.50; shown only on positive images)", (255, 255, 255)
        ),
        TextLine(
            "Heatmap: Grad-CAM of cxr_classification, where the model looked", (120, 220, 120), indent=30
        ),
    )
    size = 22
    band = render_band(lines, width, size, rule_at_top)
    assert band.words.shape[1] == width and not band.words.flags.writeable
    np.testing.assert_array_equal(band.pixels, _band_reference(lines, width, size, rule_at_top, band))
    assert not (band.words >> 24).any()  # X stays 0


@pytest.mark.parametrize("seed", range(4))
def test_blend_over_the_grey_of_the_words_themselves(seed: int) -> None:
    """The renderer passes the words' own R bytes as the grey: the same pixels as Pillow's paste over
    a separate grey image, over several blocks of rows."""
    rng = np.random.default_rng(100 + seed)
    rows, cols = int(rng.integers(200, 700)), int(rng.integers(200, 700))
    grey = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
    values = rng.random((5, 5)).astype(np.float32)
    values /= values.max()
    region = (float(rng.uniform(-30, 40)), float(rng.uniform(-30, 40)), float(cols), float(rows))
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    n_expected = blend_heatmap(expected, values, region)
    rgbx = grey.astype(np.uint32) * np.uint32(0x010101)
    n = blend_heatmap_over_grey(rgbx, grey_of_words(rgbx), values, region)
    assert n == n_expected > 0
    np.testing.assert_array_equal(rgbx.view(np.uint8).reshape(rows, cols, 4)[:, :, :3], expected)


def test_overlay_grey_area_is_the_uint8_image_where_nothing_is_drawn() -> None:
    src = rsna_source(256, seed=4)
    findings = findings_for(src, p=0.2)  # negative, no boxes, no heatmap: the image area is the grey image
    pixels = _awkward_pixels(np.random.default_rng(9), 256, 256)
    with np.errstate(invalid="ignore"):
        overlay = render_overlay(pixels, findings, models_label=models_label(findings.models))
        expected = _expected_words(pixels)
    lay = overlay.layout
    assert overlay.rgbx is not None
    np.testing.assert_array_equal(overlay.rgbx[lay.image_top : lay.image_bottom], expected)


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (869, 1024), (333, 7)])
def test_pillow_image_to_array_is_its_pixels(size: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The heatmap index comes out of Pillow by the core's paste into the array (np.asarray is not
    called for an 8-bit image), with the same pixels, writable and independent of the image."""
    rng = np.random.default_rng(size[0] * size[1])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8))
    expected = np.array(image)
    with monkeypatch.context() as m:
        m.setattr(pillow_array.np, "asarray", _refuse)
        got = to_array(image)
    np.testing.assert_array_equal(got, expected)
    got[...] = 0
    np.testing.assert_array_equal(np.array(image), expected)
    rgb = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    np.testing.assert_array_equal(to_array(rgb), np.array(rgb))


def test_pillow_image_to_array_falls_back_where_the_buffer_is_not_mapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Pillow whose frombuffer copies the buffer: the pasted pixels never reach the array, which is
    noticed, and the array comes from np.asarray."""
    image = Image.fromarray(np.arange(60 * 70, dtype=np.uint32).reshape(60, 70).astype(np.uint8))

    def copying_frombuffer(mode, size, data, *args):  # type: ignore[no-untyped-def]
        return Image.frombytes(mode, size, bytes(data))

    monkeypatch.setattr(pillow_array.Image, "frombuffer", copying_frombuffer)
    np.testing.assert_array_equal(to_array(image), np.array(image))


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("np.asarray called")
