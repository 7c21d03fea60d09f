"""Render the AI findings next to a windowed greyscale CXR: a header band, the image, a results band.

Pure image work (numpy + Pillow), no DICOM: :mod:`dicom_node.results.sc.build` wraps the result in a
Secondary Capture. Layout, top to bottom, all at the image's width::

    header band   AI OUTPUT - NOT FOR PRIMARY DIAGNOSIS / Models: name version+digest, ...
    image         the source at its resolution (downscaled, aspect kept, only when a side exceeds
                  MAX_SIDE), every pixel visible except under the box outlines, their score labels
                  and (positive images) the classifier's heatmap
    results band  finding, probability, threshold and decision / number of boxes and the rule
                  that reports them / heatmap legend and what it is

Nothing is drawn over the image except the findings themselves: the image area of the canvas is
the source rendering pixel for pixel elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dicom_node.results.common import classifier_model
from dicom_node.results.sc.heatmap import HEATMAP_CUTOFF, blend_heatmap_over_grey, grey_of_words, legend
from dicom_node.results.sc.pillow_array import to_array
from dicom_node.results.sc.text import (
    MIN_FONT_SIZE,
    TextLine,
    label_masks,
    margin,
    render_band,
    stamp_label,
)
from models.findings import Findings

#: Longest side of the rendered image area; larger sources are downscaled (aspect kept).
MAX_SIDE = 2048
BANNER_TEXT = "AI OUTPUT - NOT FOR PRIMARY DIAGNOSIS"
#: Box colour (amber): visible on black lungs and on white bone alike; framed by 1 px of black.
BOX_COLOUR = (255, 196, 0)
BOX_FRAME_COLOUR = (0, 0, 0)
WARNING_COLOUR = (255, 80, 80)
TEXT_COLOUR = (255, 255, 255)
POSITIVE_COLOUR = (255, 128, 64)
NEGATIVE_COLOUR = (120, 220, 120)
#: Band font size as a fraction of the image width (clamped to MIN_FONT_SIZE .. MAX_FONT_SIZE).
FONT_FRACTION = 0.022
MAX_FONT_SIZE = 44
#: Box score labels are this fraction of the band font size.
LABEL_FRACTION = 0.85
#: Box line width as a fraction of the longest side.
LINE_FRACTION = 0.003


@dataclass(frozen=True)
class OverlayText:
    """The text of the overlay (kept separate so callers and tests can read it)."""

    banner: tuple[str, ...]
    summary: tuple[str, ...]
    #: caption of the heatmap legend; None when no heatmap is drawn
    heatmap: str | None = None


@dataclass(frozen=True)
class OverlayLayout:
    """Where the image sits in the canvas: rows ``image_top .. image_top + image_rows - 1``, all columns."""

    image_top: int
    image_rows: int
    image_columns: int
    #: image pixels per source pixel (1.0 unless the source was downscaled)
    scale: float
    canvas_rows: int

    def __post_init__(self) -> None:
        if min(self.image_rows, self.image_columns) < 1 or self.image_top < 0 or self.scale <= 0:
            raise ValueError(f"invalid overlay layout {self!r}")
        if self.image_top + self.image_rows > self.canvas_rows:
            raise ValueError(f"the image does not fit the canvas: {self!r}")

    @property
    def image_bottom(self) -> int:
        """First canvas row below the image."""
        return self.image_top + self.image_rows


@dataclass(frozen=True, eq=False)
class Overlay:
    """A rendered overlay: ``rgb`` (canvas_rows, image_columns, 3) uint8, its layout and its text.

    ``rgbx``, when given, is the buffer ``rgb`` is a view of: (canvas_rows, image_columns) uint32
    little-endian RGBX words (what Pillow maps without a copy, e.g. for the JPEG encoder).
    """

    rgb: np.ndarray
    layout: OverlayLayout
    text: OverlayText
    rgbx: np.ndarray | None = None


def output_shape(rows: int, columns: int, max_side: int = MAX_SIDE) -> tuple[int, int, float]:
    """(rows, columns, scale) of the image area for a ``rows`` x ``columns`` source."""
    if rows <= 0 or columns <= 0:
        raise ValueError(f"image size must be positive, got {rows!r} x {columns!r}")
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side!r}")
    scale = min(1.0, max_side / max(rows, columns))
    return max(1, round(rows * scale)), max(1, round(columns * scale)), scale


def _boxes_line(findings: Findings) -> str:
    n = len(findings.boxes)
    rule = f"detector score >= {findings.detection_threshold:.2f}"
    if findings.box_gating == "positive-only":
        if not findings.positive:
            return "Lung opacity boxes: 0 shown (boxes are shown only on positive images)"
        rule += "; shown only on positive images"
    else:
        rule += "; shown whatever the image-level decision"
    return f"Lung opacity boxes: {n if n else 'none detected'} ({rule})"


def overlay_text(findings: Findings, models_label: str) -> OverlayText:
    """Banner, summary and heatmap caption for ``findings`` (analysed ones only)."""
    if not findings.analysed or findings.probability is None or findings.threshold is None:
        raise ValueError(f"no overlay for a not-analysed image ({findings.sop_instance_uid})")
    decision = "POSITIVE" if findings.positive else "NEGATIVE"
    meaning = findings.finding.meaning if findings.finding is not None else "finding"
    caption = None
    if shows_heatmap(findings):
        classifier = classifier_model(findings)
        name = classifier.name if classifier is not None else "the classifier"
        caption = f"Heatmap: Grad-CAM of {name}, where the model looked; not a segmentation"
    return OverlayText(
        banner=(BANNER_TEXT, f"Models: {models_label}"),
        summary=(
            f"{meaning} probability {findings.probability:.2f} (threshold {findings.threshold:.2f}): {decision}",
            _boxes_line(findings),
        ),
        heatmap=caption,
    )


def shows_heatmap(findings: Findings) -> bool:
    """Whether the overlay draws a heatmap: positive images that carry one."""
    return bool(findings.positive) and findings.heatmap is not None


def font_size(image_columns: int) -> int:
    """Band font size (pixels) for an image ``image_columns`` wide."""
    return min(MAX_FONT_SIZE, max(MIN_FONT_SIZE, round(FONT_FRACTION * image_columns)))


def grey_u8(pixels: np.ndarray, out_rows: int, out_cols: int) -> np.ndarray:
    """``pixels`` (float, [0, 1]) as uint8 (rounded, NaN -> 0), resized (Lanczos) to ``out_rows`` x ``out_cols``."""
    t = np.multiply(pixels, 255.0, dtype=np.float32)
    np.rint(t, out=t)
    np.fmax(t, 0.0, out=t)  # fmax/fmin also turn NaN into the bound
    np.fmin(t, 255.0, out=t)
    grey = t.astype(np.uint8)
    if grey.shape != (out_rows, out_cols):
        grey = to_array(Image.fromarray(grey).resize((out_cols, out_rows), Image.Resampling.LANCZOS))
    return grey


#: pixels per block of :func:`grey_words` (its float32 scratch block stays in the CPU's L2 cache)
_GREY_BLOCK = 1 << 16
#: a grey level times this is its RGBX word (the level in R, G and B); exact in float32 up to 255 * it < 2**24
_GREY_TO_WORD = np.float32(0x010101)


def grey_words(pixels: np.ndarray, out: np.ndarray) -> None:
    """Write :func:`grey_u8` of ``pixels`` (at their own size) into ``out`` ((rows, columns) uint32) as
    RGBX words (``v * 0x010101``: the level in R, G and B), block by block of rows: the same values,
    without the full-size float and uint8 images in between."""
    if out.dtype != np.uint32 or out.shape != pixels.shape or pixels.ndim != 2:
        raise ValueError(
            f"need (rows, columns) pixels and uint32 words of that shape, got {pixels.shape}, {out.shape} {out.dtype}"
        )
    rows, cols = pixels.shape
    step = max(1, _GREY_BLOCK // max(1, cols))
    scratch = np.empty((min(step, rows), cols), dtype=np.float32)
    signed = out.view(np.int32)  # float32 -> int32 is one instruction; every value is < 2**24
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        t = scratch[: r1 - r0]
        np.multiply(pixels[r0:r1], 255.0, out=t, dtype=np.float32)
        np.rint(t, out=t)
        if not (t.min() >= 0.0 and t.max() <= 255.0):  # out of range or NaN (which fails both)
            np.fmax(t, 0.0, out=t)
            np.fmin(t, 255.0, out=t)
        np.multiply(t, _GREY_TO_WORD, out=t)
        np.copyto(signed[r0:r1], t, casting="unsafe")


def _outline_strips(rect: tuple[int, int, int, int], width: int) -> list[tuple[int, int, int, int]]:
    """The four sides of a box outline ``width`` pixels thick, inside ``rect`` (x0, y0, x1, y1 inclusive)."""
    x0, y0, x1, y1 = rect
    return [
        (x0, y0, x1, min(y1, y0 + width - 1)),
        (x0, max(y0, y1 - width + 1), x1, y1),
        (x0, y0, min(x1, x0 + width - 1), y1),
        (max(x0, x1 - width + 1), y0, x1, y1),
    ]


def _fill(rgb: np.ndarray, rect: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = rect
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(rgb.shape[1] - 1, x1), min(rgb.shape[0] - 1, y1)
    if x1 >= x0 and y1 >= y0:
        rgb[y0 : y1 + 1, x0 : x1 + 1] = colour


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Pixels shared by two inclusive rectangles."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    return max(0, w) * max(0, h)


def place_labels(
    rects: list[tuple[int, int, int, int]],
    sizes: list[tuple[int, int]],
    area: tuple[int, int],
    gap: int,
    line: int,
) -> list[tuple[int, int]]:
    """Top-left corner (x, y) of each box's label, in image coordinates.

    ``rects``: the boxes' outer rectangles (inclusive); ``sizes``: each label's (width, height);
    ``area``: (rows, columns) of the image; ``gap``: pixels between a box and its label; ``line``:
    thickness of an outline (inside its rectangle). Candidates, in order of preference: above the box
    (left-aligned, then right-aligned), below it, inside its top and bottom corners. The chosen
    one stays in the image and covers as little of the other boxes' outlines (first) and of labels
    already placed (second) as possible.
    """
    rows, cols = area
    placed: list[tuple[int, int, int, int]] = []
    out: list[tuple[int, int]] = []
    for i, ((x0, y0, x1, y1), (tw, th)) in enumerate(zip(rects, sizes, strict=True)):
        xs = (x0, x1 - tw + 1)
        candidates = [(x, y0 - gap - th) for x in xs] + [(x, y1 + gap + 1) for x in xs]
        candidates += [(x0 + gap + 2, y0 + gap + 2), (x0 + gap + 2, y1 - gap - 1 - th)]
        others = [s for j, r in enumerate(rects) if j != i for s in _outline_strips(r, line)]
        best: tuple[float, int, int] | None = None
        for rank, (x, y) in enumerate(candidates):
            x = min(max(0, x), max(0, cols - tw))
            if y < 0 or y + th > rows:
                continue
            label = (x, y, x + tw - 1, y + th - 1)
            cost = 1_000_000 * sum(_overlap(label, s) for s in others)
            cost += 1_000 * sum(_overlap(label, p) for p in placed) + rank
            if best is None or cost < best[0]:
                best = (cost, x, y)
        if best is None:  # image smaller than a label: pin it to the box's corner
            best = (0, min(max(0, x0), max(0, cols - tw)), min(max(0, y0), max(0, rows - th)))
        _, x, y = best
        placed.append((x, y, x + tw - 1, y + th - 1))
        out.append((x, y))
    return out


def render_overlay(
    pixels: np.ndarray,
    findings: Findings,
    *,
    models_label: str,
    max_side: int = MAX_SIDE,
) -> Overlay:
    """Render the overlay canvas (header band, image with the findings, results band).

    ``pixels`` is the windowed source image, float in [0, 1], shape ``(findings.rows, findings.columns)``.
    """
    if pixels.ndim != 2 or pixels.shape != (findings.rows, findings.columns):
        raise ValueError(
            f"pixels shape {pixels.shape} does not match the findings image size "
            f"({findings.rows}, {findings.columns})"
        )
    text = overlay_text(findings, models_label)
    out_rows, out_cols, scale = output_shape(findings.rows, findings.columns, max_side)
    size = font_size(out_cols)
    pad = margin(size)

    header = render_band(
        (TextLine(text.banner[0], WARNING_COLOUR), *(TextLine(t, TEXT_COLOUR) for t in text.banner[1:])),
        out_cols, size, False,
    )  # fmt: skip
    decision_colour = POSITIVE_COLOUR if findings.positive else NEGATIVE_COLOUR
    footer_lines = [
        TextLine(text.summary[0], decision_colour),
        *(TextLine(t, TEXT_COLOUR) for t in text.summary[1:]),
    ]
    legend_width = min(6 * size, max(1, out_cols // 4))
    if text.heatmap is not None:
        footer_lines.append(TextLine(text.heatmap, TEXT_COLOUR, indent=legend_width + pad))
    footer = render_band(tuple(footer_lines), out_cols, size, True)

    top = header.pixels.shape[0]
    layout = OverlayLayout(top, out_rows, out_cols, scale, top + out_rows + footer.pixels.shape[0])
    # RGBX words: the grey image is one multiply (v * 0x010101 puts v in R, G and B), the heatmap one
    # table lookup per pixel (by heatmap index and the grey in R), and the JPEG encoder reads the
    # buffer without a copy
    # every word is written below: the bands' rows, then the image's (np.zeros would fault in fresh zero pages)
    rgbx = np.empty((layout.canvas_rows, out_cols), dtype=np.uint32)
    canvas = rgbx.view(np.uint8).reshape(layout.canvas_rows, out_cols, 4)[:, :, :3]
    rgbx[:top] = header.words  # whole words: a copy of contiguous rows
    rgbx[layout.image_bottom :] = footer.words
    if pixels.shape == (out_rows, out_cols):
        grey_words(pixels, rgbx[top : layout.image_bottom])
    else:
        np.multiply(
            grey_u8(pixels, out_rows, out_cols), np.uint32(0x010101), out=rgbx[top : layout.image_bottom]
        )
    image = canvas[top : layout.image_bottom]

    if text.heatmap is not None and findings.heatmap is not None:
        hm = findings.heatmap
        region = (hm.x * scale, hm.y * scale, hm.width * scale, hm.height * scale)
        area = rgbx[top : layout.image_bottom]
        blend_heatmap_over_grey(area, grey_of_words(area), hm.values, region)
        legend_top = layout.image_bottom + footer.line_tops[-1] + max(1, footer.row_height // 8)
        if pad + legend_width <= out_cols:  # images a few pixels wide have no room for it
            canvas[legend_top : legend_top + size, pad : pad + legend_width] = legend(legend_width, size)

    _draw_boxes(image, findings, scale, size)
    return Overlay(canvas, layout, text, rgbx)


def _draw_boxes(image: np.ndarray, findings: Findings, scale: float, size: int) -> None:
    """Box outlines (amber, framed in black) and their score labels, in place on the image area."""
    if not findings.boxes:
        return
    rows, cols = image.shape[:2]
    width = max(2, round(LINE_FRACTION * max(rows, cols)))
    rects = []
    for box in findings.boxes:
        x0 = min(max(0, round(box.x * scale)), cols - 1)
        y0 = min(max(0, round(box.y * scale)), rows - 1)
        x1 = min(max(x0, round(box.x2 * scale) - 1), cols - 1)
        y1 = min(max(y0, round(box.y2 * scale) - 1), rows - 1)
        rects.append((x0, y0, x1, y1))
    for x0, y0, x1, y1 in rects:
        for strip in _outline_strips((x0 - 1, y0 - 1, x1 + 1, y1 + 1), width + 2):
            _fill(image, strip, BOX_FRAME_COLOUR)
    for rect in rects:
        for strip in _outline_strips(rect, width):
            _fill(image, strip, BOX_COLOUR)

    label_size = max(MIN_FONT_SIZE, round(LABEL_FRACTION * size))
    stroke = max(1, math.ceil(label_size / 12))
    masks = [label_masks(f"opacity {box.score:.2f}", label_size, stroke) for box in findings.boxes]
    outer = [(x0 - 1, y0 - 1, x1 + 1, y1 + 1) for x0, y0, x1, y1 in rects]
    sizes = [(m[0].shape[1], m[0].shape[0]) for m in masks]
    corners = place_labels(outer, sizes, (rows, cols), width, width + 2)
    for m, (x, y) in zip(masks, corners, strict=True):
        stamp_label(image, m, y, x, BOX_COLOUR)


__all__ = [
    "BANNER_TEXT",
    "BOX_COLOUR",
    "HEATMAP_CUTOFF",
    "MAX_SIDE",
    "Overlay",
    "OverlayLayout",
    "OverlayText",
    "output_shape",
    "overlay_text",
    "place_labels",
    "render_overlay",
    "shows_heatmap",
]
