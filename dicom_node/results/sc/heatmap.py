"""The classifier's heatmap blended over the rendered image: smooth, coloured, transparent where low.

Pure numpy, no plotting library at run time:

- the coarse grid (e.g. 4 x 4 or 6 x 6 cells) is upsampled with separable cubic convolution
  (Keys, a = -0.5; the grid values sit at the cell centres, the edge cells are extended to the
  region's border), so no cell edges show;
- the colour is a turbo-like rainbow (:data:`COLOUR_LUT`, a 256-entry table computed once from a
  published polynomial fit of Google's Turbo colour map): cyan-green for weak, red for strong;
- the opacity grows linearly from 0 at :data:`HEATMAP_CUTOFF` to :data:`HEATMAP_MAX_ALPHA` at the
  map's peak, so values below the cut-off leave the image untouched and the anatomy stays
  readable through the strongest colour.

The interpolation is exact on a grid of at most 128 x 128 samples; Pillow resamples it
(bilinear), applies both tables and pastes the colour with its opacity onto the image's uint8
pixels, in C, only over the rectangle where the map is above the cut-off.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

from dicom_node.results.sc.pillow_array import to_array

#: Heatmap values (in [0, 1], 1 = the map's peak) below this leave the image untouched.
HEATMAP_CUTOFF = 0.25
#: Opacity of the colour at the map's peak (the anatomy still shows through at 1 - this).
HEATMAP_MAX_ALPHA = 0.5
#: Part of the turbo colour map used for heatmap values 0 .. 1.
TURBO_RANGE = (0.1, 0.9)

# Turbo colour map, polynomial approximation (Ruofei Du's fit of Google's Turbo, Apache-2.0):
# channel(x) = sum_k c_k x^k, k = 0..5, x in [0, 1].
_TURBO_COEFFS = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ],
    dtype=np.float64,
)


def _turbo_lut() -> np.ndarray:
    # the map's [0, 1] spans turbo's [0.1, 0.9]: visible values (from the cut-off) run from cyan
    # to red, without turbo's near-black ends that would darken the anatomy under the colour
    x = TURBO_RANGE[0] + (TURBO_RANGE[1] - TURBO_RANGE[0]) * np.linspace(0.0, 1.0, 256)
    powers = np.stack([x**k for k in range(6)], axis=1)  # (256, 6)
    rgb = np.clip(powers @ _TURBO_COEFFS.T, 0.0, 1.0)
    out = np.rint(rgb * 255.0).astype(np.uint8)
    out.setflags(write=False)
    return out


def _alpha_lut() -> np.ndarray:
    """Opacity per 8-bit heatmap value (uint8: 0 = transparent, 255 = opaque)."""
    v = np.arange(256) / 255.0
    ramp = np.clip((v - HEATMAP_CUTOFF) / (1.0 - HEATMAP_CUTOFF), 0.0, 1.0)
    out = np.rint(255.0 * HEATMAP_MAX_ALPHA * ramp).astype(np.uint8)
    out.setflags(write=False)
    return out


#: RGB (uint8) of each 8-bit heatmap value.
COLOUR_LUT = _turbo_lut()
#: Opacity (uint8, out of 255) of each 8-bit heatmap value.
ALPHA_LUT = _alpha_lut()
#: Smallest 8-bit heatmap value with a non-zero opacity.
_FIRST_VISIBLE = int(np.flatnonzero(ALPHA_LUT)[0])
#: The tables as Pillow takes them (``Image.point``, ``Image.putpalette``).
_ALPHA_TABLE = [int(a) for a in ALPHA_LUT]
_PALETTE = COLOUR_LUT.tobytes()
#: Samples per side of the region at which the cubic interpolation is computed exactly (see blend_heatmap).
SAMPLES_PER_SIDE = 128


def _cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``t`` (>= 0)."""
    t = np.abs(t)
    t2, t3 = t * t, t * t * t
    near = (a + 2.0) * t3 - (a + 3.0) * t2 + 1.0
    far = a * t3 - 5.0 * a * t2 + 8.0 * a * t - 4.0 * a
    return np.where(t <= 1.0, near, np.where(t < 2.0, far, 0.0))


def interpolation_matrix(positions: np.ndarray, n_cells: int) -> np.ndarray:
    """(len(positions), n_cells) float32 weights of cubic interpolation at ``positions``.

    ``positions`` are in cell units along one axis of the grid, 0.0 being the centre of the
    first cell (so -0.5 is the grid's outer edge); out-of-grid taps repeat the edge cell.
    Each row sums to 1.
    """
    if n_cells < 1:
        raise ValueError(f"a grid axis needs at least one cell, got {n_cells!r}")
    pos = np.asarray(positions, dtype=np.float64)
    base = np.floor(pos).astype(np.int64)
    weights = np.zeros((pos.size, n_cells), dtype=np.float64)
    rows = np.arange(pos.size)
    for offset in (-1, 0, 1, 2):
        taps = base + offset
        w = _cubic(pos - taps)
        np.add.at(weights, (rows, np.clip(taps, 0, n_cells - 1)), w)
    return weights.astype(np.float32)


def _pixel_range(start_px: float, length_px: float, limit: int) -> tuple[int, int]:
    """Pixels ``[lo, hi)`` whose centres lie in ``[start_px, start_px + length_px)``, clipped to ``[0, limit)``."""
    lo = max(0, math.ceil(start_px - 0.5))
    hi = min(limit, math.ceil(start_px + length_px - 0.5))
    return lo, max(lo, hi)


def _interpolate(v: np.ndarray, row_pos: np.ndarray, col_pos: np.ndarray) -> np.ndarray:
    """Cubic interpolation of the grid ``v`` at rows ``row_pos`` x columns ``col_pos`` (cell units), in [0, 1]."""
    return _weighted(v, interpolation_matrix(row_pos, v.shape[0]), interpolation_matrix(col_pos, v.shape[1]))


def _weighted(v: np.ndarray, rows_matrix: np.ndarray, cols_matrix: np.ndarray) -> np.ndarray:
    """The grid ``v`` interpolated with these :func:`interpolation_matrix` weights, clipped to [0, 1]."""
    # einsum, not @: OpenBLAS would wake its threads for a product this thin (slower, and busy cores)
    grid = np.einsum("ik,jk->ij", np.einsum("ik,kl->il", rows_matrix, v), cols_matrix)
    np.clip(grid, 0.0, 1.0, out=grid)  # cubic interpolation overshoots slightly near steep cells
    return grid


def _check_map(values: np.ndarray, region: tuple[float, float, float, float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    if v.ndim != 2 or min(v.shape) < 1:
        raise ValueError(f"heatmap values must be a non-empty 2-D array, got shape {v.shape!r}")
    if not (region[2] > 0 and region[3] > 0):
        raise ValueError(f"heatmap region must have a positive size, got {region!r}")
    return v


def upsample(
    values: np.ndarray, region: tuple[float, float, float, float], shape: tuple[int, int]
) -> tuple[int, int, np.ndarray]:
    """The map ``values`` spread smoothly over ``region`` = (x, y, width, height) of an image of ``shape``.

    ``region`` is in the image's continuous pixel coordinates (origin at the top-left corner of
    the top-left pixel). Returns ``(top, left, grid)``: ``grid`` (float32, in [0, 1]) covers the
    image pixels ``[top:top + grid.shape[0], left:left + grid.shape[1]]`` whose centres lie in the
    region (an empty grid when the region misses the image). Exact at every pixel; the overlay
    itself samples it more sparsely (see :func:`blend_heatmap`).
    """
    v = _check_map(values, region)
    x, y, width, height = region
    top, bottom = _pixel_range(y, height, shape[0])
    left, right = _pixel_range(x, width, shape[1])
    if bottom <= top or right <= left:
        return top, left, np.zeros((0, 0), dtype=np.float32)
    row_pos = (np.arange(top, bottom) + 0.5 - y) / height * v.shape[0] - 0.5
    col_pos = (np.arange(left, right) + 0.5 - x) / width * v.shape[1] - 0.5
    return top, left, _interpolate(v, row_pos, col_pos)


def _sample_span(first: int, last: int, samples: int, pixels: int) -> tuple[int, int]:
    """Pixels (of ``pixels``) that bilinear resampling of ``samples`` samples can draw from samples
    ``first .. last``: the pixels whose sample coordinate lies in ``(first - 1, last + 1)``."""
    lo = math.floor((first - 0.5) * pixels / samples - 0.5)
    hi = math.ceil((last + 1.5) * pixels / samples - 0.5) + 1
    return max(0, lo), min(pixels, hi)


def _blend_table() -> np.ndarray:
    """(65536,) uint32 RGBX: the colour of heatmap index ``i`` pasted with its opacity over grey ``g``,
    at ``i << 8 | g``, rounded as Pillow's paste with a mask does (``DIV255(g * (255 - a) + c * a)``)."""
    grey = np.arange(256, dtype=np.uint32)[None, :, None]
    a = ALPHA_LUT.astype(np.uint32)[:, None, None]
    mixed = grey * (255 - a) + COLOUR_LUT.astype(np.uint32)[:, None, :] * a + 128
    rgb = ((mixed >> 8) + mixed) >> 8  # (256 index, 256 grey, 3)
    out = (rgb[..., 0] | rgb[..., 1] << 8 | rgb[..., 2] << 16).reshape(-1).astype(np.uint32)
    out.setflags(write=False)
    return out


#: heatmap over a grey pixel, by ``index << 8 | grey``, as little-endian RGBX words (R in the low byte)
_BLEND_OVER_GREY = _blend_table()


@functools.lru_cache(maxsize=64)
def _sample_weights(
    first: int, count: int, samples: int, start: float, length: float, cells: int
) -> np.ndarray:
    """:func:`interpolation_matrix` of ``samples`` samples along ``count`` pixels from pixel ``first``
    (sample k stands for the centre of the k-th of ``samples`` equal blocks of them) of a map of
    ``cells`` cells over ``length`` pixels from ``start``. Cached (read-only): the region and grid of
    a model's maps are usually the same from image to image."""
    positions = (first + (np.arange(samples) + 0.5) * count / samples - start) / length * cells - 0.5
    weights = interpolation_matrix(positions, cells)
    weights.setflags(write=False)
    return weights


def _visible_index(
    values: np.ndarray, region: tuple[float, float, float, float], shape: tuple[int, int]
) -> tuple[int, int, Image.Image] | None:
    """``(top, left, index)``: the 8-bit heatmap (an "L" image) over the part of an image of
    ``shape`` where it is visible, and where that part starts; None where nothing is visible."""
    v = _check_map(values, region)
    x, y, width, height = region
    top, bottom = _pixel_range(y, height, shape[0])
    left, right = _pixel_range(x, width, shape[1])
    h, w = bottom - top, right - left
    if h <= 0 or w <= 0:
        return None
    hs, ws = min(h, SAMPLES_PER_SIDE), min(w, SAMPLES_PER_SIDE)
    rows_matrix = _sample_weights(top, h, hs, y, height, v.shape[0])
    cols_matrix = _sample_weights(left, w, ws, x, width, v.shape[1])
    grid = _weighted(v, rows_matrix, cols_matrix)
    samples = np.empty(grid.shape, dtype=np.uint8)
    np.copyto(samples, grid * 255.0 + 0.5, casting="unsafe")
    visible = samples >= _FIRST_VISIBLE  # alpha > 0 (the opacity table only grows)
    rows = np.flatnonzero(visible.any(axis=1))
    if rows.size == 0:  # bilinear values never exceed their samples
        return None
    cols = np.flatnonzero(visible.any(axis=0))
    r0, r1 = _sample_span(int(rows[0]), int(rows[-1]), hs, h)
    c0, c1 = _sample_span(int(cols[0]), int(cols[-1]), ws, w)
    index = Image.fromarray(samples)
    if (hs, ws) != (h, w):
        box = (c0 * ws / w, r0 * hs / h, c1 * ws / w, r1 * hs / h)
        index = index.resize((c1 - c0, r1 - r0), Image.Resampling.BILINEAR, box=box)
    else:
        index = index.crop((c0, r0, c1, r1))
    return top + r0, left + c0, index


def grey_of_words(rgbx: np.ndarray) -> np.ndarray:
    """The R byte of each little-endian RGBX word of ``rgbx`` ((rows, columns) uint32): a (rows, columns)
    uint8 view, the grey level of a grey image."""
    if rgbx.ndim != 2 or rgbx.dtype != np.uint32 or rgbx.strides[1] != 4:
        raise ValueError(
            f"need (rows, columns) uint32 words, contiguous along rows, got {rgbx.shape} {rgbx.dtype}"
        )
    return rgbx.view(np.uint8)[:, ::4]


#: pixels of the heatmap's rectangle per block of :func:`blend_heatmap_over_grey` (keys stay in the L2 cache)
_BLEND_BLOCK = 1 << 16


def blend_heatmap_over_grey(
    rgbx: np.ndarray, grey: np.ndarray, values: np.ndarray, region: tuple[float, float, float, float]
) -> int:
    """:func:`blend_heatmap` for an image that is still grey: ``rgbx`` ((rows, columns) uint32,
    little-endian RGBX words, contiguous along rows) holds ``grey`` ((rows, columns) uint8, e.g.
    :func:`grey_of_words` of ``rgbx``) in R, G and B; the heatmap is written into it in place, pixel
    for pixel what :func:`blend_heatmap` makes of that grey image, by one lookup per pixel in a 256 x
    256 table (heatmap index, grey) instead of Pillow's resampled colour image pasted through its
    opacity mask. Block by block of rows, each word's G byte is replaced by the heatmap index, so its
    low 16 bits are the key (index << 8 | grey) the table is read at. Returns the number of pixels coloured."""
    if rgbx.ndim != 2 or rgbx.dtype != np.uint32 or grey.shape != rgbx.shape or grey.dtype != np.uint8:
        raise ValueError(
            f"need (rows, columns) uint32 RGBX and uint8 grey, got {rgbx.shape} {rgbx.dtype}, {grey.shape} {grey.dtype}"
        )
    if rgbx.strides[1] != 4:
        raise ValueError(f"the RGBX words must be contiguous along rows, got strides {rgbx.strides}")
    found = _visible_index(values, region, grey.shape)
    if found is None:
        return 0
    top, left, image = found
    index = to_array(image)
    h, w = index.shape
    target = rgbx[top : top + h, left : left + w]
    g_bytes = target.view(np.uint8)[:, 1::4]
    keys = target.view(np.uint16)[:, 0::2]  # R | G << 8 of each word
    step = max(1, _BLEND_BLOCK // w)
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        g_bytes[r0:r1] = index[r0:r1]
        # keys < 65536 = the table's length: "wrap" never wraps (and is faster than "clip")
        np.take(_BLEND_OVER_GREY, keys[r0:r1], out=target[r0:r1], mode="wrap")
    return int(np.count_nonzero(index >= _FIRST_VISIBLE))


def blend_heatmap(rgb: np.ndarray, values: np.ndarray, region: tuple[float, float, float, float]) -> int:
    """Blend the heatmap ``values`` over ``region`` of the RGB uint8 image ``rgb``, in place.

    The cubic interpolation is computed exactly on at most :data:`SAMPLES_PER_SIDE` samples per
    side of the region's pixels and spread over the pixels by Pillow's bilinear resampling (a
    grid cell covers 100+ pixels of a CXR, so the two differ by less than one 8-bit level).
    Pixels where the map is below :data:`HEATMAP_CUTOFF` keep their exact value. Returns the
    number of pixels coloured (0 for a map with nothing above the cut-off).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be a (rows, columns, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    found = _visible_index(values, region, rgb.shape[:2])
    if found is None:
        return 0
    top, left, index = found
    alpha = index.point(_ALPHA_TABLE)
    colour = index.copy()
    colour.putpalette(_PALETTE)  # L -> P: the colour table applied in C by convert()
    target = rgb[top : top + index.height, left : left + index.width]
    base = Image.fromarray(np.ascontiguousarray(target))
    base.paste(colour.convert("RGB"), (0, 0), alpha)
    target[...] = np.asarray(base)
    return int(np.count_nonzero(np.asarray(alpha)))


def legend(width: int, height: int, background: int = 128) -> np.ndarray:
    """A (height, width, 3) uint8 colour bar: the map from the cut-off (left) to the peak (right),
    blended over a grey of level ``background`` as it looks over mid-grey anatomy."""
    if width < 1 or height < 1:
        raise ValueError(f"legend size must be positive, got {width!r} x {height!r}")
    v = HEATMAP_CUTOFF + (1.0 - HEATMAP_CUTOFF) * (np.arange(width) + 0.5) / width
    index = np.rint(v * 255.0).astype(np.uint8)
    a = ALPHA_LUT[index][:, None].astype(np.uint32)
    row = (background * (255 - a) + COLOUR_LUT[index].astype(np.uint32) * a + 127) // 255
    return np.broadcast_to(row.astype(np.uint8)[None], (height, width, 3)).copy()
