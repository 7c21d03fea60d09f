"""The SC overlay stored as JPEG Baseline (dicom_node.results.sc.encode): the default transfer
syntax, its attributes, the lossy history, and pixels that decode back to what was rendered."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _results_data import dciodvfy, dx_source, findings_for, rsna_source, three_boxes
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from dicom_node.results.build import build_results, encode_results
from dicom_node.results.common import models_label
from dicom_node.results.sc.build import build_sc
from dicom_node.results.sc.encode import DEFAULT_SC_ENCODING, ScEncoding, jpeg_baseline
from dicom_node.results.sc.render import render_overlay
from dicom_node.settings import NodeSettings
from models.findings import Heatmap
from models.imaging.dicom_image import load_source_image


def _heatmap(size: int) -> Heatmap:
    r, c = np.mgrid[0:6, 0:6]
    values = np.exp(-((r - 2) ** 2 + (c - 3) ** 2) / 1.5).astype(np.float32)
    return Heatmap(values / values.max(), 0.0, 0.0, float(size), float(size))


def _positive(src: pydicom.Dataset, size: int):  # noqa: ANN202 - Findings
    return findings_for(src, three_boxes(size, size), p=0.9, heatmap=_heatmap(size), two_class=True)


def _written(sc: pydicom.Dataset, tmp_path: Path) -> pydicom.Dataset:
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def test_jpeg_baseline_is_the_default_everywhere() -> None:
    assert DEFAULT_SC_ENCODING == ScEncoding("jpeg-baseline", 90)
    s = NodeSettings()
    assert (s.sc_transfer_syntax, s.sc_jpeg_quality) == ("jpeg-baseline", 90)
    assert ScEncoding(s.sc_transfer_syntax, s.sc_jpeg_quality).uid == JPEGBaseline8Bit


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"transfer_syntax": "jpeg-2000"}, "'jpeg-2000'"), ({"jpeg_quality": 30}, "30"), ({"jpeg_quality": 101}, "101")],
)
def test_invalid_encodings_are_refused_naming_the_value(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ScEncoding(**kwargs)


def test_settings_reach_the_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_SC_TRANSFER_SYNTAX", "explicit-vr-little-endian")
    monkeypatch.setenv("CXR_NODE_SC_JPEG_QUALITY", "75")
    s = NodeSettings()
    assert ScEncoding(s.sc_transfer_syntax, s.sc_jpeg_quality) == ScEncoding("explicit-vr-little-endian", 75)
    monkeypatch.setenv("CXR_NODE_SC_TRANSFER_SYNTAX", "jpeg-ls")
    with pytest.raises(ValueError, match="sc_transfer_syntax"):
        NodeSettings()


def test_jpeg_sc_attributes_and_encapsulation(tmp_path: Path) -> None:
    src = dx_source(320, 256)  # uncompressed source: this is the first lossy step
    sc = _written(build_sc(src, _positive(src, 256)), tmp_path)
    assert sc.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert sc.PhotometricInterpretation == "YBR_FULL_422"
    assert sc.PlanarConfiguration == 0 and sc.SamplesPerPixel == 3
    assert (sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation) == (8, 8, 7, 0)
    assert sc.LossyImageCompression == "01"
    assert sc.LossyImageCompressionMethod == "ISO_10918_1"
    # encapsulated: Basic Offset Table item first, then one fragment holding the whole JPEG stream
    data = sc.PixelData
    assert data[:4] == b"\xfe\xff\x00\xe0"
    frames = list(generate_frames(data, number_of_frames=1))
    assert len(frames) == 1
    stream = frames[0]
    assert stream[:2] == b"\xff\xd8" and b"\xff\xd9" in stream[-4:]
    assert float(sc.LossyImageCompressionRatio) == pytest.approx(sc.Rows * sc.Columns * 3 / len(stream), rel=0.01)
    assert float(sc.LossyImageCompressionRatio) > 3
    # the stream holds what the attributes say: YCbCr, Cb and Cr at half the horizontal rate (4:2:2)
    jpeg = Image.open(io.BytesIO(stream))
    assert jpeg.format == "JPEG" and jpeg.mode == "RGB" and jpeg.size == (sc.Columns, sc.Rows)
    assert [(h, v) for _, h, v, _ in jpeg.layer] == [(2, 1), (1, 1), (1, 1)]
    assert "adobe_transform" not in jpeg.info  # JFIF: YCbCr, not RGB components


def test_jpeg_sc_decodes_to_what_was_rendered(tmp_path: Path) -> None:
    """pydicom decodes the SC to the rendered overlay within JPEG's error, in every part of it."""
    src = rsna_source(512)
    findings = _positive(src, 512)
    sc = _written(build_sc(src, findings), tmp_path)
    rendered = render_overlay(load_source_image(src).pixels, findings, models_label=models_label(findings.models))
    decoded = sc.pixel_array  # YBR_FULL_422 -> RGB
    assert decoded.shape == rendered.rgb.shape
    diff = np.abs(decoded.astype(np.int16) - rendered.rgb.astype(np.int16))
    lay = rendered.layout
    image = diff[lay.image_top : lay.image_bottom]
    assert image.mean() < 2.0 and np.percentile(image, 99) <= 12  # the radiograph under the findings
    assert diff.mean() < 2.5 and np.percentile(diff, 99.9) <= 100  # sharp coloured edges cost the most (4:2:2)
    # the findings stay what they were: amber box outlines, the heatmap's colours
    for box in findings.boxes:
        # a horizontal edge keeps its colour (Cb and Cr at every row); a vertical one two pixels wide
        # loses some saturation to the black frame beside it (half the columns), but stays amber
        top, mid = lay.image_top + round(box.y), round(box.x + box.width / 2)
        assert np.abs(decoded[top, mid].astype(int) - (255, 196, 0)).max() <= 24
        left = decoded[lay.image_top + round(box.y + box.height / 2), round(box.x)].astype(int)
        assert left[0] > 180 and left[1] > 150 and left[0] - left[2] > 80, left
    colourful = np.abs(decoded[..., 0].astype(int) - decoded[..., 2]) > 60
    assert colourful.sum() == pytest.approx((np.abs(rendered.rgb[..., 0].astype(int) - rendered.rgb[..., 2]) > 60).sum(), rel=0.1)


def test_uncompressed_setting_keeps_the_exact_rgb(tmp_path: Path) -> None:
    src = dx_source(320, 256)
    findings = _positive(src, 256)
    sc = _written(build_sc(src, findings, encoding=ScEncoding("explicit-vr-little-endian")), tmp_path)
    rendered = render_overlay(load_source_image(src).pixels, findings, models_label=models_label(findings.models))
    assert sc.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sc.PhotometricInterpretation == "RGB"
    assert "LossyImageCompression" not in sc  # the DX source is uncompressed, and so is the SC
    np.testing.assert_array_equal(sc.pixel_array, rendered.rgb)


def test_lossy_history_of_the_source_comes_first(tmp_path: Path) -> None:
    src = rsna_source(256)  # JPEG Baseline: lossy already
    src.LossyImageCompression = "01"
    src.LossyImageCompressionRatio = "8.5"
    src.LossyImageCompressionMethod = "ISO_10918_1"
    sc = _written(build_sc(src, findings_for(src, ())), tmp_path)
    assert list(sc.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_10918_1"]
    assert [float(v) for v in sc.LossyImageCompressionRatio][0] == 8.5
    assert len(sc.LossyImageCompressionRatio) == 2
    del src.LossyImageCompressionRatio  # an incomplete history: only this step can be stated
    sc = _written(build_sc(src, findings_for(src, ())), tmp_path)
    assert sc.LossyImageCompression == "01" and sc.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(sc.LossyImageCompressionRatio) > 1


def test_encoded_result_carries_the_jpeg_transfer_syntax() -> None:
    """What the outbox row records (and delivery proposes) is the file's own transfer syntax."""
    src = rsna_source(256)
    encoded = encode_results(build_results(src, findings_for(src, three_boxes(256, 256))))
    sr, sc = encoded
    assert sc.transfer_syntax_uid == JPEGBaseline8Bit and sr.transfer_syntax_uid == ExplicitVRLittleEndian
    read = pydicom.dcmread(io.BytesIO(sc.data))
    assert read.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert len(sc.data) < 0.3 * read.Rows * read.Columns * 3  # far below the uncompressed RGB
    plain = encode_results(
        build_results(src, findings_for(src, three_boxes(256, 256)), sc_encoding=ScEncoding("explicit-vr-little-endian"))
    )[1]
    assert plain.transfer_syntax_uid == ExplicitVRLittleEndian and len(plain.data) > 3 * len(sc.data)


def test_jpeg_from_the_rgbx_buffer_is_the_same_stream() -> None:
    """The encoder reads the overlay's RGBX words in place: the stream equals the one from its RGB copy."""
    src = rsna_source(256)
    findings = _positive(src, 256)
    overlay = render_overlay(load_source_image(src).pixels, findings, models_label="m v1")
    assert overlay.rgbx is not None and np.shares_memory(overlay.rgbx, overlay.rgb)
    rgb = np.ascontiguousarray(overlay.rgb)
    assert jpeg_baseline(overlay.rgb, 90, rgbx=overlay.rgbx) == jpeg_baseline(rgb, 90)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not on PATH")
@pytest.mark.parametrize("transfer_syntax", ["jpeg-baseline", "explicit-vr-little-endian"])
def test_both_encodings_pass_dciodvfy(tmp_path: Path, transfer_syntax: str) -> None:
    src = dx_source(320, 256)
    path = tmp_path / "sc.dcm"
    build_sc(src, _positive(src, 256), encoding=ScEncoding(transfer_syntax)).save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert [w for w in warnings if "Study ID" not in w and "Retired Person Name" not in w] == []
