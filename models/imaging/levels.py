"""The percentile window of integer pixel data from a histogram of its stored values.

An 8- or 16-bit image holds at most 65,536 distinct stored values, and its Modality LUT is a
function of the stored value alone, so the statistics of the percentile window
(:func:`models.imaging.dicom_image.percentile_window`: the constant border, the order statistics
of a sample) need only how often each stored value occurs: ``np.bincount`` on the stored integers
instead of ``np.partition`` on a float copy of the image, about 8x cheaper on a 1024 x 1024 image.
The limits found are bit for bit those of the per-pixel computation: the same float32 values (the
Modality LUT applied to each stored level, as it is applied to the image), the same order
statistics and the same interpolation as ``np.percentile`` (tests/test_dicom_image_levels.py
compares them on 8-, 12-, 16-bit and signed data). Anything else (float or 32-bit data, a
non-monotonic Modality LUT, a flat image) returns None and is left to the per-pixel code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: integer sample types the tables handle (what pydicom returns for Bits Allocated 8 and 16)
_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int8), np.dtype(np.int16))


@dataclass(frozen=True, eq=False)
class StoredLevels:
    """The stored values ``first .. first + count - 1`` of an image: its minimum to its maximum."""

    image: np.ndarray
    first: int
    last: int

    @classmethod
    def of(cls, image: np.ndarray) -> StoredLevels | None:
        """The level range of a 2-D 8/16-bit integer ``image``, or None for other data."""
        if image.ndim != 2 or image.dtype not in _DTYPES or image.size == 0:
            return None
        return cls(image, int(image.min()), int(image.max()))

    @property
    def values(self) -> np.ndarray:
        """Every level from the minimum to the maximum, in the image's dtype (the table's input)."""
        return np.arange(self.first, self.last + 1, dtype=self.image.dtype)

    def histogram(self, sample: np.ndarray) -> np.ndarray:
        """Occurrences of each level (``first .. last``) in ``sample`` (values of this image)."""
        flat = sample.reshape(-1)
        n = self.last - self.first + 1
        if self.image.dtype == np.uint8 and flat.size:
            return _uint8_counts(flat)[self.first : self.last + 1]
        if self.image.dtype.kind == "u":
            return np.bincount(flat, minlength=self.last + 1)[self.first :]
        return np.bincount(flat.astype(np.int64) - self.first, minlength=n)


def _uint8_counts(flat: np.ndarray) -> np.ndarray:
    """``np.bincount(flat, minlength=256)`` of 8-bit values, by Pillow's histogram of an "L" image:
    the same counts without bincount's conversion of every value to a 64-bit index (~2.5x cheaper)."""
    from PIL import Image

    row = np.ascontiguousarray(flat, dtype=np.uint8).reshape(1, -1)
    return np.array(Image.fromarray(row).histogram(), dtype=np.intp)


def _monotonic(table: np.ndarray) -> int:
    """+1 when ``table`` never decreases, -1 when it never increases (and is not constant), else 0."""
    d = np.diff(table)
    if (d >= 0).all():
        return 1
    if (d <= 0).all():
        return -1
    return 0


def content_region(mask_of_corner_value: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of an image that are not entirely its corner value (``mask_of_corner_value``
    marks the pixels equal to it): the image without a constant border."""
    keep_r = np.flatnonzero(~mask_of_corner_value.all(axis=1))
    keep_c = np.flatnonzero(~mask_of_corner_value.all(axis=0))
    if keep_r.size == 0 or keep_c.size == 0:
        return slice(None), slice(None)
    return slice(int(keep_r[0]), int(keep_r[-1]) + 1), slice(int(keep_c[0]), int(keep_c[-1]) + 1)


def statistics_sample(
    image: np.ndarray, region: tuple[slice, slice], exclude: np.ndarray | None, sample_pixels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(content, sample, keep)`` of the percentile window: the image within ``region`` (without
    its constant border), every ``step``-th pixel of it in both directions (at most about
    ``sample_pixels``) less the ``exclude`` mask when that leaves any, and the mask of the content's
    pixels not excluded (None when nothing or everything is excluded)."""
    rs, cs = region
    content = image[rs, cs]
    step = max(1, math.ceil(math.sqrt(content.size / sample_pixels)))
    sample = content[::step, ::step]
    keep = None if exclude is None else ~exclude[rs, cs]
    if keep is not None and not keep.any():
        keep = None
    if keep is not None and keep[::step, ::step].any():
        sample = sample[keep[::step, ::step]]
    return content, sample, keep


def percentile_limits(
    levels: StoredLevels,
    table: np.ndarray,
    percentiles: tuple[float, float],
    sample_pixels: int,
    exclude: np.ndarray | None = None,
) -> tuple[float, float] | None:
    """``(low, high)``: what ``dicom_image.percentile_window`` finds on the float image
    ``table[image - first]`` (float32), from the stored values: the image without its constant
    border and the ``exclude`` mask, sampled every ``step`` pixels, its percentiles interpolated as
    ``np.percentile`` does. None when ``table`` is not monotonic or the window is empty (high <= low:
    the caller's per-pixel code handles those)."""
    direction = _monotonic(table)
    if direction == 0 or not np.isfinite(table).all():
        return None
    image = levels.image
    corner = float(table[int(image[0, 0]) - levels.first])
    if corner in (float(table[0]), float(table[-1])):  # the image's minimum or maximum
        same = np.flatnonzero(table == table[int(image[0, 0]) - levels.first]) + levels.first
        lo, hi = int(same[0]), int(same[-1])  # contiguous: the table is monotonic
        eq = (image == lo) if lo == hi else ((image >= lo) & (image <= hi))
        rs, cs = content_region(eq)
    else:
        rs, cs = slice(None), slice(None)
    _, sample, _ = statistics_sample(image, (rs, cs), exclude, sample_pixels)
    counts = levels.histogram(sample)
    values = table if direction > 0 else table[::-1]
    if direction < 0:
        counts = counts[::-1]
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    # np.percentile's "linear" method: virtual index (n - 1) * q, interpolated between its neighbours
    virtual = (n - 1) * np.true_divide(percentiles, 100)
    out = []
    for v in virtual:
        if v >= n - 1:
            out.append(float(values[np.searchsorted(cumulative, n - 1, side="right")]))
            continue
        below = math.floor(v)
        pair = values[np.searchsorted(cumulative, [below, below + 1], side="right")].astype(np.float32)
        # the same interpolation as np.percentile's (np.quantile of the two neighbours at the fraction)
        out.append(float(np.quantile(pair, np.asarray([v - below], dtype=np.float64))[0]))
    low, high = out
    if high <= low:
        return None
    return low, high
