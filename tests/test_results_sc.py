"""Secondary Capture overlay (dicom_node.results.sc.build, dicom_node.results.sc.render, overlay_heatmap, overlay_text)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _results_data import (
    NAMES_BY_CHARSET,
    charset_value,
    dciodvfy,
    dx_source,
    findings_for,
    not_analysed_for,
    rsna_source,
    three_boxes,
)

from dicom_node.results.common import models_label
from dicom_node.results.sc.build import build_sc
from dicom_node.results.sc.encode import ScEncoding
from dicom_node.results.sc.heatmap import (
    ALPHA_LUT,
    COLOUR_LUT,
    HEATMAP_CUTOFF,
    blend_heatmap,
    blend_heatmap_over_grey,
    interpolation_matrix,
    upsample,
)
from dicom_node.results.sc.render import (
    BANNER_TEXT,
    BOX_COLOUR,
    NEGATIVE_COLOUR,
    POSITIVE_COLOUR,
    WARNING_COLOUR,
    output_shape,
    overlay_text,
    place_labels,
    render_overlay,
)
from dicom_node.results.sc.text import clear_caches
from models.findings import Heatmap
from models.imaging.dicom_image import load_source_image

#: the SC stored losslessly, for the tests that compare its pixels exactly (JPEG: test_sc_jpeg_*)
UNCOMPRESSED = ScEncoding("explicit-vr-little-endian")
#: dciodvfy warnings caused by the test sources' own values (see test_results_validation)
ACCEPTED_WARNINGS = ("Study ID", "Retired Person Name form")


def _save_read(ds: pydicom.Dataset, tmp_path: Path, name: str = "sc.dcm") -> pydicom.Dataset:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _grey_u8(src: pydicom.Dataset) -> np.ndarray:
    return np.rint(load_source_image(src).pixels * 255).astype(np.uint8)


def _grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _find_image_top(rgb: np.ndarray, grey: np.ndarray, column: int) -> int | None:
    """The row offset at which ``grey`` sits in ``rgb`` judged by one column (None if nowhere)."""
    rows = grey.shape[0]
    target = _grey_rgb(grey)[:, column]
    for top in range(rgb.shape[0] - rows + 1):
        if np.array_equal(rgb[top : top + rows, column], target):
            return top
    return None


def _peaked_heatmap(region: tuple[float, float, float, float], peak: tuple[int, int], cells: int = 6) -> Heatmap:
    """A smooth-ish Grad-CAM-like map: 1.0 at ``peak`` (row, col), falling off over neighbouring cells."""
    r, c = np.mgrid[0:cells, 0:cells]
    values = np.exp(-((r - peak[0]) ** 2 + (c - peak[1]) ** 2) / 1.5).astype(np.float32)
    return Heatmap(values / values.max(), *region)


# ------------------------------------------------------------------ the DICOM object
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
    assert sc.PhotometricInterpretation == "YBR_FULL_422"  # JPEG Baseline by default (test_sc_jpeg_*)
    assert sc.Columns == 256 and sc.Rows > 256  # text bands above and below the image
    assert sc.pixel_array.shape == (sc.Rows, 256, 3)


def test_geometry_is_not_claimed(tmp_path: Path) -> None:
    """The canvas is not the source's pixel grid: no spacing, and the source reference says so."""
    src = dx_source(320, 256)  # carries ImagerPixelSpacing and PatientOrientation
    findings = findings_for(src, three_boxes(320, 256)[:1])
    sc = _save_read(build_sc(src, findings), tmp_path)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing", "PixelAspectRatio",
                    "ImagePositionPatient", "ImageOrientationPatient"):  # fmt: skip
        assert keyword not in sc, keyword
    assert sc.SourceImageSequence[0].SpatialLocationsPreserved == "NO"
    assert list(sc.PatientOrientation) == ["L", "F"]  # directions are the source's (bands add rows only)
    label = models_label(findings.models)
    layout = render_overlay(load_source_image(src).pixels, findings, models_label=label).layout
    rows = re.search(r"rows (\d+)-(\d+) of this one", sc.DerivationDescription)
    assert rows is not None
    assert (int(rows[1]) - 1, int(rows[2])) == (layout.image_top, layout.image_bottom)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not on PATH")
@pytest.mark.parametrize("case", ["positive-heatmap", "negative", "downscaled"])
def test_sc_passes_dciodvfy(tmp_path: Path, case: str) -> None:
    if case == "downscaled":
        src = dx_source(2200, 1800, monochrome1=False)
        findings = findings_for(src, three_boxes(2200, 1800)[:2])
    else:
        src = rsna_source(256)
        positive = case == "positive-heatmap"
        heatmap = _peaked_heatmap((0, 0, 256, 256), (2, 2)) if positive else None
        boxes = three_boxes(256, 256) if positive else ()
        findings = findings_for(src, boxes, p=0.8 if positive else 0.2, heatmap=heatmap, two_class=True)
    path = tmp_path / "sc.dcm"
    build_sc(src, findings).save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert [w for w in warnings if not any(a in w for a in ACCEPTED_WARNINGS)] == []


# ------------------------------------------------------------------ every image pixel stays visible
@pytest.mark.parametrize("make", [lambda: rsna_source(256), lambda: dx_source(320, 256)], ids=["rsna", "dx"])
def test_image_area_is_the_source_pixel_for_pixel(make, tmp_path: Path) -> None:
    """No panel over the image: without boxes or heatmap the SC holds the whole source, unchanged."""
    src = make()
    for p in (0.2, 0.8):  # negative and positive (no boxes, no heatmap)
        sc = _save_read(build_sc(src, findings_for(src, (), p=p), encoding=UNCOMPRESSED), tmp_path)
        grey = _grey_u8(src)
        top = _find_image_top(sc.pixel_array, grey, column=grey.shape[1] // 2)
        assert top is not None, "the source image is not in the SC unchanged"
        image = sc.pixel_array[top : top + grey.shape[0]]
        assert np.array_equal(image, _grey_rgb(grey))
        assert top > 0 and sc.Rows - top - grey.shape[0] > 0  # text above and below the image


def test_image_area_changes_only_at_boxes_and_their_labels() -> None:
    src = dx_source(320, 256)
    findings = findings_for(src, three_boxes(320, 256))
    img = load_source_image(src)
    overlay = render_overlay(img.pixels, findings, models_label="m v1")
    lay = overlay.layout
    image = overlay.rgb[lay.image_top : lay.image_bottom]
    changed = np.any(image != _grey_rgb(_grey_u8(src)), axis=-1)
    line = max(2, round(0.003 * 320)) + 2  # outline incl. its black frame
    allowed = np.zeros_like(changed)
    label_h, label_w = 30, 70  # generous: a score label at this size is ~12 x 55 px
    for b in findings.boxes:
        x0, y0, x1, y1 = round(b.x), round(b.y), round(b.x2), round(b.y2)
        allowed[max(0, y0 - label_h) : y1 + label_h, max(0, x0 - label_w) : x1 + label_w] = True  # labels hug their box
        interior = np.zeros_like(changed)
        interior[y0 + line + label_h : y1 - line - label_h, x0 + line : x1 - line] = True
        assert not (changed & interior).any(), "the inside of a box is covered"
    assert not (changed & ~allowed).any(), "pixels away from every box were changed"
    outlines = np.zeros_like(changed)
    for b in findings.boxes:
        x0, y0, x1, y1 = round(b.x) - 1, round(b.y) - 1, round(b.x2), round(b.y2)
        outlines[y0 : y1 + 1, x0 : x1 + 1] = True
        outlines[y0 + line : y1 + 1 - line, x0 + line : x1 + 1 - line] = False
    assert np.count_nonzero(changed & ~outlines) <= len(findings.boxes) * 12 * 60  # at most one label each
    # outlines: amber on the left edge halfway down every box
    for b in findings.boxes:
        r, c = round(b.y + b.height / 2), round(b.x)
        assert tuple(image[r, c]) == BOX_COLOUR


def test_box_is_burned_in_where_the_findings_say(tmp_path: Path) -> None:
    src = dx_source(320, 256)
    findings = findings_for(src, three_boxes(320, 256))
    sc = _save_read(build_sc(src, findings, encoding=UNCOMPRESSED), tmp_path)
    grey = _grey_u8(src)
    top = _find_image_top(sc.pixel_array, grey, column=5)
    assert top is not None
    rgb = sc.pixel_array[top:]
    for box in findings.boxes:
        r, c = round(box.y + box.height / 2), round(box.x)
        assert tuple(rgb[r, c]) == BOX_COLOUR
        assert tuple(rgb[r, c]) != (grey[r, c],) * 3
        mr, mc = round(box.y + box.height / 2), round(box.x + box.width / 2)
        assert tuple(rgb[mr, mc]) == (grey[mr, mc],) * 3


def test_labels_do_not_cover_other_boxes_outlines() -> None:
    # B sits 4 px under A: a label above B would lie on A's bottom edge
    a, b = (40, 40, 139, 99), (40, 104, 139, 163)
    (ax, ay), (bx, by) = place_labels([a, b], [(60, 14), (60, 14)], (256, 256), gap=3, line=5)
    a_bottom = (a[0], a[3] - 4, a[2], a[3])
    assert not (bx <= a_bottom[2] and a_bottom[0] <= bx + 59 and by <= a_bottom[3] and a_bottom[1] <= by + 13)
    assert ay + 14 <= a[1]  # A's own label: above A, as preferred
    # rendered: every pixel of both outlines' amber core stays amber
    src = rsna_source(256)
    findings = findings_for(src, ((40, 40, 100, 60), (40, 104, 100, 60)), scores=(0.9, 0.8))
    overlay = render_overlay(load_source_image(src).pixels, findings, models_label="m")
    image = overlay.rgb[overlay.layout.image_top : overlay.layout.image_bottom]
    for y0, y1 in ((40, 99), (104, 163)):
        for row in (y0, y1):  # top and bottom edges, first amber row
            assert np.all(image[row, 40:140] == BOX_COLOUR), row


def test_no_boxes_means_no_box_colour() -> None:
    src = rsna_source(256)
    img = load_source_image(src)
    rgb = render_overlay(img.pixels, findings_for(src, ()), models_label="m v1").rgb
    assert not np.all(rgb == np.asarray(BOX_COLOUR, dtype=np.uint8), axis=-1).any()
    with_box = render_overlay(img.pixels, findings_for(src, three_boxes(256, 256)[:1]), models_label="m v1").rgb
    assert np.all(with_box == np.asarray(BOX_COLOUR, dtype=np.uint8), axis=-1).sum() > 100


def test_large_sources_are_downscaled_keeping_aspect() -> None:
    assert output_shape(3000, 2500) == (2048, round(2500 * 2048 / 3000), 2048 / 3000)
    assert output_shape(1024, 800) == (1024, 800, 1.0)
    src = dx_source(2600, 2100, monochrome1=False)
    findings = findings_for(src, three_boxes(2600, 2100)[:1])
    sc = build_sc(src, findings, encoding=UNCOMPRESSED)
    rows, cols, scale = output_shape(2600, 2100)
    layout = render_overlay(load_source_image(src).pixels, findings, models_label=models_label(findings.models)).layout
    assert (layout.image_rows, layout.image_columns) == (rows, cols) == (2048, round(2100 * 2048 / 2600))
    assert (sc.Rows, sc.Columns) == (layout.canvas_rows, cols)
    box = findings.boxes[0]
    r, c = round((box.y + box.height / 2) * scale), round(box.x * scale)
    assert tuple(sc.pixel_array[layout.image_top + r, c]) == BOX_COLOUR
    assert "downscaled" in sc.DerivationDescription


# ------------------------------------------------------------------ heatmap
def _colour_amount(rgb: np.ndarray, grey: np.ndarray) -> np.ndarray:
    return np.abs(rgb.astype(np.int32) - grey[:, :, None].astype(np.int32)).sum(axis=-1)


@pytest.mark.parametrize("peak", [(1, 4), (4, 1), (2, 2)])
def test_heatmap_is_drawn_over_its_region_around_its_peak(peak: tuple[int, int]) -> None:
    src = dx_source(320, 256)
    region = (32.0, 64.0, 192.0, 192.0)  # the square the classifier saw; cells of 32 px
    findings = findings_for(src, (), p=0.9, heatmap=_peaked_heatmap(region, peak), two_class=True)
    overlay = render_overlay(load_source_image(src).pixels, findings, models_label="m")
    lay = overlay.layout
    amount = _colour_amount(overlay.rgb[lay.image_top : lay.image_bottom], _grey_u8(src))
    rows, cols = np.nonzero(amount)
    assert rows.size > 500
    x, y, w, h = region
    assert rows.min() >= y and rows.max() < y + h and cols.min() >= x and cols.max() < x + w  # inside its region
    cy, cx = np.average(rows, weights=amount[rows, cols]), np.average(cols, weights=amount[rows, cols])
    peak_y, peak_x = y + (peak[0] + 0.5) * h / 6, x + (peak[1] + 0.5) * w / 6
    assert abs(cy - peak_y) < h / 6 and abs(cx - peak_x) < w / 6, (cy, cx, peak_y, peak_x)
    assert overlay.text.heatmap is not None and "Grad-CAM of cxr_classification" in overlay.text.heatmap


def test_heatmap_only_on_positive_images_that_carry_one() -> None:
    src = rsna_source(256)
    grey = _grey_u8(src)
    heatmap = _peaked_heatmap((0, 0, 256, 256), (2, 3))
    pixels = load_source_image(src).pixels
    cases = {
        "positive+map": findings_for(src, p=0.8, heatmap=heatmap, two_class=True),
        "positive": findings_for(src, p=0.8, two_class=True),
        # a negative Findings may carry a map (the contract allows it): it is not drawn
        "negative+map": findings_for(src, p=0.3, heatmap=heatmap, two_class=True, box_gating="all"),
    }
    coloured = {}
    for name, f in cases.items():
        ov = render_overlay(pixels, f, models_label="m")
        image = ov.rgb[ov.layout.image_top : ov.layout.image_bottom]
        coloured[name] = int(np.count_nonzero(_colour_amount(image, grey)))
        assert (ov.text.heatmap is not None) == (name == "positive+map")
    assert coloured["positive+map"] > 1000
    assert coloured["positive"] == 0 and coloured["negative+map"] == 0


def test_heatmap_is_smooth_and_transparent_where_low() -> None:
    # a step between neighbouring cells: a blocky upsampling would jump by 1.0 at the cell edge
    values = np.zeros((4, 4), np.float32)
    values[:, 2:] = 1.0
    _, _, grid = upsample(values, (0.0, 0.0, 256.0, 256.0), (256, 256))
    assert grid.shape == (256, 256) and grid.min() >= 0.0 and grid.max() <= 1.0
    assert np.abs(np.diff(grid, axis=1)).max() < 0.06
    # constant maps stay constant (interpolation weights sum to 1), including near the region's edges
    _, _, flat = upsample(np.full((5, 5), 0.6, np.float32), (10.5, 3.25, 100.0, 77.0), (120, 120))
    assert np.allclose(flat, 0.6, atol=1e-5)
    m = interpolation_matrix(np.linspace(-0.5, 4.5, 41), 5)
    assert np.allclose(m.sum(axis=1), 1.0, atol=1e-6)
    # below the cut-off nothing changes, pixel for pixel
    rgb = np.full((64, 64, 3), 90, np.uint8)
    low = np.full((4, 4), HEATMAP_CUTOFF * 0.9, np.float32)
    assert blend_heatmap(rgb, low, (0, 0, 64, 64)) == 0 and np.all(rgb == 90)
    # opacity grows with the value and never hides the image completely
    assert ALPHA_LUT[0] == 0 and np.all(np.diff(ALPHA_LUT.astype(int)) >= 0) and 0 < ALPHA_LUT[255] < 255
    ramp = np.tile(np.linspace(0.0, 1.0, 8, dtype=np.float32), (8, 1))
    blend_heatmap(rgb, ramp, (0, 0, 64, 64))
    change = np.abs(rgb.astype(int) - 90).sum(axis=-1)[32]
    assert change[:8].max() == 0 and change[40] < change[63]


def test_rendered_heatmap_has_no_cell_edges() -> None:
    """As drawn (sparse exact samples + bilinear): a step between two cells fades over many pixels."""
    values = np.full((4, 4), 0.5, np.float32)
    values[:, 2:] = 1.0
    rgb = np.full((600, 600, 3), 128, np.uint8)
    assert blend_heatmap(rgb, values, (0.0, 0.0, 600.0, 600.0)) == 600 * 600
    row = rgb[300].astype(int)
    assert np.abs(np.diff(row, axis=0)).max() <= 4  # nearest-cell upsampling jumps by ~100 at x = 300
    assert np.abs(row[0] - row[-1]).sum() > 100  # yet the two halves differ clearly
    # and it matches the exact interpolation at every pixel, coloured and blended by the tables
    _, _, exact = upsample(values, (0.0, 0.0, 600.0, 600.0), (600, 600))
    index = np.floor(exact * 255.0 + 0.5).astype(np.uint8)
    a = ALPHA_LUT[index][:, :, None].astype(int)
    expected = (128 * (255 - a) + COLOUR_LUT[index].astype(int) * a + 127) // 255
    assert np.abs(rgb.astype(int) - expected).max() <= 3


def test_heatmap_outside_the_image_is_clipped() -> None:
    rgb = np.full((50, 40, 3), 100, np.uint8)
    # a letterbox-style region larger than the image on every side
    n = blend_heatmap(rgb, np.ones((4, 4), np.float32), (-20.0, -30.0, 80.0, 110.0))
    assert n == 50 * 40 and not np.all(rgb == 100)
    assert blend_heatmap(rgb, np.ones((4, 4), np.float32), (100.0, 100.0, 10.0, 10.0)) == 0


# ------------------------------------------------------------------ text
def test_banner_decision_gating_and_heatmap_text() -> None:
    src = rsna_source(64)
    label = "cxr_classification v0.1.0+0123456789ab"
    pos = overlay_text(findings_for(src, three_boxes(64, 64)[:2], p=0.8, two_class=True), label)
    neg = overlay_text(findings_for(src, p=0.3, two_class=True), label)
    neg_all = overlay_text(findings_for(src, three_boxes(64, 64)[:1], p=0.3, box_gating="all"), label)
    assert pos.banner == (BANNER_TEXT, f"Models: {label}") == neg.banner
    assert pos.summary[0] == "Pneumonia probability 0.80 (threshold 0.50): POSITIVE"
    assert neg.summary[0] == "Pneumonia probability 0.30 (threshold 0.50): NEGATIVE"
    assert pos.summary[1].startswith("Lung opacity boxes: 2 (detector score >= 0.50")
    assert "shown only on positive images" in pos.summary[1]
    assert neg.summary[1] == "Lung opacity boxes: 0 shown (boxes are shown only on positive images)"
    assert neg_all.summary[1].startswith("Lung opacity boxes: 1 ") and "whatever" in neg_all.summary[1]
    assert "Opacity probability 0.30" in neg_all.summary[0]
    assert pos.heatmap is None  # no map in these findings
    with_map = overlay_text(findings_for(src, p=0.8, heatmap=_peaked_heatmap((0, 0, 64, 64), (1, 1))), label)
    assert with_map.heatmap is not None
    assert "Grad-CAM of cxr_classification" in with_map.heatmap and "not a segmentation" in with_map.heatmap


def _has_colour(band: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(band == np.asarray(colour, dtype=np.uint8), axis=-1).any())


def test_text_is_drawn_in_the_bands_in_its_colours() -> None:
    src = rsna_source(512)
    pixels = load_source_image(src).pixels
    for p, colour, other in ((0.8, POSITIVE_COLOUR, NEGATIVE_COLOUR), (0.2, NEGATIVE_COLOUR, POSITIVE_COLOUR)):
        ov = render_overlay(pixels, findings_for(src, p=p), models_label="m")
        header, footer = ov.rgb[: ov.layout.image_top], ov.rgb[ov.layout.image_bottom :]
        assert _has_colour(header, WARNING_COLOUR) and not _has_colour(footer, WARNING_COLOUR)
        assert _has_colour(footer, colour) and not _has_colour(footer, other)
        assert header.shape[0] >= 2 * 10 and footer.shape[0] >= 2 * 10  # two text rows each at least


def test_long_text_wraps_inside_the_canvas() -> None:
    src = rsna_source(256)
    long_label = ", ".join(f"model_{i} v1.0.0+0123456789ab" for i in range(6))
    short = render_overlay(load_source_image(src).pixels, findings_for(src), models_label="m")
    wrapped = render_overlay(load_source_image(src).pixels, findings_for(src), models_label=long_label)
    assert wrapped.layout.image_top > short.layout.image_top  # more header rows, same width
    assert wrapped.rgb.shape[1] == short.rgb.shape[1] == 256


# ------------------------------------------------------------------ inputs, charsets, determinism
def test_not_analysed_and_mismatched_inputs_are_refused() -> None:
    src = rsna_source(64)
    with pytest.raises(ValueError, match="not-analysed"):
        build_sc(src, not_analysed_for(src))
    other = rsna_source(64, seed=9)
    with pytest.raises(ValueError, match=str(other.SOPInstanceUID)):
        build_sc(other, findings_for(src))
    with pytest.raises(ValueError, match="shape"):
        render_overlay(np.zeros((10, 10), np.float32), findings_for(src), models_label="x")
    with pytest.raises(ValueError, match="rgb must be"):
        blend_heatmap(np.zeros((4, 4), np.uint8), np.ones((2, 2), np.float32), (0, 0, 4, 4))
    with pytest.raises(ValueError, match="positive size"):
        upsample(np.ones((2, 2), np.float32), (0, 0, 0, 4), (4, 4))


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


def test_same_input_same_uids_and_pixels_with_or_without_caches() -> None:
    src = rsna_source(128)
    heatmap = _peaked_heatmap((0, 0, 128, 128), (3, 2))
    findings = findings_for(src, three_boxes(128, 128)[:2], p=0.9, heatmap=heatmap, two_class=True)
    a = build_sc(src, findings)
    clear_caches()
    b = build_sc(src, findings)
    c = build_sc(src, findings)  # cached bands and labels
    assert a.SOPInstanceUID == b.SOPInstanceUID == c.SOPInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.PixelData == b.PixelData == c.PixelData


@pytest.mark.parametrize("seed", range(6))
def test_blend_over_grey_is_pixel_for_pixel_the_pasted_blend(seed: int) -> None:
    """The renderer's table lookup (heatmap index x grey -> RGBX) equals Pillow's paste through the
    opacity mask on the same grey image, including regions that leave the image and 1:1 samples."""
    rng = np.random.default_rng(seed)
    rows, cols = (int(v) for v in rng.integers(40, 400, size=2))
    grey = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
    cells = int(rng.integers(2, 8))
    values = rng.random((cells, cells)).astype(np.float32)
    values /= values.max()
    region = (float(rng.uniform(-50, cols / 2)), float(rng.uniform(-50, rows / 2)),
              float(rng.uniform(20, cols)), float(rng.uniform(20, rows)))  # fmt: skip
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    n_expected = blend_heatmap(expected, values, region)
    rgbx = np.zeros((rows, cols), dtype=np.uint32)
    np.multiply(grey, np.uint32(0x010101), out=rgbx)
    n = blend_heatmap_over_grey(rgbx, grey, values, region)
    assert n == n_expected > 0
    np.testing.assert_array_equal(rgbx.view(np.uint8).reshape(rows, cols, 4)[:, :, :3], expected)
