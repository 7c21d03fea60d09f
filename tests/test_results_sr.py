"""TID 1500 SR (dicom_node.results_sr) and the build_results facade: content, round trip, identity."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from _results_data import (
    MODELS,
    NAMES_BY_CHARSET,
    charset_value,
    dx_source,
    findings_for,
    not_analysed_for,
    rsna_source,
    three_boxes,
)
from highdicom.sr import CodedConcept
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes

from dicom_node import uids
from dicom_node.results import build_results
from dicom_node.results_sr import (
    ABSENT,
    CLASS_PROBABILITY_CONCEPTS,
    LUNG_OPACITY,
    NOT_EVALUATED,
    PRESENT,
    PRIVATE_SCHEME,
    PROBABILITY,
    THRESHOLD_VALUE,
    build_sr,
)
from models.findings import LUNG_OPACITY_INDEX, RSNA_CLASSES, ModelInfo

COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyInstanceUID",
)


def _write_read(ds: pydicom.Dataset, tmp_path: Path, name: str = "sr.dcm") -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _algorithm_names(item: pydicom.Dataset) -> list[str]:
    return [i.TextValue for i in find_content_items(item, name=CodedConcept("111001", "DCM", "Algorithm Name"), recursive=True)]


@pytest.mark.parametrize("n_boxes", [0, 1, 3])
@pytest.mark.parametrize("source_kind", ["rsna", "dx"])
def test_srread_round_trip_boxes_equal_findings(tmp_path: Path, n_boxes: int, source_kind: str) -> None:
    src = rsna_source(256) if source_kind == "rsna" else dx_source(320, 256)
    boxes = three_boxes(int(src.Rows), int(src.Columns))[:n_boxes]
    findings = findings_for(src, boxes)
    path = _write_read(build_sr(src, findings), tmp_path)

    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == n_boxes
    tracking = set()
    for group, box in zip(groups, findings.boxes, strict=True):
        assert group.reference_type == codes.DCM.ImageRegion
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(group.roi.value, np.asarray(box.polyline()), rtol=0, atol=1e-4)
        assert group.roi.value.shape == (5, 2)
        np.testing.assert_array_equal(group.roi.value[0], group.roi.value[-1])
        (source_item,) = group.roi.ContentSequence  # SELECTED FROM: the source image
        ref = source_item.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == src.SOPClassUID
        assert group.finding_type.value == "112001"
        (prob,) = group.get_measurements(name=PROBABILITY)
        assert prob.value == pytest.approx(box.score)
        assert "cxr_opacity_detection" in _algorithm_names(group[0])
        tracking.add(group.tracking_uid)
    assert len(tracking) == n_boxes  # one distinct tracking UID per box


@pytest.mark.parametrize(("threshold", "expected"), [(0.5, PRESENT), (0.7, PRESENT), (0.71, ABSENT)])
def test_image_level_decision_probability_and_threshold(tmp_path: Path, threshold: float, expected: CodedConcept) -> None:
    src = rsna_source(128)
    path = _write_read(build_sr(src, findings_for(src, p=0.7, threshold=threshold)), tmp_path)
    (group,) = hd.sr.srread(path).content.get_image_measurement_groups()
    assert group.finding_type == LUNG_OPACITY
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == LUNG_OPACITY
    assert evaluation.value == expected
    (prob,) = group.get_measurements(name=PROBABILITY)
    (thr,) = group.get_measurements(name=THRESHOLD_VALUE)
    assert prob.value == pytest.approx(0.7)
    assert thr.value == pytest.approx(threshold)
    assert prob.unit.value == "1" and prob.unit.scheme_designator == "UCUM"
    assert "cxr_classification" in _algorithm_names(group[0])
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [src.SOPInstanceUID]


#: Distinct class probabilities with more digits than a DS value holds, to check the exact round trip.
CLASS_P = dict(zip(RSNA_CLASSES, (0.12345678901234567, 0.2098765432109876, 0.6666753677766667), strict=True))


def _private_num_items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every NUM content item of ``ds`` whose concept name is in our private coding scheme."""
    return [
        item
        for item in find_content_items(ds, value_type=hd.sr.ValueTypeValues.NUM, recursive=True)
        if item.ConceptNameCodeSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
    ]


def test_class_probabilities_are_in_the_image_level_group(tmp_path: Path) -> None:
    src = rsna_source(128)
    findings = dataclasses.replace(
        findings_for(src, three_boxes(128, 128)[:1]),
        class_probabilities=CLASS_P,
        probability=CLASS_P[RSNA_CLASSES[LUNG_OPACITY_INDEX]],
    )
    path = _write_read(build_sr(src, findings), tmp_path)
    sr = hd.sr.srread(path)
    (group,) = sr.content.get_image_measurement_groups()
    for name in RSNA_CLASSES:
        (measurement,) = group.get_measurements(name=CLASS_PROBABILITY_CONCEPTS[name])
        assert measurement.name.meaning == f"Probability of {name}"
        assert measurement.name.scheme_designator == PRIVATE_SCHEME
        assert measurement.value == findings.class_probabilities[name]  # FD: exact
        assert float(measurement[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(CLASS_P[name], abs=1e-12)
        assert measurement.unit.value == "1" and measurement.unit.scheme_designator == "UCUM"
        assert _algorithm_names(measurement[0]) == ["cxr_classification"]
    # three distinct concepts, in RSNA_CLASSES order, after the unchanged probability and threshold
    names = [m.name.value for m in group.get_measurements()]
    assert names == [PROBABILITY.value, THRESHOLD_VALUE.value, *(CLASS_PROBABILITY_CONCEPTS[n].value for n in RSNA_CLASSES)]
    assert len(set(names)) == len(names)
    (prob,) = group.get_measurements(name=PROBABILITY)
    assert prob.value == findings.probability
    # nowhere else in the document (not in the box groups)
    assert len(_private_num_items(sr)) == len(RSNA_CLASSES)
    # the private scheme is declared (PS3.3 C.12.1.1.4)
    (scheme,) = pydicom.dcmread(path).CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == PRIVATE_SCHEME
    assert scheme.CodingSchemeName


@pytest.mark.parametrize("with_probabilities", [False, True])
def test_not_analysed_sr_has_no_class_probabilities(tmp_path: Path, with_probabilities: bool) -> None:
    src = rsna_source(128)
    refused = not_analysed_for(src)
    if with_probabilities:  # Findings allows a refused image to keep the classifier's output
        refused = dataclasses.replace(refused, class_probabilities=CLASS_P)
        assert refused.class_probabilities
    path = _write_read(build_sr(src, refused), tmp_path)
    ds = pydicom.dcmread(path)
    assert _private_num_items(ds) == []
    assert "CodingSchemeIdentificationSequence" not in ds
    (group,) = hd.sr.srread(path).content.get_image_measurement_groups()
    for concept in CLASS_PROBABILITY_CONCEPTS.values():
        assert group.get_measurements(name=concept) == []


def test_document_identity_observer_and_library(tmp_path: Path) -> None:
    src = dx_source()
    findings = findings_for(src, three_boxes(int(src.Rows), int(src.Columns))[:1])
    ds = pydicom.dcmread(_write_read(build_sr(src, findings), tmp_path))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.Modality == "SR"
    assert ds.Manufacturer == "cxr-ai-node"
    assert ds.ManufacturerModelName == "cxr_classification+cxr_opacity_detection"
    assert list(ds.SoftwareVersions)[1:] == [f"{m.name} {m.version}+{m.digest}" for m in MODELS]
    assert ds.SeriesDescription == "AI findings (SR)"
    assert ds.SeriesNumber == 9901
    assert ds.InstanceNumber == src.InstanceNumber
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    for keyword in COPIED:
        assert ds[keyword].value == src[keyword].value, keyword
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID

    sr = hd.sr.srread(_write_read(ds, tmp_path, "again.dcm"))
    (observer,) = sr.content.get_observer_contexts()
    attrs = observer.observer_identifying_attributes
    assert observer.observer_type == codes.DCM.Device
    assert attrs.uid == uids.device_observer_uid(MODELS)
    assert attrs.name == "cxr-ai-node"
    assert attrs.model_name == "cxr_classification+cxr_opacity_detection"
    assert "0.1.0" in attrs.serial_number

    library = find_content_items(ds, name=codes.DCM.ImageLibrary, recursive=True)
    assert len(library) == 1
    images = find_content_items(library[0], value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True)
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [src.SOPInstanceUID]
    rows = find_content_items(images[0], name=codes.DCM.PixelDataRows)
    assert rows[0].MeasuredValueSequence[0].NumericValue == src.Rows
    spacing = find_content_items(images[0], name=codes.DCM.VerticalPixelSpacing)
    assert float(spacing[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(src.ImagerPixelSpacing[0])


def test_not_analysed_sr_says_why_and_has_no_rois(tmp_path: Path) -> None:
    src = rsna_source(128)
    reason = "lateral view (ViewPosition LL)"
    results = build_results(src, not_analysed_for(src, reason))
    assert len(results) == 1  # SR only, no overlay
    path = _write_read(results[0], tmp_path)
    sr = hd.sr.srread(path)
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    assert [q.value for q in group.get_qualitative_evaluations()] == [NOT_EVALUATED]
    assert group.get_measurements() == []
    texts = find_content_items(group[0], value_type=hd.sr.ValueTypeValues.TEXT)
    assert f"not analysed: {reason}" in [t.TextValue for t in texts]


def test_build_results_gives_sr_and_sc_with_deterministic_uids() -> None:
    src = rsna_source(128)
    findings = findings_for(src, three_boxes(128, 128)[:2])
    first = build_results(src, findings)
    second = build_results(src, findings)
    assert [d.Modality for d in first] == ["SR", "OT"]
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in second]
    assert [d.SeriesInstanceUID for d in first] == [d.SeriesInstanceUID for d in second]
    assert len({d.SOPInstanceUID for d in first}) == 2
    assert all(d.StudyInstanceUID == src.StudyInstanceUID for d in first)
    assert all(d.Manufacturer == "cxr-ai-node" for d in first)

    newer = (ModelInfo("cxr_classification", "0.2.0", MODELS[0].digest), MODELS[1])
    third = build_results(src, findings_for(src, three_boxes(128, 128)[:2], models=newer))
    assert not {d.SOPInstanceUID for d in first} & {d.SOPInstanceUID for d in third}
    assert not {d.SeriesInstanceUID for d in first} & {d.SeriesInstanceUID for d in third}


def test_two_instances_of_one_study_share_the_result_series() -> None:
    a = dx_source(seed=5)
    b = dx_source(seed=5, rows=300)  # same study (seed), other SOP Instance UID
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    ra = build_results(a, findings_for(a))
    rb = build_results(b, findings_for(b))
    assert [d.SeriesInstanceUID for d in ra] == [d.SeriesInstanceUID for d in rb]
    assert ra[0].SOPInstanceUID != rb[0].SOPInstanceUID


@pytest.mark.parametrize("charset", list(NAMES_BY_CHARSET))
def test_non_ascii_patient_name_round_trips(tmp_path: Path, charset: str) -> None:
    src = rsna_source(128)
    src.SpecificCharacterSet = charset_value(charset)
    src.PatientName = NAMES_BY_CHARSET[charset]
    src.ReferringPhysicianName = NAMES_BY_CHARSET[charset]
    # go through bytes, as the node does: the source is what a C-STORE delivered
    src_path = tmp_path / "src.dcm"
    src.save_as(src_path, enforce_file_format=True)
    src = pydicom.dcmread(src_path)
    assert str(src.PatientName) == NAMES_BY_CHARSET[charset]

    path = _write_read(build_sr(src, findings_for(src, three_boxes(128, 128)[:1])), tmp_path)
    back = pydicom.dcmread(path)
    assert back.SpecificCharacterSet == src.SpecificCharacterSet
    assert str(back.PatientName) == NAMES_BY_CHARSET[charset]
    assert str(back.ReferringPhysicianName) == NAMES_BY_CHARSET[charset]
    raw = path.read_bytes()
    if charset == "ISO_IR 192":
        assert NAMES_BY_CHARSET[charset].encode("utf-8") in raw
    elif charset == "ISO_IR 100":
        assert NAMES_BY_CHARSET[charset].encode("latin-1") in raw
    else:
        assert b"\x1b$B" in raw  # ISO 2022 escape to JIS X 0208 (IR 87)
    assert hd.sr.srread(path).content.get_planar_roi_measurement_groups()


def test_mismatched_inputs_are_rejected() -> None:
    a, b = rsna_source(128, seed=1), rsna_source(128, seed=2)
    with pytest.raises(ValueError, match=str(b.SOPInstanceUID)):
        build_sr(b, findings_for(a))
    with pytest.raises(ValueError, match="1.5"):
        findings_for(a, threshold=1.5)
    with pytest.raises(ValueError, match="nan"):
        findings_for(a, threshold=float("nan"))
    other_size = findings_for(dx_source(200, 200))
    dx = dx_source(320, 256)
    dx.SOPInstanceUID = other_size.sop_instance_uid
    with pytest.raises(ValueError, match="200x200"):
        build_sr(dx, other_size)
