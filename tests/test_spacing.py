"""The one pixel-spacing rule (models.imaging.spacing): measurements in the patient use PixelSpacing
when present, else ImagerPixelSpacing; the SR's receptor-plane descriptors use ImagerPixelSpacing first."""

from __future__ import annotations

import logging

import highdicom as hd
import pytest
from _results_data import dx_source, findings_for
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.results.sr.build import build_sr
from models.imaging.dicom_image import load_source_image
from models.imaging.spacing import PATIENT_PLANE, RECEPTOR_PLANE, pixel_spacing


def _ds(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_patient_plane_prefers_calibrated_pixel_spacing() -> None:
    both = _ds(PixelSpacing=[0.13, 0.12], ImagerPixelSpacing=[0.15, 0.14])
    assert pixel_spacing(both) == ((0.13, 0.12), "PixelSpacing")
    assert pixel_spacing(both, PATIENT_PLANE) == ((0.13, 0.12), "PixelSpacing")
    assert pixel_spacing(both, RECEPTOR_PLANE) == ((0.15, 0.14), "ImagerPixelSpacing")
    imager_only = _ds(ImagerPixelSpacing=[0.15, 0.14])
    assert pixel_spacing(imager_only) == pixel_spacing(imager_only, RECEPTOR_PLANE) == ((0.15, 0.14), "ImagerPixelSpacing")
    assert pixel_spacing(_ds()) == (None, None)


@pytest.mark.parametrize("bad", [[0, 0], [0.1], [float("nan"), 0.1], [-0.1, 0.1]])
def test_invalid_values_are_skipped_with_a_warning(bad: list[float], caplog: pytest.LogCaptureFixture) -> None:
    ds = _ds(PixelSpacing=bad, ImagerPixelSpacing=[0.15, 0.14])
    with caplog.at_level(logging.WARNING, logger="models.imaging.spacing"):
        assert pixel_spacing(ds) == ((0.15, 0.14), "ImagerPixelSpacing")
    assert any(r.attribute == "PixelSpacing" for r in caplog.records)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="WindowCenter"):
        pixel_spacing(ds, ("WindowCenter",))


def test_source_image_and_sr_follow_the_rule() -> None:
    src = dx_source()
    src.PixelSpacing = [0.13, 0.13]  # calibrated at the patient; ImagerPixelSpacing 0.15 at the detector
    image = load_source_image(src)
    assert image.pixel_spacing_mm == (0.13, 0.13) and image.spacing_source == "PixelSpacing"
    sr = build_sr(src, findings_for(src))
    (library,) = find_content_items(sr, name=codes.DCM.ImageLibrary, recursive=True)
    (entry,) = find_content_items(library, value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True)
    (vertical,) = find_content_items(entry, name=codes.DCM.VerticalPixelSpacing)
    assert float(vertical.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.15)  # receptor plane


def test_sr_leaves_out_an_invalid_receptor_spacing() -> None:
    """Before the shared rule the SR copied ImagerPixelSpacing unchecked (0 mm descriptors)."""
    src = dx_source()
    src.ImagerPixelSpacing = [0, 0]
    sr = build_sr(src, findings_for(src))
    (library,) = find_content_items(sr, name=codes.DCM.ImageLibrary, recursive=True)
    (entry,) = find_content_items(library, value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True)
    assert find_content_items(entry, name=codes.DCM.VerticalPixelSpacing) == []
