"""models.imaging.dicom_image: the grayscale display pipeline and its refusal of broken input."""

from __future__ import annotations

import copy
import pickle
import tracemalloc

import numpy as np
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space

from models.errors import ImageDecodeError, InferenceCoreError, UnsupportedImageError
from models.imaging.dicom_image import PERCENTILE_WINDOW, SourceImage, load_source_image

try:  # tests/ is on sys.path under pytest's default "prepend" import mode (no tests/__init__.py)
    from dicom_factory import cxr_like_array, make_dataset
except ImportError:  # tests/ as a package, or the repository root on sys.path
    from tests.dicom_factory import cxr_like_array, make_dataset


def _linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR, scaled to [0, 1] (written out independently of the module)."""
    x = x.astype(np.float64)
    y = (x - (c - 0.5)) / (w - 1) + 0.5
    y[x <= c - 0.5 - (w - 1) / 2] = 0.0
    y[x > c - 0.5 + (w - 1) / 2] = 1.0
    return y


# --------------------------------------------------------------------------- basics


def test_output_type_shape_range_and_uid() -> None:
    pixels = cxr_like_array(123, 77, bits_stored=12)
    ds = make_dataset(pixels, bits_stored=12)
    img = load_source_image(ds)
    assert isinstance(img, SourceImage)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (123, 77)
    assert (img.rows, img.columns) == (123, 77)
    assert img.sop_instance_uid == ds.SOPInstanceUID
    assert float(img.pixels.min()) == 0.0 and float(img.pixels.max()) == 1.0


def test_dataset_is_not_modified() -> None:
    ds = make_dataset(
        cxr_like_array(40, 50, bits_stored=12), bits_stored=12, WindowCenter=2000, WindowWidth=3000
    )
    before = copy.deepcopy(ds)
    load_source_image(ds)
    assert ds == before
    assert ds.PixelData == before.PixelData


# --------------------------------------------------------------------------- VOI / Modality LUT


def test_window_center_width_linear() -> None:
    pixels = cxr_like_array(64, 80, bits_stored=12, seed=3)
    c, w = 1800.0, 1200.0
    img = load_source_image(make_dataset(pixels, bits_stored=12, WindowCenter=c, WindowWidth=w))
    np.testing.assert_allclose(img.pixels, _linear_window(pixels, c, w), atol=1e-5)
    assert (img.pixels == 0).any() and (img.pixels == 1).any()  # the window really clips


def test_first_of_several_windows_is_used() -> None:
    pixels = cxr_like_array(64, 80, bits_stored=12, seed=3)
    ds = make_dataset(pixels, bits_stored=12, WindowCenter=[1500, 3000], WindowWidth=[1000, 200])
    np.testing.assert_allclose(load_source_image(ds).pixels, _linear_window(pixels, 1500, 1000), atol=1e-5)


def test_voi_lut_function_linear_exact_and_sigmoid() -> None:
    pixels = cxr_like_array(50, 60, bits_stored=12, seed=5)
    c, w = 2000.0, 1000.0
    x = pixels.astype(np.float64)
    exact = load_source_image(
        make_dataset(pixels, bits_stored=12, WindowCenter=c, WindowWidth=w, VOILUTFunction="LINEAR_EXACT")
    )
    np.testing.assert_allclose(exact.pixels, np.clip((x - c) / w + 0.5, 0, 1), atol=1e-5)
    sigmoid = load_source_image(
        make_dataset(pixels, bits_stored=12, WindowCenter=c, WindowWidth=w, VOILUTFunction="SIGMOID")
    )
    np.testing.assert_allclose(sigmoid.pixels, 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w)), atol=1e-5)
    assert not np.allclose(exact.pixels, sigmoid.pixels, atol=1e-3)


def test_voi_lut_sequence_is_applied() -> None:
    pixels = cxr_like_array(50, 60, bits_stored=12, seed=6)
    first = 100
    n = 3000
    lut = np.round(255.0 * np.sqrt(np.linspace(0.0, 1.0, n))).astype(np.uint16)  # a gamma curve, 8-bit output
    item = Dataset()
    item.LUTDescriptor = [n, first, 8]
    item.LUTData = lut.tolist()
    ds = make_dataset(pixels, bits_stored=12, WindowCenter=100, WindowWidth=10)  # LUT takes precedence
    ds.VOILUTSequence = [item]
    ds["VOILUTSequence"].value[0]["LUTData"].VR = "US"
    idx = np.clip(pixels.astype(np.int64) - first, 0, n - 1)
    expected = lut[idx] / 255.0
    np.testing.assert_allclose(load_source_image(ds).pixels, expected, atol=1e-5)


def test_rescale_slope_intercept_is_applied_before_the_window() -> None:
    pixels = cxr_like_array(50, 60, bits_stored=12, seed=7)
    slope, intercept = 2.0, -1000.0
    c, w = 2500.0, 4000.0  # in rescaled (output) units
    ds = make_dataset(
        pixels, bits_stored=12, RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=c, WindowWidth=w
    )
    expected = _linear_window(pixels * slope + intercept, c, w)
    np.testing.assert_allclose(load_source_image(ds).pixels, expected, atol=1e-5)
    no_rescale = make_dataset(pixels, bits_stored=12, WindowCenter=c, WindowWidth=w)
    assert np.abs(load_source_image(no_rescale).pixels - expected).mean() > 0.05


def test_modality_lut_sequence_is_applied() -> None:
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 256).astype(np.uint16)
    lut = (4095 - 16 * np.arange(256)).astype(np.uint16)  # an inverting modality LUT
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = lut.tolist()
    ds = make_dataset(pixels, bits_stored=8, WindowCenter=2048, WindowWidth=4096)
    ds.ModalityLUTSequence = [item]
    ds["ModalityLUTSequence"].value[0]["LUTData"].VR = "US"
    expected = _linear_window(lut[pixels], 2048, 4096)
    np.testing.assert_allclose(load_source_image(ds).pixels, expected, atol=1e-5)


def test_percentile_window_without_voi() -> None:
    pixels = cxr_like_array(200, 180, bits_stored=12, seed=8)
    img = load_source_image(make_dataset(pixels, bits_stored=12)).pixels
    lo, hi = np.percentile(pixels.astype(np.float64), PERCENTILE_WINDOW)
    np.testing.assert_allclose(img, np.clip((pixels - lo) / (hi - lo), 0, 1), atol=1e-5)
    # ~0.5 % of the pixels saturate at each end
    assert 0.001 < (img == 0).mean() < 0.02 and 0.001 < (img == 1).mean() < 0.02


def test_percentile_window_ignores_zero_padded_border() -> None:
    pixels = cxr_like_array(150, 120, bits_stored=12, seed=9)
    pixels = np.clip(pixels, 1, None).astype(np.uint16)  # content never equals the padding value
    padded = np.zeros((150 + 2 * 60, 120 + 2 * 40), dtype=np.uint16)
    padded[60:-60, 40:-40] = pixels
    plain = load_source_image(make_dataset(pixels, bits_stored=12)).pixels
    framed = load_source_image(make_dataset(padded, bits_stored=12)).pixels
    np.testing.assert_allclose(framed[60:-60, 40:-40], plain, atol=1e-6)
    assert (framed[:60] == 0).all()
    # without border handling, the 40 % of zero pixels would pull the low percentile to 0
    lo_naive = np.percentile(padded, PERCENTILE_WINDOW[0])
    assert lo_naive == 0 and np.percentile(pixels, PERCENTILE_WINDOW[0]) > 100


def test_flat_image_does_not_divide_by_zero() -> None:
    img = load_source_image(make_dataset(np.full((20, 30), 700, dtype=np.uint16), bits_stored=12)).pixels
    assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1


# --------------------------------------------------------------------------- photometric / bit depth


def test_monochrome1_is_inverted() -> None:
    pixels = cxr_like_array(90, 70, bits_stored=12, seed=10)
    mono2 = load_source_image(make_dataset(pixels, bits_stored=12, photometric="MONOCHROME2")).pixels
    mono1 = load_source_image(make_dataset(pixels, bits_stored=12, photometric="MONOCHROME1")).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert np.abs(mono1 - mono2).mean() > 0.2


def test_monochrome1_with_window_is_inverted() -> None:
    pixels = cxr_like_array(90, 70, bits_stored=12, seed=10)
    kw = dict(bits_stored=12, WindowCenter=2000, WindowWidth=2500)
    mono1 = load_source_image(make_dataset(pixels, photometric="MONOCHROME1", **kw)).pixels
    np.testing.assert_allclose(mono1, 1.0 - _linear_window(pixels, 2000, 2500), atol=1e-5)


@pytest.mark.parametrize(
    "bits_stored, signed", [(8, False), (8, True), (12, False), (12, True), (16, False), (16, True)]
)
def test_bit_depths_and_signedness(bits_stored: int, signed: bool) -> None:
    pixels = cxr_like_array(80, 64, bits_stored=bits_stored, signed=signed, seed=11)
    if bits_stored == 12 and signed:
        assert pixels.min() < 0
    img = load_source_image(make_dataset(pixels, bits_stored=bits_stored)).pixels
    lo, hi = np.percentile(pixels.astype(np.float64), PERCENTILE_WINDOW)
    np.testing.assert_allclose(img, np.clip((pixels.astype(np.float64) - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_rgb_becomes_luminance() -> None:
    rng = np.random.default_rng(12)
    rgb = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    img = load_source_image(
        make_dataset(rgb, photometric="RGB", sop_class_uid=uid.SecondaryCaptureImageStorage)
    ).pixels
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(img, expected, atol=1e-5)


def test_ybr_full_becomes_luminance() -> None:
    rng = np.random.default_rng(13)
    rgb = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    img = load_source_image(make_dataset(ybr, photometric="YBR_FULL")).pixels
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(img, expected, atol=2.5 / 255)  # 8-bit YCbCr round trip


def test_palette_color_is_applied_then_grey() -> None:
    idx = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    ramp = np.arange(256, dtype=np.uint16)
    red, green, blue = ramp * 257, (255 - ramp) * 257, np.full(256, 0x8000, dtype=np.uint16)
    ds = make_dataset(idx, photometric="PALETTE COLOR")
    for name, lut in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{name}PaletteColorLookupTableData", lut.tobytes())
    img = load_source_image(ds).pixels
    expected = (0.299 * red[idx] + 0.587 * green[idx] + 0.114 * blue[idx]) / 65535.0
    np.testing.assert_allclose(img, expected, atol=1e-5)


def test_large_4096_image_decodes() -> None:
    ramp = np.arange(4096, dtype=np.uint16)
    pixels = ((ramp[:, None] + 3 * ramp[None, :]) % 4096).astype(np.uint16)  # cheap to build
    img = load_source_image(make_dataset(pixels, bits_stored=12, WindowCenter=2048, WindowWidth=4096))
    assert img.pixels.shape == (4096, 4096)
    np.testing.assert_allclose(
        img.pixels[::97, ::89], _linear_window(pixels[::97, ::89], 2048, 4096), atol=1e-5
    )


# --------------------------------------------------------------------------- spacing


def test_spacing_sources() -> None:
    pixels = cxr_like_array(20, 30, bits_stored=12)
    both = load_source_image(
        make_dataset(pixels, bits_stored=12, PixelSpacing=[0.2, 0.15], ImagerPixelSpacing=[0.3, 0.3])
    )
    assert both.pixel_spacing_mm == (0.2, 0.15) and both.spacing_source == "PixelSpacing"
    imager = load_source_image(make_dataset(pixels, bits_stored=12, ImagerPixelSpacing=[0.143, 0.139]))
    assert imager.pixel_spacing_mm == (0.143, 0.139) and imager.spacing_source == "ImagerPixelSpacing"
    none = load_source_image(make_dataset(pixels, bits_stored=12))
    assert none.pixel_spacing_mm is None and none.spacing_source is None
    bad = load_source_image(
        make_dataset(pixels, bits_stored=12, PixelSpacing=[0, 0.1], ImagerPixelSpacing=[0.1, 0.12])
    )
    assert bad.pixel_spacing_mm == (0.1, 0.12) and bad.spacing_source == "ImagerPixelSpacing"


# --------------------------------------------------------------------------- refusals


def _ds(**kw: object) -> Dataset:
    return make_dataset(cxr_like_array(64, 48, bits_stored=12), bits_stored=12, **kw)


def _raises(ds: Dataset, exc: type[ImageDecodeError] = ImageDecodeError, **kw: int) -> ImageDecodeError:
    with pytest.raises(exc) as info:
        load_source_image(ds, **kw)
    uid_ = ds.get("SOPInstanceUID", None) or "<unknown>"
    assert str(uid_) in str(info.value)
    assert info.value.sop_instance_uid == str(uid_)
    return info.value


def test_truncated_pixel_data() -> None:
    ds = _ds()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    err = _raises(ds)
    assert "3072" in err.reason and "6144" in err.reason  # actual vs expected bytes


def test_rows_columns_not_matching_pixel_data() -> None:
    ds = _ds()
    ds.Rows = 65
    assert "expected" in _raises(ds).reason


def test_huge_claim_is_refused_without_allocating() -> None:
    ds = _ds()
    ds.Rows, ds.Columns = 65535, 65535
    ds.PixelData = b"\x00\x01" * 8
    tracemalloc.start()
    try:
        err = _raises(ds, UnsupportedImageError)
        # even with the size limit lifted the length check refuses before any decoding
        err2 = _raises(ds, ImageDecodeError, max_pixels=2**40)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "65535 x 65535" in err.reason
    assert "16 bytes" in err2.reason
    assert peak < 5 * 2**20, f"allocated {peak} bytes for a 16-byte Pixel Data"


def test_unsupported_photometric_interpretation() -> None:
    ds = _ds()
    ds.PhotometricInterpretation = "HSV"
    assert "HSV" in _raises(ds, UnsupportedImageError).reason


def test_samples_per_pixel_contradicting_photometric() -> None:
    ds = _ds()
    ds.PhotometricInterpretation = "RGB"
    _raises(ds)


@pytest.mark.parametrize(
    "keyword",
    ["Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation", "PixelData"],
)
def test_missing_attribute(keyword: str) -> None:
    ds = _ds()
    delattr(ds, keyword)
    assert keyword in _raises(ds).reason or "Pixel Data" in _raises(ds).reason


def test_one_bit_pixel_data_is_unsupported() -> None:
    ds = _ds()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    _raises(ds, UnsupportedImageError)


def test_bits_stored_larger_than_allocated() -> None:
    ds = _ds()
    ds.BitsStored = 17
    assert "BitsStored=17" in _raises(ds).reason


def test_missing_sop_instance_uid_is_named_unknown() -> None:
    ds = _ds()
    del ds.SOPInstanceUID
    ds.PixelData = ds.PixelData[:10]
    with pytest.raises(ImageDecodeError, match="<unknown>"):
        load_source_image(ds)


def test_missing_transfer_syntax() -> None:
    ds = _ds()
    del ds.file_meta.TransferSyntaxUID
    assert "Transfer Syntax" in _raises(ds).reason


def test_truncated_rle_stream() -> None:
    ds = _ds()
    ds.compress(uid.RLELossless)
    from pydicom.encaps import encapsulate, generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    _raises(ds)


def test_errors_are_one_family_and_picklable() -> None:
    ds = _ds()
    ds.PixelData = b""
    err = _raises(ds)
    assert isinstance(err, InferenceCoreError)
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is type(err) and str(clone) == str(err) and clone.reason == err.reason


def test_monochrome2_with_inverse_presentation_lut_is_inverted() -> None:
    pixels = cxr_like_array(40, 50, bits_stored=12, seed=15)
    plain = load_source_image(make_dataset(pixels, bits_stored=12)).pixels
    inverse = load_source_image(make_dataset(pixels, bits_stored=12, PresentationLUTShape="INVERSE")).pixels
    np.testing.assert_allclose(inverse, 1.0 - plain, atol=1e-6)
    # MONOCHROME1 + INVERSE (what the DX IOD requires) is inverted once, not twice
    mono1 = make_dataset(pixels, bits_stored=12, photometric="MONOCHROME1", PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(load_source_image(mono1).pixels, 1.0 - plain, atol=1e-6)


def test_pixel_padding_value_is_black_and_out_of_the_window_statistics() -> None:
    pixels = np.clip(cxr_like_array(120, 100, bits_stored=12, seed=16), 1, 4000).astype(np.uint16)
    padded = pixels.copy()
    yy, xx = np.mgrid[0:120, 0:100]
    collimated = (yy - 60) ** 2 + (xx - 50) ** 2 > 55**2  # round collimation, not a rectangular border
    padded[collimated] = 4095
    plain = load_source_image(make_dataset(pixels, bits_stored=12)).pixels
    with_pad = load_source_image(make_dataset(padded, bits_stored=12, PixelPaddingValue=4095))
    lo, hi = np.percentile(pixels[~collimated].astype(np.float64), PERCENTILE_WINDOW)
    expected = np.clip((pixels - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(with_pad.pixels[~collimated], expected[~collimated], atol=1e-5)
    assert (with_pad.pixels[collimated] == 0).all()
    # without the attribute the 4095 ring is ordinary (white) image content
    no_attr = load_source_image(make_dataset(padded, bits_stored=12)).pixels
    assert (no_attr[collimated] == 1).all()
    assert not np.allclose(plain, expected)  # the padding really changed the statistics


@pytest.mark.parametrize("where", [(0, 0), (17, 5), (-1, -1)])
def test_nan_anywhere_in_the_unit_image_is_refused(where: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The final check (one max over the image) finds a NaN wherever it is."""
    from models.imaging import dicom_image

    ds = make_dataset(cxr_like_array(40, 30, bits_stored=12), bits_stored=12)
    real = dicom_image._grey_to_unit

    def with_nan(*args: object, **kwargs: object) -> np.ndarray:
        grey = real(*args, **kwargs)  # type: ignore[arg-type]
        grey[where] = np.nan
        return grey

    monkeypatch.setattr(dicom_image, "_grey_to_unit", with_nan)
    with pytest.raises(ImageDecodeError, match="non-finite"):
        load_source_image(ds)
