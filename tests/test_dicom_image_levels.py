"""models.imaging.levels: the percentile window from a histogram of the stored integers is bit for
bit the window of the per-pixel computation (np.percentile on the float image), whatever the bit
depth, sign, Modality LUT, constant border or padding; data it does not handle falls back."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from models.imaging import dicom_image, levels
from models.imaging.dicom_image import _stored_percentile_limits, load_source_image, percentile_window

try:  # tests/ is on sys.path under pytest's default "prepend" import mode (no tests/__init__.py)
    from dicom_factory import cxr_like_array, make_dataset
except ImportError:  # tests/ as a package, or the repository root on sys.path
    from tests.dicom_factory import cxr_like_array, make_dataset


def _modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(arr, ds)).astype(np.float32, copy=False)


def _both(arr: np.ndarray, ds: Dataset, padding: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(per-pixel window, window from the histogram) of ``arr``; the histogram must be used."""
    x = _modality(arr, ds)
    limits = _stored_percentile_limits(arr, ds, padding)
    assert limits is not None, "the histogram path was not taken"
    return percentile_window(x, exclude=padding), percentile_window(x, exclude=padding, limits=limits)


def _header(**attributes: object) -> Dataset:
    ds = Dataset()
    for k, v in attributes.items():
        setattr(ds, k, v)
    return ds


CASES = [
    # (bits stored, signed, rows, columns)
    (8, False, 301, 257),
    (8, True, 64, 99),
    (10, False, 1024, 1024),  # large enough to be sampled (step 2)
    (12, False, 301, 257),
    (12, True, 333, 211),
    (16, False, 257, 301),
    (16, True, 1100, 950),
]


@pytest.mark.parametrize(("bits", "signed", "rows", "columns"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_window_is_bit_identical(bits: int, signed: bool, rows: int, columns: int, seed: int) -> None:
    arr = cxr_like_array(rows, columns, bits_stored=bits, signed=signed, seed=seed, noise=0.05)
    slow, fast = _both(arr, _header())
    assert slow.dtype == fast.dtype == np.float32
    np.testing.assert_array_equal(slow, fast)


@pytest.mark.parametrize("slope", [1.0, 0.5, 2.25, -1.0, -0.37])
@pytest.mark.parametrize("intercept", [0.0, -1024.0, 7.5])
def test_rescaled_values_bit_identical(slope: float, intercept: float) -> None:
    arr = cxr_like_array(211, 307, bits_stored=12, seed=3, noise=0.05)
    slow, fast = _both(arr, _header(RescaleSlope=slope, RescaleIntercept=intercept))
    np.testing.assert_array_equal(slow, fast)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_constant_border_and_padding_bit_identical(dtype: type) -> None:
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -3000), min(info.max, 3000)
    arr = rng.integers(lo + 10, hi - 10, size=(1200, 900)).astype(dtype)
    arr[:37] = lo  # a border at the minimum: left out of the statistics
    arr[:, -20:] = lo
    slow, fast = _both(arr, _header())
    np.testing.assert_array_equal(slow, fast)
    arr[:37] = hi  # and at the maximum (the corner's value)
    arr[:, -20:] = hi
    slow, fast = _both(arr, _header())
    np.testing.assert_array_equal(slow, fast)
    padding = arr > hi - 200  # Pixel Padding Value range: excluded as well
    slow, fast = _both(arr, _header(), padding)
    np.testing.assert_array_equal(slow, fast)


def test_few_levels_and_ties_bit_identical() -> None:
    rng = np.random.default_rng(9)
    arr = rng.choice(np.array([3, 4, 200, 201, 202], dtype=np.uint8), size=(513, 515), p=[0.004, 0.3, 0.3, 0.39, 0.006])
    slow, fast = _both(arr, _header())
    np.testing.assert_array_equal(slow, fast)


def test_falls_back_for_data_it_does_not_handle() -> None:
    flat = np.full((64, 64), 17, dtype=np.uint16)
    assert _stored_percentile_limits(flat, _header(), None) is None  # flat: the per-pixel code decides
    assert levels.StoredLevels.of(np.zeros((8, 8), dtype=np.float32)) is None
    assert levels.StoredLevels.of(np.zeros((8, 8), dtype=np.int32)) is None
    table = np.array([0.0, 2.0, 1.0], dtype=np.float32)  # not monotonic
    stored = levels.StoredLevels.of(np.array([[0, 1], [2, 1]], dtype=np.uint8))
    assert stored is not None
    assert levels.percentile_limits(stored, table, (0.5, 99.5), 1_000_000) is None


@pytest.mark.parametrize(("bits", "signed"), [(8, False), (12, False), (16, True)])
def test_load_source_image_unchanged(bits: int, signed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoded image is the same with and without the histogram (the percentile fallback window)."""
    arr = cxr_like_array(400, 333, bits_stored=bits, signed=signed, seed=4, noise=0.05)
    ds = make_dataset(arr, bits_stored=bits, photometric="MONOCHROME1")
    fast = load_source_image(ds).pixels
    monkeypatch.setattr(dicom_image, "_stored_percentile_limits", lambda *a: None)
    slow = load_source_image(ds).pixels
    np.testing.assert_array_equal(slow, fast)


@pytest.mark.parametrize("shape", [(300, 257), (1, 5), (7,), (1_000_003,)])
def test_uint8_histogram_is_bincount(shape: tuple[int, ...]) -> None:
    """8-bit counts (Pillow's histogram) are np.bincount's, for 2-D, strided and 1-D (masked) samples."""
    rng = np.random.default_rng(3)
    image = rng.integers(17, 240, size=(64, 64), dtype=np.uint8)
    image[0, 0], image[-1, -1] = 17, 239
    levels_ = levels.StoredLevels.of(image)
    assert levels_ is not None and (levels_.first, levels_.last) == (17, 239)
    sample = rng.integers(17, 240, size=shape, dtype=np.uint8)
    for s in (sample, sample[..., ::3], sample[::2] if sample.ndim == 2 else sample[1::2]):
        got = levels_.histogram(s)
        want = np.bincount(s.reshape(-1), minlength=240)[17:]
        assert got.dtype == want.dtype and got.shape == want.shape == (223,)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("center", "width", "function"),
    [(2000.0, 3000.0, "LINEAR"), (1000.3, 1.0, "LINEAR"), (2047.5, 4095.0, "LINEAR_EXACT"),
     (10.0, 0.5, "LINEAR_EXACT"), (2000.0, 800.0, "SIGMOID")],
)  # fmt: skip
def test_window_in_place_is_the_same_as_a_new_array(center: float, width: float, function: str) -> None:
    x = cxr_like_array(300, 211, bits_stored=12, seed=6).astype(np.float32)
    want = dicom_image._window(x, center, width, function)
    mine = x.copy()
    got = dicom_image._window(mine, center, width, function, in_place=True)
    assert got.dtype == want.dtype == np.float32
    assert got.tobytes() == want.tobytes()
    np.testing.assert_array_equal(x, cxr_like_array(300, 211, bits_stored=12, seed=6).astype(np.float32))
