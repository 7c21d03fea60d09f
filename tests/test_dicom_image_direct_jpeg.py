"""models.imaging.dicom_image: single-frame 8-bit greyscale JPEG Baseline is decoded by Pillow
directly (without pydicom's pixel pipeline); the result is bit for bit today's (pydicom's Pillow
plug-in), errors included, and everything else takes pydicom's path."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.encaps import encapsulate, get_frame

from models.errors import ImageDecodeError
from models.imaging import dicom_image
from models.imaging.dicom_image import _check_header, _decode_frame0, _direct_pillow_grey8, load_source_image

try:  # tests/ is on sys.path under pytest's default "prepend" import mode (no tests/__init__.py)
    from dicom_factory import cxr_like_array, have_dcmtk, make_dataset, transcode_dcmtk
except ImportError:  # tests/ as a package, or the repository root on sys.path
    from tests.dicom_factory import cxr_like_array, have_dcmtk, make_dataset, transcode_dcmtk


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def _pillow_jpeg(pixels: np.ndarray, **attributes) -> pydicom.Dataset:
    """An 8-bit JPEG Baseline instance of ``pixels`` (grey, or RGB stored as YBR_FULL_422)."""
    ds = make_dataset(pixels, **attributes)
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    if pixels.ndim == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([_jpeg_bytes(pixels)])
    return ds


def _old_path(ds: pydicom.Dataset, monkeypatch: pytest.MonkeyPatch):
    """load_source_image as before the direct decode (pydicom's pixel pipeline), or its error."""
    with monkeypatch.context() as m:
        m.setattr(dicom_image, "_direct_pillow_grey8", lambda ds, h: None)
        try:
            return load_source_image(ds)
        except ImageDecodeError as exc:
            return exc


def _assert_same_as_old(ds: pydicom.Dataset, monkeypatch: pytest.MonkeyPatch, *, direct: bool) -> None:
    h = _check_header(ds, "x", dicom_image.DEFAULT_MAX_PIXELS)
    fast = _direct_pillow_grey8(ds, h)
    assert (fast is not None) is direct
    if fast is not None:
        old = _decode_frame0(ds)
        assert fast.dtype == old.dtype and fast.shape == old.shape
        np.testing.assert_array_equal(fast, old)
    new = load_source_image(ds)
    old_image = _old_path(ds, monkeypatch)
    assert not isinstance(old_image, Exception), old_image
    assert new.pixels.dtype == old_image.pixels.dtype == np.float32
    assert new.pixels.tobytes() == old_image.pixels.tobytes()  # bit for bit (NaN-safe)
    assert (new.rows, new.columns, new.pixel_spacing_mm) == (
        old_image.rows,
        old_image.columns,
        old_image.pixel_spacing_mm,
    )


@pytest.mark.parametrize(
    "photometric, attributes",
    [
        ("MONOCHROME2", {}),
        ("MONOCHROME1", {}),
        ("MONOCHROME2", {"WindowCenter": 120, "WindowWidth": 200}),
        ("MONOCHROME2", {"PixelPaddingValue": 0}),
        ("MONOCHROME2", {"PresentationLUTShape": "INVERSE", "RescaleSlope": 2, "RescaleIntercept": -5}),
    ],
)
def test_direct_decode_equals_pydicom_pipeline(photometric, attributes, monkeypatch):
    arr = cxr_like_array(256, 200, bits_stored=8)
    arr[:8] = 0  # a constant border (the content region)
    ds = _pillow_jpeg(arr, photometric=photometric, **attributes)
    _assert_same_as_old(ds, monkeypatch, direct=True)


def test_direct_decode_equals_on_rsna_phantoms(tmp_path: Path, monkeypatch):
    from models.phantoms.synth import write_rsna_dataset

    write_rsna_dataset(tmp_path, n=3, seed=5, size=256)
    files = sorted((tmp_path / "stage_2_train_images").glob("*.dcm"))
    assert len(files) == 3
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == uid.JPEGBaseline8Bit
        _assert_same_as_old(ds, monkeypatch, direct=True)


@pytest.mark.skipif(not have_dcmtk("dcmcjpeg"), reason="dcmcjpeg not on PATH")
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_direct_decode_equals_on_dcmcjpeg_output(photometric, tmp_path, monkeypatch):
    ds = make_dataset(cxr_like_array(300, 240, bits_stored=8), photometric=photometric)
    encoded = transcode_dcmtk(ds, "dcmcjpeg", ["+eb", "+un"], tmp_path)
    assert encoded.file_meta.TransferSyntaxUID == uid.JPEGBaseline8Bit
    _assert_same_as_old(encoded, monkeypatch, direct=True)


def test_other_data_takes_pydicom_path(monkeypatch):
    grey = cxr_like_array(64, 48, bits_stored=8)
    native = make_dataset(grey)  # not JPEG
    rgb = _pillow_jpeg(np.stack([grey] * 3, axis=-1), photometric="RGB")
    two_frames = _pillow_jpeg(grey)
    frame = get_frame(two_frames.PixelData, 0, number_of_frames=1)
    two_frames.PixelData = encapsulate([frame, frame])
    two_frames.NumberOfFrames = 2
    for ds, direct in ((native, False), (rgb, False), (two_frames, False)):
        _assert_same_as_old(ds, monkeypatch, direct=direct)


def test_colour_jpeg_labelled_grey_falls_back_with_todays_error(monkeypatch):
    """A 3-component JPEG in a MONOCHROME2 header: Pillow gives RGB, the direct path declines and
    pydicom's path reports what it reported before."""
    grey = cxr_like_array(64, 48, bits_stored=8)
    ds = _pillow_jpeg(grey)
    ds.PixelData = encapsulate([_jpeg_bytes(np.stack([grey, grey // 2, grey], axis=-1))])
    h = _check_header(ds, "x", dicom_image.DEFAULT_MAX_PIXELS)
    assert _direct_pillow_grey8(ds, h) is None
    old = _old_path(ds, monkeypatch)
    with pytest.raises(ImageDecodeError) as new:
        load_source_image(ds)
    assert isinstance(old, ImageDecodeError) and str(new.value) == str(old)


def test_corrupt_entropy_data_same_outcome(monkeypatch, caplog):
    """Garbled scan data between intact SOI/EOI: the same pixels (or error) as pydicom's path."""
    ds = _pillow_jpeg(cxr_like_array(128, 128, bits_stored=8))
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    sos = frame.find(b"\xff\xda")
    for i in range(sos + 40, len(frame) - 40, 7):
        frame[i] = (frame[i] * 31 + 7) % 255  # never 0xFF: no new markers
    ds.PixelData = encapsulate([bytes(frame)])
    old = _old_path(ds, monkeypatch)
    try:
        new = load_source_image(ds)
    except ImageDecodeError as exc:
        assert isinstance(old, ImageDecodeError) and str(exc) == str(old)
    else:
        assert not isinstance(old, Exception), old
        assert new.pixels.tobytes() == old.pixels.tobytes()
