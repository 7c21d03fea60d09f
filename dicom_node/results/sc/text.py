"""Text of the SC overlay, drawn with Pillow: fonts, word wrapping, the text bands and box labels.

Everything here depends only on its arguments and is cached (``functools.lru_cache``): the header
band is the same for every image of a model set and width, so a result process renders it once.
Returned arrays are read-only; callers copy them into their canvas.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dicom_node.results.sc import heatmap

Colour = tuple[int, int, int]

#: Background of the text bands and colour of the rule that separates them from the image.
BAND_COLOUR: Colour = (0, 0, 0)
RULE_COLOUR: Colour = (110, 110, 110)
#: Smallest font size used (pixels); narrower images get wrapped (or clipped) text rather than smaller.
MIN_FONT_SIZE = 10


@dataclass(frozen=True)
class TextLine:
    """One logical line of a band; wrapped onto several rows when it is wider than the band."""

    text: str
    colour: Colour
    #: pixels left free at the start of every row of this line (e.g. for a colour legend)
    indent: int = 0

    def __post_init__(self) -> None:
        if not self.text:
            raise ValueError("a TextLine needs text")
        if len(self.colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in self.colour):
            raise ValueError(f"colour must be three ints in 0..255, got {self.colour!r}")
        if self.indent < 0:
            raise ValueError(f"indent must be >= 0, got {self.indent!r}")


@dataclass(frozen=True, eq=False)
class Band:
    """A rendered band: ``words`` (rows, width) uint32, read-only, its pixels as little-endian RGBX words
    (R in the low byte, X = 0: what the overlay canvas holds); ``line_tops[i]``: the top row of the
    first text row of line ``i``; ``row_height``: pixels per text row."""

    words: np.ndarray
    line_tops: tuple[int, ...]
    row_height: int

    def __post_init__(self) -> None:
        if self.words.ndim != 2 or self.words.dtype != np.uint32:
            raise ValueError(
                f"band words must be (rows, width) uint32, got {self.words.shape} {self.words.dtype}"
            )

    @property
    def pixels(self) -> np.ndarray:
        """(rows, width, 3) uint8 RGB view of :attr:`words`."""
        rows, width = self.words.shape
        return self.words.view(np.uint8).reshape(rows, width, 4)[:, :, :3]


@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font (Aileron, FreeType) at ``size`` pixels (at least :data:`MIN_FONT_SIZE`)."""
    return ImageFont.load_default(size=max(MIN_FONT_SIZE, int(size)))


def row_height(size: int) -> int:
    """Pixels per text row at font ``size``: ascent + descent + a small gap."""
    f = font(size)
    ascent, descent = f.getmetrics() if isinstance(f, ImageFont.FreeTypeFont) else (size, size // 4)
    return int(ascent + descent + max(2, size // 5))


def margin(size: int) -> int:
    """Space around the text of a band (pixels) at font ``size``."""
    return max(4, size // 2)


@functools.lru_cache(maxsize=1024)
def text_length(text: str, size: int) -> float:
    """Advance width (pixels) of ``text`` at font ``size``, measured once: wrapping a row and rendering
    it measure the same string."""
    return float(font(size).getlength(text))


@functools.lru_cache(maxsize=256)
def wrap(text: str, size: int, width: float) -> tuple[str, ...]:
    """``text`` broken at spaces into rows no wider than ``width`` pixels (a longer word gets its own row)."""
    if text_length(text, size) <= width:  # the usual case: one measurement
        return (text,)
    rows: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and text_length(candidate, size) > width:
            rows.append(current)
            current = word
        else:
            current = candidate
    rows.append(current)
    return tuple(rows)


@functools.lru_cache(maxsize=256)
def text_mask(text: str, size: int) -> np.ndarray:
    """Coverage (uint8, ``row_height(size)`` rows, as wide as the text) of one row of text at ``size``.

    Cached: the rows that repeat from image to image (warning, models, gating rule, heatmap
    caption, most decision lines) are rendered once per process.
    """
    f = font(size)
    width = max(1, int(np.ceil(text_length(text, size))) + 1)
    image = Image.new("L", (width, row_height(size)), 0)
    ImageDraw.Draw(image).text((0, 0), text, font=f, fill=255)
    mask = np.asarray(image, dtype=np.uint8).copy()
    mask.setflags(write=False)
    return mask


def _word(colour: Colour) -> int:
    """``colour`` as a little-endian RGBX word."""
    r, g, b = colour
    return r | g << 8 | b << 16


@functools.lru_cache(maxsize=16)
def _shades(colour: Colour) -> np.ndarray:
    """(256,) uint32 RGBX words: ``colour`` over the band's background at each text coverage 0..255."""
    m = np.arange(256, dtype=np.uint32)[:, None]
    bg, fg = np.asarray(BAND_COLOUR, dtype=np.uint32), np.asarray(colour, dtype=np.uint32)
    rgb = (bg * (255 - m) + fg * m + 127) // 255
    words = rgb[:, 0] | rgb[:, 1] << 8 | rgb[:, 2] << 16
    words.setflags(write=False)
    return words


@functools.lru_cache(maxsize=8)
def render_band(lines: tuple[TextLine, ...], width: int, size: int, rule_at_top: bool) -> Band:
    """Render ``lines`` left-aligned on a black band ``width`` pixels wide, wrapped to fit.

    A grey rule along the edge that touches the image (top for a band below it, bottom for a
    band above it) shows where the image ends.
    """
    if width < 1 or not lines:
        raise ValueError(
            f"a band needs a positive width and at least one line, got {width!r}, {len(lines)} lines"
        )
    pad, step = margin(size), row_height(size)
    rule = max(1, size // 12)
    wrapped = [wrap(line.text, size, width - 2 * pad - line.indent) for line in lines]
    height = 2 * pad + rule + step * sum(len(w) for w in wrapped)
    words = np.full((height, width), _word(BAND_COLOUR), dtype=np.uint32)
    y = pad + (rule if rule_at_top else 0)
    tops = []
    for line, rows in zip(lines, wrapped, strict=True):
        tops.append(y)
        shades = _shades(line.colour)
        for row in rows:
            x = pad + line.indent
            mask = text_mask(row, size)[:, : max(0, width - x)]
            np.take(shades, mask, out=words[y : y + step, x : x + mask.shape[1]])
            y += step
    rule_y = 0 if rule_at_top else height - rule
    words[rule_y : rule_y + rule] = _word(RULE_COLOUR)
    words.setflags(write=False)
    return Band(words, tuple(tops), step)


@functools.lru_cache(maxsize=256)  # box labels differ only in a 2-decimal score: ~100 per deployment
def label_masks(text: str, size: int, stroke: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage masks (uint8, same shape) of ``text``: its dark outline (``stroke`` pixels wide) and its fill.

    The outline is the fill dilated by ``stroke`` pixels (a square neighbourhood): one glyph
    rendering instead of FreeType's second, stroked one.
    """
    if not text or stroke < 0:
        raise ValueError(f"a label needs text and a stroke >= 0, got {text!r}, {stroke!r}")
    f = font(size)
    left, top, right, bottom = (int(v) for v in f.getbbox(text))
    image = Image.new("L", (right - left + 2 * stroke, bottom - top + 2 * stroke), 0)
    ImageDraw.Draw(image).text((stroke - left, stroke - top), text, font=f, fill=255)
    fill = np.asarray(image, dtype=np.uint8).copy()
    outline = fill.copy()
    h, w = fill.shape
    for dy in range(-stroke, stroke + 1):
        for dx in range(-stroke, stroke + 1):
            if dy or dx:
                dst = outline[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)]
                np.maximum(dst, fill[max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)], out=dst)
    for m in (outline, fill):
        m.setflags(write=False)
    return outline, fill


def stamp_label(
    rgb: np.ndarray, masks: tuple[np.ndarray, np.ndarray], top: int, left: int, colour: Colour
) -> None:
    """Draw a label (see :func:`label_masks`) into ``rgb`` at (``top``, ``left``), in place: black outline,
    ``colour`` fill, nothing else of the image covered. Parts outside ``rgb`` are dropped."""
    outline, fill = masks
    h, w = outline.shape
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(rgb.shape[0], top + h), min(rgb.shape[1], left + w)
    if r1 <= r0 or c1 <= c0:
        return
    o = outline[r0 - top : r1 - top, c0 - left : c1 - left, None].astype(np.float32) / 255.0
    a = fill[r0 - top : r1 - top, c0 - left : c1 - left, None].astype(np.float32) / 255.0
    region = rgb[r0:r1, c0:c1].astype(np.float32) * (1.0 - o)
    region = region * (1.0 - a) + np.asarray(colour, dtype=np.float32) * a
    rgb[r0:r1, c0:c1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)


def clear_caches() -> None:
    """Forget every cached font, band, label and heatmap weight matrix (benchmarks measure the uncached
    cost with it)."""
    for cached in (font, text_length, wrap, text_mask, _shades, render_band, label_masks):
        cached.cache_clear()
    heatmap._sample_weights.cache_clear()  # the renderer's other cache: one call clears them all
