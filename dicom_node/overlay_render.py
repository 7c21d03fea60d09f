"""Draw the AI findings on a windowed greyscale CXR: boxes, scores, decision and a warning banner.

Pure image work (numpy + Pillow), no DICOM: :mod:`dicom_node.results_sc` wraps the result
in a Secondary Capture. The image is kept at the source resolution (downscaled, aspect
kept, only when a side exceeds :data:`MAX_SIDE`), so box coordinates map 1:1 (times the
scale) and the banner/panel are drawn *over* the image rather than added around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.findings import Findings

#: Longest side of the rendered overlay; larger sources are downscaled (aspect kept).
MAX_SIDE = 2048
BANNER_TEXT = "AI OUTPUT - NOT FOR PRIMARY DIAGNOSIS"
#: Box colour (amber): visible on black lungs and on white bone alike.
BOX_COLOUR = (255, 196, 0)
WARNING_COLOUR = (255, 80, 80)
TEXT_COLOUR = (255, 255, 255)
POSITIVE_COLOUR = (255, 128, 64)
NEGATIVE_COLOUR = (120, 220, 120)
#: Font size as a fraction of the rendered image height.
FONT_FRACTION = 0.025
#: Box line width as a fraction of the longest side.
LINE_FRACTION = 0.003
PANEL_ALPHA = 170


@dataclass(frozen=True)
class OverlayText:
    """The text lines of the overlay (kept separate so callers and tests can read them)."""

    banner: tuple[str, ...]
    summary: tuple[str, ...]


def output_shape(rows: int, columns: int, max_side: int = MAX_SIDE) -> tuple[int, int, float]:
    """(rows, columns, scale) of the overlay for a ``rows`` x ``columns`` source."""
    if rows <= 0 or columns <= 0:
        raise ValueError(f"image size must be positive, got {rows!r} x {columns!r}")
    scale = min(1.0, max_side / max(rows, columns))
    return max(1, round(rows * scale)), max(1, round(columns * scale)), scale


def overlay_text(findings: Findings, models_label: str) -> OverlayText:
    """Banner and summary lines for ``findings`` (analysed ones only)."""
    if not findings.analysed or findings.probability is None or findings.threshold is None:
        raise ValueError(f"no overlay for a not-analysed image ({findings.sop_instance_uid})")
    p, threshold = findings.probability, findings.threshold
    decision = "POSITIVE" if findings.positive else "NEGATIVE"
    n = len(findings.boxes)
    meaning = findings.finding.meaning if findings.finding is not None else "finding"
    return OverlayText(
        banner=(BANNER_TEXT, f"Models: {models_label}"),
        summary=(
            f"{meaning} probability {p:.2f} (threshold {threshold:.2f}): {decision}",
            f"Lung opacity boxes: {n}" + ("" if n else " (none detected)"),
        ),
    )


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, int(size)))


def _fit_font(draw: ImageDraw.ImageDraw, lines: tuple[str, ...], size: int, max_width: float):
    """The largest font <= ``size`` for which every line fits in ``max_width`` pixels."""
    while True:
        font = _font(size)
        widest = max(draw.textlength(line, font=font) for line in lines)
        if widest <= max_width or size <= 8:
            return font, size
        size = max(8, math.floor(size * max_width / widest))


def render_overlay(
    pixels: np.ndarray,
    findings: Findings,
    *,
    models_label: str,
    max_side: int = MAX_SIDE,
) -> np.ndarray:
    """Render the overlay as an RGB uint8 array of shape (rows, columns, 3).

    ``pixels`` is the windowed source image, float in [0, 1], shape ``(findings.rows, findings.columns)``.
    """
    if pixels.ndim != 2 or pixels.shape != (findings.rows, findings.columns):
        raise ValueError(
            f"pixels shape {pixels.shape} does not match the findings image size "
            f"({findings.rows}, {findings.columns})"
        )
    text = overlay_text(findings, models_label)
    out_rows, out_cols, scale = output_shape(findings.rows, findings.columns, max_side)

    grey = Image.fromarray(np.clip(np.rint(np.nan_to_num(pixels) * 255.0), 0, 255).astype(np.uint8), mode="L")
    if (out_rows, out_cols) != grey.size[::-1]:
        grey = grey.resize((out_cols, out_rows), Image.Resampling.LANCZOS)
    canvas = grey.convert("RGB")

    font_size = max(10, round(FONT_FRACTION * out_rows))
    margin = max(4, font_size // 2)
    probe = ImageDraw.Draw(canvas)
    banner_font, banner_size = _fit_font(probe, text.banner, font_size, out_cols - 2 * margin)
    summary_font, summary_size = _fit_font(probe, text.summary, font_size, out_cols - 2 * margin)
    line_gap = max(2, font_size // 4)

    line_width = max(2, round(LINE_FRACTION * max(out_rows, out_cols)))
    rects = []
    for box in findings.boxes:
        x0 = min(max(0, round(box.x * scale)), out_cols - 1)
        y0 = min(max(0, round(box.y * scale)), out_rows - 1)
        x1 = min(max(x0, round(box.x2 * scale) - 1), out_cols - 1)
        y1 = min(max(y0, round(box.y2 * scale) - 1), out_rows - 1)
        rects.append((x0, y0, x1, y1))
    draw = ImageDraw.Draw(canvas)
    for rect in rects:
        draw.rectangle(rect, outline=BOX_COLOUR, width=line_width)

    # translucent panels over image and boxes, then text on top: the warning is never hidden
    banner_h = 2 * margin + len(text.banner) * (banner_size + line_gap)
    summary_h = 2 * margin + len(text.summary) * (summary_size + line_gap)
    panels = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    pdraw = ImageDraw.Draw(panels)
    pdraw.rectangle((0, 0, out_cols, banner_h), fill=(0, 0, 0, PANEL_ALPHA))
    pdraw.rectangle((0, out_rows - summary_h, out_cols, out_rows), fill=(0, 0, 0, PANEL_ALPHA))
    canvas = Image.alpha_composite(canvas.convert("RGBA"), panels).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    stroke = max(1, font_size // 12)

    y = margin
    for i, line in enumerate(text.banner):
        draw.text((margin, y), line, font=banner_font, fill=WARNING_COLOUR if i == 0 else TEXT_COLOUR,
                  stroke_width=stroke, stroke_fill=(0, 0, 0))
        y += banner_size + line_gap
    positive = bool(findings.positive)
    y = out_rows - summary_h + margin
    for i, line in enumerate(text.summary):
        colour = (POSITIVE_COLOUR if positive else NEGATIVE_COLOUR) if i == 0 else TEXT_COLOUR
        draw.text((margin, y), line, font=summary_font, fill=colour, stroke_width=stroke, stroke_fill=(0, 0, 0))
        y += summary_size + line_gap

    # score labels: above the box, else just inside it; kept out of the banner and summary panels
    label_font = _font(font_size)
    placed: list[tuple[int, int, int, int]] = []
    for box, (x0, y0, _x1, _y1) in zip(findings.boxes, rects, strict=True):
        label = f"opacity {box.score:.2f}"
        left, top, right, bottom = (round(v) for v in draw.textbbox((0, 0), label, font=label_font))
        tw, th = right - left + 4, bottom - top + 4
        ty = y0 - th - line_width
        if ty < banner_h:
            ty = max(y0, banner_h) + line_width + 1
        tx = min(x0, max(0, out_cols - tw - 1))
        for _ in range(len(placed)):  # step down past labels already placed (bounded)
            if not any(tx < px1 and px0 < tx + tw and ty < py1 and py0 < ty + th for px0, py0, px1, py1 in placed):
                break
            ty += th + 2
        ty = min(ty, out_rows - summary_h - th - 1)
        placed.append((tx, ty, tx + tw, ty + th))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=(0, 0, 0))
        draw.text((tx + 2 - left, ty + 2 - top), label, font=label_font, fill=BOX_COLOUR)
    return np.asarray(canvas, dtype=np.uint8).copy()
