"""Every transfer syntax a PACS sends for CXR decodes to the same image as the uncompressed source.

Sources are synthetic CXR-like images (tests/dicom_factory.py) written as Explicit VR Little
Endian; the other transfer syntaxes are produced with dcmtk (dcmconv, dcmcjpeg, dcmcjpls,
dcmcrle) and with pydicom's own encoders (pylibjpeg-openjpeg, pyjpegls, RLE).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.encaps import encapsulate, generate_frames

from models.errors import ImageDecodeError
from models.imaging.dicom_image import load_source_image

try:  # tests/ is on sys.path under pytest's default "prepend" import mode (no tests/__init__.py)
    from dicom_factory import cxr_like_array, have_dcmtk, make_dataset, transcode_dcmtk
except ImportError:  # tests/ as a package, or the repository root on sys.path
    from tests.dicom_factory import cxr_like_array, have_dcmtk, make_dataset, transcode_dcmtk

# --------------------------------------------------------------------------- sources


def _source(kind: str) -> pydicom.Dataset:
    if kind == "u12":  # typical CR/DX: 12 bits stored in 16
        return make_dataset(
            cxr_like_array(301, 257, bits_stored=12, seed=1), bits_stored=12, PixelSpacing=[0.2, 0.19]
        )
    if kind == "u16":
        return make_dataset(cxr_like_array(300, 256, bits_stored=16, seed=2), bits_stored=16)
    if kind == "s16":
        return make_dataset(cxr_like_array(257, 300, bits_stored=16, signed=True, seed=3), bits_stored=16)
    if kind == "u8":
        return make_dataset(cxr_like_array(256, 311, bits_stored=8, seed=4), bits_stored=8)
    raise ValueError(kind)


@dataclass(frozen=True)
class Case:
    transfer_syntax: uid.UID
    source: str
    make: Callable[[pydicom.Dataset, Path], pydicom.Dataset]
    lossless: bool
    needs: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.transfer_syntax}-{self.source}"


def _dcmtk(tool: str, *options: str) -> Callable[[pydicom.Dataset, Path], pydicom.Dataset]:
    def make(ds: pydicom.Dataset, tmp_path: Path) -> pydicom.Dataset:
        return transcode_dcmtk(ds, tool, list(options), tmp_path)

    return make


def _pydicom(ts: uid.UID, **kwargs: object) -> Callable[[pydicom.Dataset, Path], pydicom.Dataset]:
    def make(ds: pydicom.Dataset, tmp_path: Path) -> pydicom.Dataset:
        out = copy.deepcopy(ds)
        out.compress(ts, **kwargs)
        path = tmp_path / "pydicom_encoded.dcm"
        out.save_as(path, enforce_file_format=True)
        return pydicom.dcmread(path)  # read back from disk, as the node would

    return make


def _param(case: Case) -> object:
    """Cases produced with dcmtk binaries are integration tests (and skip without the binary)."""
    return pytest.param(case, id=case.id, marks=[pytest.mark.integration] if case.needs else [])


def _native(ds: pydicom.Dataset, tmp_path: Path) -> pydicom.Dataset:
    path = tmp_path / "native.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


CASES = [
    Case(uid.ExplicitVRLittleEndian, "u12", _native, True),
    Case(uid.ImplicitVRLittleEndian, "u12", _dcmtk("dcmconv", "+ti"), True, ("dcmconv",)),
    Case(uid.ExplicitVRBigEndian, "u12", _dcmtk("dcmconv", "+tb"), True, ("dcmconv",)),
    Case(uid.ExplicitVRBigEndian, "s16", _dcmtk("dcmconv", "+tb"), True, ("dcmconv",)),
    Case(uid.ExplicitVRBigEndian, "u8", _dcmtk("dcmconv", "+tb"), True, ("dcmconv",)),
    Case(uid.DeflatedExplicitVRLittleEndian, "u12", _dcmtk("dcmconv", "+td"), True, ("dcmconv",)),
    Case(uid.JPEGBaseline8Bit, "u8", _dcmtk("dcmcjpeg", "+eb", "+un"), False, ("dcmcjpeg",)),
    Case(uid.JPEGExtended12Bit, "u12", _dcmtk("dcmcjpeg", "+ee", "+un"), False, ("dcmcjpeg",)),
    Case(uid.JPEGLossless, "u12", _dcmtk("dcmcjpeg", "+el"), True, ("dcmcjpeg",)),
    Case(uid.JPEGLossless, "u16", _dcmtk("dcmcjpeg", "+el"), True, ("dcmcjpeg",)),
    Case(uid.JPEGLossless, "s16", _dcmtk("dcmcjpeg", "+el"), True, ("dcmcjpeg",)),
    Case(uid.JPEGLosslessSV1, "u12", _dcmtk("dcmcjpeg", "+e1"), True, ("dcmcjpeg",)),
    Case(uid.JPEGLosslessSV1, "u8", _dcmtk("dcmcjpeg", "+e1"), True, ("dcmcjpeg",)),
    Case(uid.JPEGLSLossless, "u12", _dcmtk("dcmcjpls", "+el"), True, ("dcmcjpls",)),
    Case(uid.JPEGLSLossless, "u16", _pydicom(uid.JPEGLSLossless), True),
    Case(uid.JPEGLSLossless, "s16", _pydicom(uid.JPEGLSLossless), True),
    Case(uid.JPEGLSNearLossless, "u12", _dcmtk("dcmcjpls", "+en", "+md", "2"), False, ("dcmcjpls",)),
    Case(uid.JPEGLSNearLossless, "u8", _pydicom(uid.JPEGLSNearLossless, jls_error=2), False),
    Case(uid.JPEG2000Lossless, "u12", _pydicom(uid.JPEG2000Lossless), True),
    Case(uid.JPEG2000Lossless, "u16", _pydicom(uid.JPEG2000Lossless), True),
    Case(uid.JPEG2000Lossless, "s16", _pydicom(uid.JPEG2000Lossless), True),
    Case(uid.JPEG2000, "u12", _pydicom(uid.JPEG2000, j2k_psnr=[50]), False),
    Case(uid.JPEG2000, "u8", _pydicom(uid.JPEG2000, j2k_cr=[8]), False),
    Case(uid.RLELossless, "u12", _dcmtk("dcmcrle"), True, ("dcmcrle",)),
    Case(uid.RLELossless, "s16", _pydicom(uid.RLELossless), True),
    Case(uid.RLELossless, "u8", _pydicom(uid.RLELossless), True),
]


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_transfer_syntax_decodes_like_the_source(case: Case, tmp_path: Path) -> None:
    if case.needs and not have_dcmtk(*case.needs):
        pytest.skip(f"dcmtk tool(s) {case.needs} not on PATH")
    src = _source(case.source)
    encoded = case.make(src, tmp_path)
    assert encoded.file_meta.TransferSyntaxUID == case.transfer_syntax  # the tool did what we asked

    ref = load_source_image(src)
    got = load_source_image(encoded)

    assert got.pixels.dtype == np.float32
    assert got.pixels.shape == (src.Rows, src.Columns)
    assert 0.0 <= got.pixels.min() and got.pixels.max() <= 1.0
    assert got.pixels.max() - got.pixels.min() > 0.9  # a real image, not a constant
    assert got.pixel_spacing_mm == ref.pixel_spacing_mm
    # Independent of our own pipeline: the output follows the stored values.
    stored = src.pixel_array.astype(np.float64).ravel()
    assert np.corrcoef(stored, got.pixels.ravel())[0, 1] > 0.99
    diff = np.abs(got.pixels - ref.pixels)
    if case.lossless:
        np.testing.assert_array_equal(got.pixels, ref.pixels)
    else:
        # 8-bit lossy at default quality: a few grey levels of 255 (an inverted or shifted image is ~0.5)
        assert diff.mean() < 0.012, f"{case.id}: mean error {diff.mean():.4f}"
        assert np.quantile(diff, 0.999) < 0.08, (
            f"{case.id}: 99.9th percentile error {np.quantile(diff, 0.999):.4f}"
        )


@pytest.mark.integration
@pytest.mark.skipif(not have_dcmtk("dcmcjpeg"), reason="dcmcjpeg not on PATH")
def test_rsna_like_secondary_capture_jpeg_baseline(tmp_path: Path) -> None:
    """RSNA challenge images are 8-bit MONOCHROME2 Secondary Capture in JPEG Baseline with PixelSpacing."""
    pixels = cxr_like_array(512, 512, bits_stored=8, seed=7)
    src = make_dataset(
        pixels,
        sop_class_uid=uid.SecondaryCaptureImageStorage,
        PixelSpacing=[0.168, 0.168],
        ConversionType="WSD",
    )
    encoded = transcode_dcmtk(src, "dcmcjpeg", ["+eb", "+un"], tmp_path)
    assert encoded.file_meta.TransferSyntaxUID == uid.JPEGBaseline8Bit
    got = load_source_image(encoded)
    ref = load_source_image(src)
    assert got.sop_instance_uid == src.SOPInstanceUID
    assert got.pixel_spacing_mm == (0.168, 0.168) and got.spacing_source == "PixelSpacing"
    assert np.abs(got.pixels - ref.pixels).mean() < 0.012


@pytest.mark.integration
@pytest.mark.skipif(not have_dcmtk("dcmcjpeg"), reason="dcmcjpeg not on PATH")
def test_rgb_secondary_capture_jpeg_baseline_ybr_becomes_grey(tmp_path: Path) -> None:
    grey = cxr_like_array(200, 240, bits_stored=8, seed=8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    src = make_dataset(rgb, photometric="RGB", sop_class_uid=uid.SecondaryCaptureImageStorage)
    encoded = transcode_dcmtk(src, "dcmcjpeg", ["+eb", "+un"], tmp_path)
    assert encoded.file_meta.TransferSyntaxUID == uid.JPEGBaseline8Bit
    assert encoded.PhotometricInterpretation.startswith("YBR_FULL")  # dcmtk converts to YCbCr
    got = load_source_image(encoded)
    assert got.pixels.shape == grey.shape
    expected = grey.astype(np.float32) / 255.0
    assert np.abs(got.pixels - expected).mean() < 0.01


TRUNCATION_CASES = [
    Case(uid.JPEGBaseline8Bit, "u8", _dcmtk("dcmcjpeg", "+eb", "+un"), False, ("dcmcjpeg",)),
    Case(uid.JPEGLossless, "u12", _dcmtk("dcmcjpeg", "+el"), True, ("dcmcjpeg",)),
    Case(uid.JPEGLSLossless, "u12", _pydicom(uid.JPEGLSLossless), True),
    Case(uid.JPEG2000Lossless, "u12", _pydicom(uid.JPEG2000Lossless), True),
    Case(uid.JPEG2000, "u12", _pydicom(uid.JPEG2000, j2k_psnr=[50]), False),
]


@pytest.mark.parametrize("case", [_param(c) for c in TRUNCATION_CASES])
def test_truncated_stream_is_an_image_decode_error(case: Case, tmp_path: Path) -> None:
    """A stream cut short (half-transferred file) must not decode into a half-grey image."""
    if case.needs and not have_dcmtk(*case.needs):
        pytest.skip(f"dcmtk tool(s) {case.needs} not on PATH")
    src = _source(case.source)
    encoded = case.make(src, tmp_path)
    load_source_image(encoded)  # intact: decodes
    frame = next(generate_frames(encoded.PixelData, number_of_frames=1))
    encoded.PixelData = encapsulate([frame[: len(frame) // 3] + b"\x00" * 16])  # cut mid-scan, no EOI
    with pytest.raises(ImageDecodeError) as info:
        load_source_image(encoded)
    assert encoded.SOPInstanceUID in str(info.value)  # (pydicom's encoders assign a new UID)
    assert info.value.sop_instance_uid == encoded.SOPInstanceUID


def test_garbage_instead_of_jpeg_is_an_image_decode_error() -> None:
    src = _source("u8")
    src.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    src.PixelData = encapsulate([b"\xff\xd8\xff\xe0 this is not a JPEG stream \xff\xd9"])
    with pytest.raises(ImageDecodeError, match=src.SOPInstanceUID):
        load_source_image(src)


def test_compressed_transfer_syntax_with_native_pixel_data_is_refused() -> None:
    src = _source("u8")
    src.file_meta.TransferSyntaxUID = uid.JPEG2000Lossless
    with pytest.raises(ImageDecodeError, match="not encapsulated"):
        load_source_image(src)


def test_multi_frame_uses_frame_zero(tmp_path: Path) -> None:
    frames = np.stack([cxr_like_array(64, 80, bits_stored=12, seed=s) for s in (10, 11)])
    ds = make_dataset(frames[0], bits_stored=12)
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    single = make_dataset(frames[0], bits_stored=12)
    np.testing.assert_array_equal(load_source_image(ds).pixels, load_source_image(single).pixels)
    ds.compress(uid.RLELossless)
    np.testing.assert_array_equal(load_source_image(ds).pixels, load_source_image(single).pixels)


@pytest.mark.integration
@pytest.mark.skipif(not have_dcmtk("dcmcjpeg"), reason="dcmcjpeg not on PATH")
def test_trailing_bytes_after_eoi_are_tolerated(tmp_path: Path) -> None:
    """Some encoders pad a frame after the EOI marker; that is not a truncated stream."""
    src = _source("u12")
    encoded = transcode_dcmtk(src, "dcmcjpeg", ["+el"], tmp_path)
    frame = next(generate_frames(encoded.PixelData, number_of_frames=1))
    encoded.PixelData = encapsulate([frame + b"\x00" * 7 + b"pad!"])
    np.testing.assert_array_equal(load_source_image(encoded).pixels, load_source_image(src).pixels)


# --------------------------------------------------------------------------- preferred decoder
def _record_decoding_plugins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The decoding plug-in ("" for pydicom's default order) of every call ``load_source_image`` makes
    to pydicom's ``pixel_array``, in order (the calls still decode)."""
    import models.imaging.dicom_image as dicom_image

    used: list[str] = []
    real = dicom_image.pixel_array

    def spy(ds: pydicom.Dataset, **kwargs: object) -> np.ndarray:
        used.append(str(kwargs.get("decoding_plugin", "")))
        return real(ds, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dicom_image, "pixel_array", spy)
    return used


@pytest.mark.integration
@pytest.mark.skipif(not have_dcmtk("dcmcjpeg"), reason="dcmcjpeg not on PATH")
def test_jpeg_baseline_is_decoded_with_pillow_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JPEG Baseline goes to Pillow (GIL released, ~4x faster than pylibjpeg; BENCHMARKS.md) and
    gives the same image as the default decoder order, to within JPEG's IDCT rounding."""
    import models.imaging.dicom_image as dicom_image

    assert dicom_image.PREFERRED_DECODER[uid.JPEGBaseline8Bit] == "pillow"
    encoded = transcode_dcmtk(_source("u8"), "dcmcjpeg", ["+eb", "+un"], tmp_path)
    used = _record_decoding_plugins(monkeypatch)
    preferred = load_source_image(encoded)
    assert used == []  # 8-bit grey, one frame: Pillow decodes it directly (_direct_pillow_grey8)
    encoded.PhotometricInterpretation = "MONOCHROME1"  # still direct
    assert load_source_image(encoded).pixels.tobytes() == (1.0 - preferred.pixels).tobytes()
    assert used == []
    encoded.PhotometricInterpretation = "MONOCHROME2"
    direct = dicom_image._direct_pillow_grey8
    monkeypatch.setattr(dicom_image, "_direct_pillow_grey8", lambda ds, h: None)
    assert load_source_image(encoded).pixels.tobytes() == preferred.pixels.tobytes()
    assert used == ["pillow"]  # pydicom's path with the Pillow plug-in: the same pixels
    monkeypatch.setattr(dicom_image, "_direct_pillow_grey8", direct)
    monkeypatch.setattr(dicom_image, "PREFERRED_DECODER", {})
    default = load_source_image(encoded)
    assert used == ["pillow", ""]  # no Pillow preference: no direct Pillow decode either
    assert np.abs(preferred.pixels - default.pixels).max() <= 2 / 255


@pytest.mark.integration
@pytest.mark.skipif(not have_dcmtk("dcmcjpeg"), reason="dcmcjpeg not on PATH")
def test_failing_preferred_decoder_falls_back_to_the_default_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.imaging.dicom_image as dicom_image

    encoded = transcode_dcmtk(_source("u8"), "dcmcjpeg", ["+eb", "+un"], tmp_path)
    monkeypatch.setattr(dicom_image, "PREFERRED_DECODER", {uid.JPEGBaseline8Bit: "no-such-plugin"})
    got = load_source_image(encoded)
    assert got.pixels.max() - got.pixels.min() > 0.9


def test_broken_jpeg_fails_once_with_either_decoder() -> None:
    """A stream neither decoder reads is still one ImageDecodeError (the fallback does not hide it)."""
    ds = make_dataset(cxr_like_array(64, 64, bits_stored=8, seed=9), bits_stored=8)
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 200 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(ImageDecodeError):
        load_source_image(ds)


# --------------------------------------------------------------------------- codestream size
def _jpeg_claiming(rows: int, columns: int, junk: bytes = b"") -> pydicom.Dataset:
    """A 64 x 64 JPEG Baseline instance whose SOF0 header is patched to claim ``columns`` x ``rows``
    (and ``junk`` inserted after the JFIF APP0 segment: decoders skip bytes that are not a marker)."""
    import io

    from PIL import Image

    pixels = cxr_like_array(64, 64, bits_stored=8, seed=5)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    stream = bytearray(buf.getvalue())
    sof = stream.find(b"\xff\xc0")
    stream[sof + 5 : sof + 7] = rows.to_bytes(2, "big")
    stream[sof + 7 : sof + 9] = columns.to_bytes(2, "big")
    assert stream[2:4] == b"\xff\xe0"
    app0_end = 4 + int.from_bytes(stream[4:6], "big")
    stream[app0_end:app0_end] = junk
    ds = make_dataset(pixels, bits_stored=8)
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    return ds


@pytest.mark.parametrize(
    ("rows", "columns", "junk"),
    [(60000, 60000, b""), (8000, 8000, b""), (65, 64, b""), (0, 64, b""),
     (60000, 60000, b"\x14\x0d\x0c\x0b\x0b\x0c\x19"), (60000, 60000, b"\xff\x00\x01")],
)  # fmt: skip
def test_codestream_larger_than_the_header_is_refused_before_decoding(
    rows: int, columns: int, junk: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 KB instance whose JPEG claimed 60000 x 60000 made pylibjpeg allocate ~3 GB for 14 s
    before it failed: the frame header is now checked against Rows x Columns and nothing is decoded.
    With junk between two segments (the fuzzer's find: the decoders skip it, a strict parser gave up
    and let the stream through to a 3.4 GB allocation) the frame header is found all the same."""
    import models.imaging.dicom_image as dicom_image

    def no_decode(*_a: object, **_k: object) -> np.ndarray:
        raise AssertionError("the decoder must not run")

    monkeypatch.setattr(dicom_image, "pixel_array", no_decode)
    with pytest.raises(ImageDecodeError, match=rf"declares a {columns} x {rows} frame but Columns x Rows is 64 x 64"):
        load_source_image(_jpeg_claiming(rows, columns, junk))


def test_a_bomb_pillow_refuses_is_not_handed_to_another_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth behind the size check: Pillow's DecompressionBombError ends the decode."""
    from PIL import Image

    import models.imaging.dicom_image as dicom_image

    calls: list[str] = []

    def bomb(ds: pydicom.Dataset, **kwargs: object) -> np.ndarray:
        calls.append(str(kwargs.get("decoding_plugin", "")))
        raise RuntimeError("all plug-ins failed") from Image.DecompressionBombError("Image size exceeds limit of 1 pixels")

    monkeypatch.setattr(dicom_image, "pixel_array", bomb)
    monkeypatch.setattr(dicom_image, "_direct_pillow_grey8", lambda ds, h: None)  # pydicom's path
    with pytest.raises(ImageDecodeError, match="all plug-ins failed"):
        load_source_image(_jpeg_claiming(64, 64))
    assert calls == ["pillow"]  # no fall-back to pylibjpeg


def test_a_bomb_pillow_refuses_in_the_direct_decode_is_reported_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pillow's bomb refusal in the direct 8-bit grey decode: pydicom's path runs (and refuses it in
    Pillow again, without handing it to pylibjpeg), the same error as without the direct decode."""
    from PIL import Image

    import models.imaging.dicom_image as dicom_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)  # 64 x 64 is over twice the limit
    ds = _jpeg_claiming(64, 64)
    calls = _record_decoding_plugins(monkeypatch)
    with pytest.raises(ImageDecodeError, match="exceeds limit") as direct:
        load_source_image(ds)
    assert calls == ["pillow"]  # the direct decode declined; pydicom's Pillow refused; no pylibjpeg
    monkeypatch.setattr(dicom_image, "_direct_pillow_grey8", lambda ds, h: None)
    with pytest.raises(ImageDecodeError) as before:
        load_source_image(ds)
    assert str(direct.value) == str(before.value)


def test_jpeg_2000_codestream_size_is_checked(tmp_path: Path) -> None:
    encoded = _pydicom(uid.JPEG2000Lossless)(_source("u12"), tmp_path)
    load_source_image(encoded)  # intact: decodes
    frame = bytearray(next(generate_frames(encoded.PixelData, number_of_frames=1)))
    assert frame[:4] == b"\xff\x4f\xff\x51"
    frame[8:12] = (50000).to_bytes(4, "big")  # Xsiz
    encoded.PixelData = encapsulate([bytes(frame)])
    with pytest.raises(ImageDecodeError, match=r"declares a 50000 x 301 frame"):
        load_source_image(encoded)


@pytest.mark.parametrize("case", [_param(c) for c in CASES if c.transfer_syntax.is_encapsulated])
def test_every_encoder_declares_the_header_size(case: Case, tmp_path: Path) -> None:
    """The frame-header parser finds Rows x Columns in what dcmtk and pydicom's encoders write."""
    from models.imaging.dicom_image import codestream_frame_size

    if case.needs and not have_dcmtk(*case.needs):
        pytest.skip(f"dcmtk tool(s) {case.needs} not on PATH")
    src = _source(case.source)
    encoded = case.make(src, tmp_path)
    frame = next(generate_frames(encoded.PixelData, number_of_frames=1))
    size = codestream_frame_size(encoded.file_meta.TransferSyntaxUID, frame)
    if case.transfer_syntax == uid.RLELossless:
        assert size is None
    else:
        assert size == (src.Rows, src.Columns)


def test_jp2_wrapped_codestream_size_is_checked() -> None:
    """A JP2 file (boxes around the codestream; not DICOM-conformant, but decoders read it) is
    measured by the codestream it wraps."""
    from models.imaging.dicom_image import codestream_frame_size

    siz = b"\xff\x4f\xff\x51\x00\x29\x00\x00" + (9000).to_bytes(4, "big") + (7000).to_bytes(4, "big") + b"\x00" * 8
    # signature box, a 24-byte ftyp box, then the codestream box (length 0: to the end of the file)
    jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x18ftypjp2 " + b"\x00" * 12 + b"\x00\x00\x00\x00jp2c" + siz
    assert codestream_frame_size(uid.JPEG2000, jp2) == (7000, 9000)
    assert codestream_frame_size(uid.JPEG2000, jp2[:40]) is None  # no codestream box yet
