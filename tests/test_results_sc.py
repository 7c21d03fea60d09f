"""Secondary Capture overlay (dicom_node.results_sc, dicom_node.overlay_render)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from _results_data import (
    NAMES_BY_CHARSET,
    charset_value,
    dx_source,
    findings_for,
    not_analysed_for,
    rsna_source,
    three_boxes,
)

from dicom_node.overlay_render import BOX_COLOUR, output_shape, overlay_text, render_overlay
from dicom_node.results_sc import build_sc
from models.dicom_image import load_source_image


def _save_read(ds: pydicom.Dataset, tmp_path: Path, name: str = "sc.dcm") -> pydicom.Dataset:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _grey_u8(src: pydicom.Dataset) -> np.ndarray:
    return np.rint(load_source_image(src).pixels * 255).astype(np.uint8)


def test_sc_identity_references_and_flags(tmp_path: Path) -> None:
    src = rsna_source(256)
    findings = findings_for(src, three_boxes(256, 256))
    sc = _save_read(build_sc(src, findings), tmp_path)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == src.StudyInstanceUID
    assert sc.SeriesInstanceUID not in (src.SeriesInstanceUID,)
    assert sc.SeriesDescription == "AI overlay (not for diagnosis)"
    assert sc.SeriesNumber == 9902
    assert sc.Manufacturer == "cxr-ai-node"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ConversionType == "WSD"
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "cxr_opacity_detection" in sc.DerivationDescription
    for seq in (sc.ReferencedImageSequence, sc.SourceImageSequence):
        assert len(seq) == 1
        assert seq[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert seq[0].ReferencedSOPClassUID == src.SOPClassUID
    assert sc.LossyImageCompression == "01"  # the RSNA-style source is JPEG baseline
    for keyword in ("PatientName", "PatientID", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
        assert sc[keyword].value == src[keyword].value, keyword
    assert sc.PhotometricInterpretation == "RGB"
    assert sc.pixel_array.shape == (256, 256, 3)


def test_box_is_burned_in_where_the_findings_say(tmp_path: Path) -> None:
    src = dx_source(320, 256)
    boxes = three_boxes(320, 256)
    findings = findings_for(src, boxes)
    sc = _save_read(build_sc(src, findings), tmp_path)
    rgb = sc.pixel_array
    grey = _grey_u8(src)
    for box in findings.boxes:
        # left edge, halfway down the box (clear of the score label above the top edge)
        r, c = round(box.y + box.height / 2), round(box.x)
        assert tuple(rgb[r, c]) == BOX_COLOUR
        assert tuple(rgb[r, c]) != (grey[r, c],) * 3
        # the middle of the box is the source rendering, untouched
        mr, mc = round(box.y + box.height / 2), round(box.x + box.width / 2)
        assert tuple(rgb[mr, mc]) == (grey[mr, mc],) * 3
    # away from boxes, banner and summary panel the overlay is the grey source
    r, c = 160, 5
    assert not any(round(b.x) - 5 <= c <= round(b.x2) + 5 and round(b.y) - 5 <= r <= round(b.y2) + 5 for b in findings.boxes)
    assert tuple(rgb[r, c]) == (grey[r, c],) * 3
    assert rgb[:, :, 0].max() == 255  # some colour present at all


def test_no_boxes_means_no_box_colour_in_the_image_area() -> None:
    src = rsna_source(256)
    img = load_source_image(src)
    rgb = render_overlay(img.pixels, findings_for(src, ()), models_label="m v1")
    is_box = np.all(rgb == np.asarray(BOX_COLOUR, dtype=np.uint8), axis=-1)
    assert not is_box.any()
    with_box = render_overlay(img.pixels, findings_for(src, three_boxes(256, 256)[:1]), models_label="m v1")
    assert np.all(with_box == np.asarray(BOX_COLOUR, dtype=np.uint8), axis=-1).sum() > 100


def test_banner_and_decision_text() -> None:
    src = rsna_source(64)
    pos = overlay_text(findings_for(src, p=0.8), "cxr_classification v0.1.0")
    neg = overlay_text(findings_for(src, p=0.3), "cxr_classification v0.1.0")
    assert pos.banner[0] == "AI OUTPUT - NOT FOR PRIMARY DIAGNOSIS"
    assert "cxr_classification v0.1.0" in pos.banner[1]
    assert "0.80" in pos.summary[0] and "POSITIVE" in pos.summary[0] and "0.50" in pos.summary[0]
    assert "NEGATIVE" in neg.summary[0]
    # the banner is drawn: top rows differ from the plain rendering
    img = load_source_image(src)
    rgb = render_overlay(img.pixels, findings_for(src), models_label="x")
    grey = np.rint(img.pixels * 255).astype(np.uint8)
    assert (rgb[:4, :, 0] != grey[:4]).any()


def test_large_sources_are_downscaled_keeping_aspect() -> None:
    assert output_shape(3000, 2500) == (2048, round(2500 * 2048 / 3000), 2048 / 3000)
    assert output_shape(1024, 800) == (1024, 800, 1.0)
    src = dx_source(2600, 2100, monochrome1=False)
    findings = findings_for(src, three_boxes(2600, 2100)[:1])
    sc = build_sc(src, findings)
    rows, cols, scale = output_shape(2600, 2100)
    assert (sc.Rows, sc.Columns) == (rows, cols) == (2048, round(2100 * 2048 / 2600))
    box = findings.boxes[0]
    r, c = round((box.y + box.height / 2) * scale), round(box.x * scale)
    assert tuple(sc.pixel_array[r, c]) == BOX_COLOUR
    assert "downscaled" in sc.DerivationDescription


def test_not_analysed_and_mismatched_inputs_are_refused() -> None:
    src = rsna_source(64)
    with pytest.raises(ValueError, match="not-analysed"):
        build_sc(src, not_analysed_for(src))
    other = rsna_source(64, seed=9)
    with pytest.raises(ValueError, match=str(other.SOPInstanceUID)):
        build_sc(other, findings_for(src))
    with pytest.raises(ValueError, match="shape"):
        render_overlay(np.zeros((10, 10), np.float32), findings_for(src), models_label="x")


@pytest.mark.parametrize("charset", list(NAMES_BY_CHARSET))
def test_non_ascii_patient_name_round_trips(tmp_path: Path, charset: str) -> None:
    src = dx_source(128, 128)
    src.SpecificCharacterSet = charset_value(charset)
    src.PatientName = NAMES_BY_CHARSET[charset]
    src_path = tmp_path / "src.dcm"
    src.save_as(src_path, enforce_file_format=True)
    src = pydicom.dcmread(src_path)
    back = _save_read(build_sc(src, findings_for(src)), tmp_path)
    assert back.SpecificCharacterSet == src.SpecificCharacterSet
    assert str(back.PatientName) == NAMES_BY_CHARSET[charset]


def test_same_input_same_uids_and_pixels() -> None:
    src = rsna_source(128)
    findings = findings_for(src, three_boxes(128, 128)[:2])
    a, b = build_sc(src, findings), build_sc(src, findings)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.PixelData == b.PixelData
