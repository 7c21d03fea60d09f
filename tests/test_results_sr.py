"""TID 1500 SR (dicom_node.results.sr.build) and the build_results facade: content, round trip, identity,
what OHIF v3 reads from it (tests/sr_ohif_view.py), "not evaluated" SRs."""

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
from highdicom.sr.utils import collect_evidence, find_content_items
from pydicom.sr.codedict import codes
from sr_ohif_view import OhifCrash, ohif_measurements, ohif_problems

from dicom_node.results import uids
from dicom_node.results.build import build_results
from dicom_node.results.sr.build import (
    ABSENT,
    NOT_EVALUATED,
    PNEUMONIA,
    PRESENT,
    PRIVATE_SCHEME,
    PROBABILITY,
    THRESHOLD_VALUE,
    build_not_evaluated_sr,
    build_sr,
    whole_image_polyline,
)
from dicom_node.results.sr.codes import (
    BOX_GATING,
    BOX_GATING_CODES,
    BOX_PROBABILITY,
    BOX_SCORE_THRESHOLD,
    OPACITY,
    NotEvaluatedReason,
    class_probability_concept,
)
from dicom_node.results.sr.read import read_sr
from models.findings import RSNA_CLASSES, Findings, ModelInfo

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
ALGORITHM_NAME = CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = CodedConcept("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = CodedConcept("111002", "DCM", "Algorithm Parameters")


def _write_read(ds: pydicom.Dataset, tmp_path: Path, name: str = "sr.dcm") -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _texts(item: pydicom.Dataset, concept: CodedConcept) -> list[str]:
    return [i.TextValue for i in find_content_items(item, name=concept)]


def _groups(sr: hd.sr.Comprehensive3DSR) -> tuple[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations, list]:
    """(image-level group, box groups): every group is a TID 1410 planar ROI group; the image-level
    one is first and carries the Threshold Value, each box group the box probability."""
    groups = sr.content.get_planar_roi_measurement_groups()
    image = [g for g in groups if g.get_measurements(name=THRESHOLD_VALUE)]
    boxes = [g for g in groups if g.get_measurements(name=BOX_PROBABILITY)]
    assert len(image) == 1 and groups[0] is image[0] and len(image) + len(boxes) == len(groups)
    return image[0], boxes


def _sources() -> list[tuple[str, pydicom.Dataset]]:
    return [("rsna", rsna_source(256)), ("dx", dx_source(320, 256))]


# ----------------------------------------------------------------------------------- what OHIF reads
def _all_kinds_of_sr() -> list[tuple[str, pydicom.Dataset]]:
    out = []
    for kind, src in _sources():
        for n in (0, 1, 3):
            boxes = three_boxes(int(src.Rows), int(src.Columns))[:n]
            out.append((f"{kind}-{n}-boxes", build_sr(src, findings_for(src, boxes))))
            out.append((f"{kind}-{n}-boxes-2-class", build_sr(src, findings_for(src, boxes, two_class=True))))
        out.append((f"{kind}-lateral", build_sr(src, not_analysed_for(src))))
        for reason in NotEvaluatedReason:
            out.append((f"{kind}-{reason.value}", build_not_evaluated_sr(src, reason, models=MODELS, attempts=2)))
    return out


@pytest.mark.parametrize(("name", "sr"), _all_kinds_of_sr(), ids=lambda v: v if isinstance(v, str) else "")
def test_ohif_can_draw_every_group(name: str, sr: pydicom.Dataset, tmp_path: Path) -> None:
    """The OHIF crash (issue 12): every measurement group has a SCOORD region on the source image
    (OHIF throws a TypeError on one without), and no NUM has its own Content Sequence (OHIF drops those)."""
    ds = pydicom.dcmread(_write_read(sr, tmp_path))
    assert ohif_problems(ds) == []
    measurements = ohif_measurements(ds)
    assert measurements, name
    for m in measurements:
        (graphic_type, points, sop) = m.coords[0]
        assert graphic_type == "POLYLINE" and points.shape == (5, 2)
        np.testing.assert_array_equal(points[0], points[-1])  # closed
        assert sop == sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[
            0].ReferencedSOPInstanceUID  # fmt: skip
        assert m.lines, f"{name}: measurement {m.tracking_identifier!r} shows no label"


def test_the_first_sr_layout_crashed_ohif() -> None:
    """The checker finds what blanked OHIF's viewport: an image-level group without a region."""
    src = rsna_source(128)
    sr = build_sr(src, findings_for(src, two_class=True))
    image_level = sr.ContentSequence[-1].ContentSequence[0]
    image_level.ContentSequence = [i for i in image_level.ContentSequence if i.ValueType != "SCOORD"]
    assert ohif_problems(sr) == ["group 'Pneumonia (image level)': no SCOORD region (OHIF crashes)"]
    with pytest.raises(OhifCrash, match="ReferencedSOPSequence"):
        ohif_measurements(sr)


@pytest.mark.parametrize(
    ("threshold", "gating", "word"), [(0.5, "positive-only", "PRESENT"), (0.7, "positive-only", "PRESENT"), (0.71, "all", "absent")]
)
def test_ohif_labels_say_finding_decision_probability_and_thresholds(threshold: float, gating: str, word: str) -> None:
    src = rsna_source(256)
    findings = findings_for(src, three_boxes(256, 256)[:2], p=0.7, scores=(0.987, 0.962), threshold=threshold,
                            detection_threshold=0.95, box_gating=gating, two_class=True)  # fmt: skip
    image, *boxes = ohif_measurements(build_sr(src, findings))
    assert image.tracking_identifier == "Pneumonia (image level)"
    assert image.lines == [
        f"Pneumonia {word}, probability: 0.70 1",
        f"Threshold Value: {threshold:.2f} 1",
        "Box score threshold: 0.95 1",
        "Probability of Normal: 0.30 1",
        "Probability of Pneumonia: 0.70 1",
    ]
    assert [b.lines[0] for b in boxes] == ["Lung opacity probability: 0.99 1", "Lung opacity probability: 0.96 1"]
    assert all(b.lines[-1] == "363698007: Lung" for b in boxes)  # OHIF's finding-site line
    assert [b.tracking_identifier for b in boxes] == ["Lung opacity 1", "Lung opacity 2"]


def test_ohif_labels_of_an_rsna_lung_opacity_classifier() -> None:
    """A three-class RSNA head measures "Lung opacity" (DCM 112001 Opacity, site Lung): the label says so."""
    src = rsna_source(256)
    (image,) = ohif_measurements(build_sr(src, findings_for(src, p=0.2)))
    assert image.tracking_identifier == "Lung opacity (image level)"
    assert image.lines[0] == "Lung opacity absent, probability: 0.20 1"


# ----------------------------------------------------------------------------- what machines read
@pytest.mark.parametrize("n_boxes", [0, 1, 3])
@pytest.mark.parametrize("source_kind", ["rsna", "dx"])
def test_srread_round_trip_boxes_equal_findings(tmp_path: Path, n_boxes: int, source_kind: str) -> None:
    src = rsna_source(256) if source_kind == "rsna" else dx_source(320, 256)
    boxes = three_boxes(int(src.Rows), int(src.Columns))[:n_boxes]
    findings = findings_for(src, boxes)
    path = _write_read(build_sr(src, findings), tmp_path)

    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    image, box_groups = _groups(sr)
    np.testing.assert_allclose(image.roi.value, np.asarray(whole_image_polyline(int(src.Rows), int(src.Columns))))
    assert len(box_groups) == n_boxes
    tracking = {image.tracking_uid}
    for group, box in zip(box_groups, findings.boxes, strict=True):
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
        assert [s.value.value for s in group.finding_sites] == ["39607008"]  # Lung
        (prob,) = group.get_measurements(name=PROBABILITY)
        (shown,) = group.get_measurements(name=BOX_PROBABILITY)
        assert prob.value == pytest.approx(box.score) and shown.value == prob.value
        assert _texts(group[0], ALGORITHM_NAME) == ["cxr_opacity_detection"]
        tracking.add(group.tracking_uid)
    assert len(tracking) == n_boxes + 1  # one distinct tracking UID per group


@pytest.mark.parametrize(("threshold", "expected"), [(0.5, PRESENT), (0.7, PRESENT), (0.71, ABSENT)])
def test_image_level_decision_probability_and_threshold(tmp_path: Path, threshold: float, expected: CodedConcept) -> None:
    src = rsna_source(128)
    path = _write_read(build_sr(src, findings_for(src, p=0.7, threshold=threshold)), tmp_path)
    image, _ = _groups(hd.sr.srread(path))
    assert image.finding_type == OPACITY  # what the (RSNA three-class) classifier measures
    assert [s.value.value for s in image.finding_sites] == ["39607008"]  # Lung
    (evaluation,) = [q for q in image.get_qualitative_evaluations() if q.name == OPACITY]
    assert evaluation.name == OPACITY
    assert evaluation.value == expected
    (prob,) = image.get_measurements(name=PROBABILITY)
    (thr,) = image.get_measurements(name=THRESHOLD_VALUE)
    assert prob.value == pytest.approx(0.7)
    assert thr.value == pytest.approx(threshold)
    assert prob.unit.value == "1" and prob.unit.scheme_designator == "UCUM"
    assert _texts(image[0], ALGORITHM_NAME) == ["cxr_classification"]
    assert _texts(image[0], ALGORITHM_PARAMETERS) == [f"decision threshold {threshold:g}"]


def test_detector_threshold_and_box_gating_rule_are_recorded(tmp_path: Path) -> None:
    """Issue 12 point 3: the SR states the box score threshold and the rule tying boxes to the decision."""
    src = rsna_source(256)
    findings = findings_for(src, three_boxes(256, 256)[:1], scores=(0.97,), detection_threshold=0.95)
    sr = hd.sr.srread(_write_read(build_sr(src, findings), tmp_path))
    image, (box,) = _groups(sr)
    (box_threshold,) = image.get_measurements(name=BOX_SCORE_THRESHOLD)
    assert box_threshold.value == pytest.approx(0.95)
    (rule,) = find_content_items(image[0], name=BOX_GATING)
    assert rule.ConceptCodeSequence[0].CodeValue == BOX_GATING_CODES["positive-only"].value
    assert _texts(box[0], ALGORITHM_PARAMETERS) == ["box score threshold 0.95", "box reporting rule positive-only"]


def test_algorithm_identification_is_on_groups_never_on_nums(tmp_path: Path) -> None:
    src = rsna_source(256)
    ds = pydicom.dcmread(_write_read(build_sr(src, findings_for(src, three_boxes(256, 256)[:2])), tmp_path))
    nums = find_content_items(ds, value_type=hd.sr.ValueTypeValues.NUM, recursive=True)
    measurement_nums = [n for n in nums if n.ConceptNameCodeSequence[0].CodeValue not in ("110910", "110911")]
    assert measurement_nums and all("ContentSequence" not in n for n in nums)
    sr = hd.sr.srread(_write_read(ds, tmp_path, "again.dcm"))
    labels = {m.name: m.label for m in MODELS}  # version + digest of the weights
    for group in sr.content.get_planar_roi_measurement_groups():
        (name,) = _texts(group[0], ALGORITHM_NAME)
        assert _texts(group[0], ALGORITHM_VERSION) == [labels[name]] and "+" in labels[name]


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
        probability=CLASS_P["Lung Opacity"],
    )
    path = _write_read(build_sr(src, findings), tmp_path)
    sr = hd.sr.srread(path)
    image, _ = _groups(sr)
    for name in RSNA_CLASSES:
        (measurement,) = image.get_measurements(name=class_probability_concept(name))
        assert measurement.name.meaning == f"Probability of {name}"
        assert measurement.name.scheme_designator == PRIVATE_SCHEME
        assert measurement.value == findings.class_probabilities[name]  # FD: exact
        assert float(measurement[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(CLASS_P[name], abs=1e-12)
        assert measurement.unit.value == "1" and measurement.unit.scheme_designator == "UCUM"
    # display first (decision, thresholds), then the classes in the classifier's order, then P(finding)
    names = [m.name.value for m in image.get_measurements()]
    classes = [class_probability_concept(n).value for n in RSNA_CLASSES]
    assert names[1:3] == [THRESHOLD_VALUE.value, BOX_SCORE_THRESHOLD.value]
    assert names[3:] == [*classes, PROBABILITY.value]
    assert len(set(names)) == len(names)
    (prob,) = image.get_measurements(name=PROBABILITY)
    assert prob.value == findings.probability
    # the private scheme is declared (PS3.3 C.12.1.1.4)
    (scheme,) = pydicom.dcmread(path).CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == PRIVATE_SCHEME
    assert scheme.CodingSchemeName


def test_evidence_is_what_the_tree_references(tmp_path: Path) -> None:
    """The document is built around the childless root (speed): its evidence must still be what
    highdicom's own collect_evidence finds in the finished tree."""
    src = dx_source()
    ds = pydicom.dcmread(_write_read(build_sr(src, findings_for(src, three_boxes(320, 256))), tmp_path))
    root = pydicom.Dataset()
    root.ContentSequence = ds.ContentSequence
    same_study, other = collect_evidence([src], root, study_instance_uid=src.StudyInstanceUID)
    assert other == []
    assert ds.CurrentRequestedProcedureEvidenceSequence == same_study
    assert "PertinentOtherEvidenceSequence" not in ds


def test_shared_content_items_leave_earlier_srs_unchanged() -> None:
    """Constant content items (observer, algorithm identification, codes) are built once per process
    and shared; building other SRs must not change an SR built before."""
    from dicom_node.storage.spool import dataset_bytes

    src = rsna_source(128)
    first = build_sr(src, findings_for(src, three_boxes(128, 128)[:1]))
    before = dataset_bytes(first)
    other = dx_source(seed=9)
    build_sr(other, findings_for(other, three_boxes(320, 256), p=0.2, threshold=0.3, box_gating="all"))
    build_not_evaluated_sr(other, NotEvaluatedReason.ANALYSIS_FAILED, models=MODELS, attempts=3)
    build_sr(src, findings_for(src, three_boxes(128, 128)[:1]))
    assert dataset_bytes(first) == before


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


def test_refused_image_gives_a_not_evaluated_sr_without_header_text(tmp_path: Path) -> None:
    """A lateral view: the SR says "not evaluated" with the reason category, never the header's words."""
    src = rsna_source(128)
    reason = "lateral view (ViewPosition=LL)"  # what the view gate says, header value included
    results = build_results(src, not_analysed_for(src, reason))
    assert len(results) == 1  # SR only, no overlay
    ds = pydicom.dcmread(_write_read(results[0], tmp_path))
    sr = hd.sr.srread(_write_read(ds, tmp_path, "again.dcm"))
    (group,) = sr.content.get_planar_roi_measurement_groups()
    assert [q.value for q in group.get_qualitative_evaluations()] == [NOT_EVALUATED]
    (shown,) = group.get_measurements()
    assert shown.name == NotEvaluatedReason.NOT_FRONTAL_VIEW.concept and shown.value == 1
    texts = [i.TextValue for i in find_content_items(ds, value_type=hd.sr.ValueTypeValues.TEXT, recursive=True)]
    assert not any("LL" in t.split() or "ViewPosition" in t for t in texts), texts
    assert "ViewPosition" not in str(ds.ContentSequence)
    (m,) = ohif_measurements(ds)
    assert m.lines == ["Not evaluated: not a frontal chest view: 1.00 {attempts}"]
    # a refusal keeps the SR's usual UID (re-analysis gives the same refusal)
    assert ds.SOPInstanceUID == uids.instance_uid(not_analysed_for(src, reason), uids.ResultKind.SR)


@pytest.mark.parametrize("reason", list(NotEvaluatedReason))
def test_not_evaluated_sr_for_each_reason_category(tmp_path: Path, reason: NotEvaluatedReason) -> None:
    src = dx_source()
    ds = pydicom.dcmread(_write_read(build_not_evaluated_sr(src, reason.value, models=MODELS, attempts=3), tmp_path))
    assert ds.Modality == "SR" and ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    (m,) = ohif_measurements(ds)
    assert m.lines == [f"{reason.concept.meaning}: 3.00 {{attempts}}"]
    np.testing.assert_allclose(m.coords[0][1], np.asarray(whole_image_polyline(320, 256)))
    assert m.coords[0][2] == src.SOPInstanceUID
    sr = hd.sr.srread(_write_read(ds, tmp_path, "again.dcm"))
    (group,) = sr.content.get_planar_roi_measurement_groups()
    assert group.finding_type == PNEUMONIA
    assert [q.value for q in group.get_qualitative_evaluations()] == [NOT_EVALUATED]
    (shown,) = group.get_measurements()
    assert shown.name.scheme_designator == PRIVATE_SCHEME and shown.value == 3
    refused = reason in (NotEvaluatedReason.NOT_FRONTAL_VIEW, NotEvaluatedReason.NOT_CHEST, NotEvaluatedReason.NOT_ANALYSABLE)
    kind = uids.ResultKind.SR if refused else uids.ResultKind.SR_NOT_EVALUATED
    # a failure gets its own UID: a later successful analysis of the same image is not shadowed
    status = Findings(sop_instance_uid=str(src.SOPInstanceUID), analysed=False, rows=320, columns=256, models=MODELS,
                      not_analysed_reason="any")  # fmt: skip
    assert ds.SOPInstanceUID == uids.instance_uid(status, kind)


def test_not_evaluated_sr_refuses_what_it_cannot_reference() -> None:
    src = dx_source()
    with pytest.raises(ValueError, match="not-a-reason"):
        build_not_evaluated_sr(src, "not-a-reason")
    with pytest.raises(ValueError, match="attempts"):
        build_not_evaluated_sr(src, NotEvaluatedReason.ANALYSIS_FAILED, attempts=0)
    del src.Rows
    with pytest.raises(ValueError, match="Rows"):
        build_not_evaluated_sr(src, NotEvaluatedReason.PIXEL_DATA_UNDECODABLE)


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

    newer = (ModelInfo("cxr_classification", "0.2.0"), MODELS[1])
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


def test_read_sr_gives_back_what_was_built(tmp_path: Path) -> None:
    src = dx_source()
    findings = findings_for(src, three_boxes(320, 256)[:2], p=0.81, scores=(0.99, 0.97), threshold=0.6,
                            detection_threshold=0.95, two_class=True)  # fmt: skip
    result = read_sr(_write_read(build_sr(src, findings), tmp_path))
    assert (result.finding, result.decision, result.source_sop_instance_uid) == ("Pneumonia", "Present", src.SOPInstanceUID)
    assert (result.probability, result.threshold, result.box_score_threshold) == (pytest.approx(0.81), 0.6, 0.95)
    assert [b.probability for b in result.boxes] == [pytest.approx(b.score) for b in findings.boxes]
    for got, box in zip(result.boxes, findings.boxes, strict=True):
        np.testing.assert_allclose(got.polyline, np.asarray(box.polyline()), atol=1e-4)
    assert result.not_evaluated_reason is None

    ne = read_sr(_write_read(build_not_evaluated_sr(src, NotEvaluatedReason.NOT_CHEST), tmp_path, "ne.dcm").read_bytes())
    assert (ne.decision, ne.not_evaluated_reason, ne.probability, ne.boxes) == (
        "Not Evaluated", NotEvaluatedReason.NOT_CHEST, None, ())
    with pytest.raises(ValueError, match="not an SR|ContentSequence|SR document"):
        read_sr(src)


def test_image_level_region_is_what_the_classifier_looked_at(tmp_path: Path) -> None:
    """A centre-crop classifier saw the central square of a non-square image: the SR's image-level
    region says so (a letterboxing classifier, or unknown, gives the whole image)."""
    src = dx_source(320, 256)
    findings = dataclasses.replace(findings_for(src), classifier_region=(0.0, 32.0, 256.0, 256.0))
    image, _ = _groups(hd.sr.srread(_write_read(build_sr(src, findings), tmp_path)))
    expected = [(0.0, 32.0), (256.0, 32.0), (256.0, 288.0), (0.0, 288.0), (0.0, 32.0)]
    np.testing.assert_allclose(image.roi.value, np.asarray(expected))
    # a region reaching past the image is clipped to it
    wide = dataclasses.replace(findings, classifier_region=(-10.0, -10.0, 400.0, 400.0))
    image, _ = _groups(hd.sr.srread(_write_read(build_sr(src, wide), tmp_path, "wide.dcm")))
    np.testing.assert_allclose(image.roi.value, np.asarray(whole_image_polyline(320, 256)))


def test_not_evaluated_sr_joins_the_series_of_its_configuration() -> None:
    """A failed job's SR carries the node's decision settings: it lands in the same series as the
    results analysed with them, not in a series of its own."""
    from dicom_node.results.sr.build import build_not_evaluated_sr

    src = dx_source(320, 256)
    analysed = build_sr(src, findings_for(src, threshold=0.5, detection_threshold=0.5))
    failed = build_not_evaluated_sr(src, "pixel-data-undecodable", models=MODELS, threshold=0.5,
                                    detection_threshold=0.5, box_gating="positive-only")
    assert failed.SeriesInstanceUID == analysed.SeriesInstanceUID
    assert failed.SOPInstanceUID != analysed.SOPInstanceUID
