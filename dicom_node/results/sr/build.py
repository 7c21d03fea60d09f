"""TID 1500 Measurement Report (Comprehensive 3D SR) for one analysed, refused or failed chest X-ray.

Every measurement group is a TID 1410 planar ROI group with an Image Region, so that OHIF v3
(which reads a region from every group, and crashes on a group without one) draws each of
them; algorithm identification sits at the group level, never on a NUM (OHIF drops NUMs that
carry their own content). Content tree (docs/SR_CONTENT.md has the codes and what viewers show)::

    Imaging Measurement Report (TID 1500)
      Language, Observation Context: the algorithm as a DEVICE observer (TID 1004)
      Procedure Reported: SCT 399208008 "Plain chest X-ray"
      Image Library (TID 1600): the source image, with its TID 1602/1603 descriptors
      Imaging Measurements
        Measurement Group (TID 1410), image level: region = the whole image (what the classifier saw)
          Tracking Identifier "<finding> (image level)", Tracking UID
          Finding: what the classifier measures (e.g. SCT 233604007 "Pneumonia"), [Finding Site]
          Algorithm Identification (TID 4019): classifier name, version, decision threshold
          Image Region: closed POLYLINE around the whole image, SELECTED FROM the source
          NUM "<finding> PRESENT|absent, probability" (99CXRAI, what OHIF shows first)
          NUM Threshold Value (DCM 122411): the image-level decision threshold
          NUM "Box score threshold" (99CXRAI): the detector's score threshold
          NUM "Probability of <class>" (99CXRAI), one per classifier class
          NUM Probability (DCM 122157): P(finding)
          CODE "Box reporting rule" (99CXRAI) = boxes only when positive | all boxes
          CODE <finding> = Present (SCT 52101004) | Absent (SCT 272519000)
        Measurement Group (TID 1410), one per box, finding DCM 112001 "Opacity", site SCT 39607008 "Lung"
          Tracking Identifier "Lung opacity <n>", Tracking UID, Algorithm Identification (detector)
          Image Region: closed POLYLINE, 5 points, source-image pixel coordinates (Box.polyline())
          NUM "Lung opacity probability" (99CXRAI), NUM Area (mm2, when known), NUM Probability (DCM 122157)

A "not evaluated" SR (:func:`build_not_evaluated_sr`: an image refused by the view gate, an
undecodable image, an analysis that failed for good) has one image-level group: the finding
is Not Evaluated (SCT 373121007) and a NUM "Not evaluated: <reason>" (a fixed vocabulary,
:class:`~dicom_node.results.sr.codes.NotEvaluatedReason`) holds the number of analysis attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    LanguageOfContentItemAndDescendants,
    Measurement,
    MeasurementReport,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForRegion,
    TrackingIdentifier,
)
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.results import uids
from dicom_node.results.common import (
    MANUFACTURER,
    check_source_matches,
    classifier_model,
    detector_model,
    instance_number,
    is_decided_positive,
    model_names,
    models_label,
    software_versions,
)
from dicom_node.results.sr.codes import (
    ABSENT,
    AREA,
    ATTEMPTS,
    BOX_GATING,
    BOX_GATING_CODES,
    BOX_PROBABILITY,
    BOX_SCORE_THRESHOLD,
    CHEST_XRAY,
    CLASS_PROBABILITY_CONCEPTS,
    FINDING,
    LUNG,
    LUNG_OPACITY,
    NO_UNITS,
    NOT_EVALUATED,
    OPACITY,
    PNEUMONIA,
    PRESENT,
    PRIVATE_SCHEME,
    PROBABILITY,
    SQUARE_MM,
    THRESHOLD_VALUE,
    FindingDisplay,
    NotEvaluatedReason,
    class_probability_concept,
    decision_concept,
    finding_display,
    private_coding_scheme,
    reason_for_not_analysed,
)
from dicom_node.results.template import shared
from models.findings import Box, FindingCode, Findings, ModelInfo

logger = logging.getLogger(__name__)

#: The box finding: the detector finds lung opacities
BOX_FINDING = finding_display(OPACITY.value, OPACITY.scheme_designator, OPACITY.meaning)
#: What a "not evaluated" SR names when it does not know the classifier's finding
DEFAULT_FINDING = finding_display(PNEUMONIA.value, PNEUMONIA.scheme_designator, PNEUMONIA.meaning)


def build_sr(source: Dataset, findings: Findings) -> Comprehensive3DSR:
    """Build the TID 1500 Comprehensive 3D SR for ``findings`` on ``source``.

    Analysed findings give the image-level result (the engine's decision, ``findings.positive``,
    with its threshold) and one group per reported box; findings that were not analysed (a lateral
    view, ...) give a "not evaluated" SR (:func:`build_not_evaluated_sr`). Raises ValueError if
    the findings do not belong to ``source``.
    """
    check_source_matches(source, findings)
    if not findings.analysed:
        return _not_evaluated_sr(source, findings, reason_for_not_analysed(findings.not_analysed_reason), 1)
    groups = [_image_level_group(source, findings)]
    groups += [_box_group(source, findings, i, box) for i, box in enumerate(findings.boxes)]
    sr = _document(source, findings, groups, uids.ResultKind.SR)
    logger.info(
        "built SR",
        extra={
            "source_sop_instance_uid": findings.sop_instance_uid,
            "sr_sop_instance_uid": str(sr.SOPInstanceUID),
            "analysed": True,
            "n_boxes": len(findings.boxes),
        },
    )
    return sr


def build_not_evaluated_sr(
    source: Dataset,
    reason_category: NotEvaluatedReason | str,
    *,
    models: Sequence[ModelInfo] = (),
    finding: FindingCode | None = None,
    attempts: int = 1,
    threshold: float | None = None,
    detection_threshold: float | None = None,
    box_gating: str = "positive-only",
) -> Comprehensive3DSR:
    """A short TID 1500 SR saying that ``source`` was not evaluated, and why (a fixed category).

    Only the source's header is read (UIDs, Rows/Columns for the whole-image region, patient/study
    attributes copied verbatim); nothing from the header goes into the reason. ``models`` are the
    bundles that would have analysed it (they name the algorithm and enter the UIDs), ``finding``
    what was not evaluated (default: pneumonia), ``attempts`` the analysis attempts made (>= 1);
    ``threshold``, ``detection_threshold`` and ``box_gating`` are the node's decision settings, so
    that the SR lands in the same series as the results made with them (see ``dicom_node.results.uids``).
    Refusals (view gate) keep the SR's usual SOP Instance UID; failures get their own, so that a
    later successful analysis is not shadowed by it. ValueError for a source without the needed
    attributes.
    """
    reason = NotEvaluatedReason(reason_category)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if not source.get(keyword):
            raise ValueError(f"source dataset has no {keyword}; cannot build a 'not evaluated' SR for it")
    status = Findings(
        sop_instance_uid=str(source.SOPInstanceUID),
        analysed=False,
        rows=int(source.Rows),
        columns=int(source.Columns),
        finding=finding,
        threshold=threshold,
        detection_threshold=detection_threshold,
        box_gating=box_gating,
        models=tuple(models),
        not_analysed_reason=f"not evaluated: {reason.value}",
    )
    return _not_evaluated_sr(source, status, reason, attempts)


def _not_evaluated_sr(source: Dataset, findings: Findings, reason: NotEvaluatedReason, attempts: int) -> Comprehensive3DSR:
    finding = _finding(findings)
    group = PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=uids.tracking_uid(findings, "not-evaluated"),
            identifier=f"{finding.label} (image level): not evaluated",
        ),
        referenced_region=_whole_image_region(source),
        finding_type=finding.code,
        finding_sites=_finding_sites(finding.site),
        algorithm_id=_algorithm_id(classifier_model(findings)),
        measurements=[Measurement(name=reason.concept, value=attempts, unit=ATTEMPTS)],
        qualitative_evaluations=[_qualitative_evaluation(finding.code, NOT_EVALUATED)],
    )
    refused = reason in (NotEvaluatedReason.NOT_FRONTAL_VIEW, NotEvaluatedReason.NOT_CHEST,
                         NotEvaluatedReason.NOT_ANALYSABLE)  # fmt: skip
    kind = uids.ResultKind.SR if refused else uids.ResultKind.SR_NOT_EVALUATED
    sr = _document(source, findings, [group], kind)
    logger.info(
        "built 'not evaluated' SR",
        extra={
            "source_sop_instance_uid": findings.sop_instance_uid,
            "sr_sop_instance_uid": str(sr.SOPInstanceUID),
            "reason_category": reason.value,
            "attempts": attempts,
        },
    )
    return sr


# ------------------------------------------------------------------------------ what Findings carry
def _finding(findings: Findings) -> FindingDisplay:
    """What the classifier measures (``Findings.finding``, from its bundle), else :data:`DEFAULT_FINDING`."""
    code = findings.finding
    if code is None:
        return DEFAULT_FINDING
    return finding_display(code.value, code.scheme, code.meaning)


def _analysed_values(findings: Findings) -> tuple[float, float, float]:
    """(probability, decision threshold, detection threshold) of an analysed Findings."""
    if findings.probability is None or findings.threshold is None or findings.detection_threshold is None:
        raise ValueError(f"findings for {findings.sop_instance_uid} lack probability or thresholds")
    return findings.probability, findings.threshold, findings.detection_threshold


def _version_label(model: ModelInfo) -> str:
    """Algorithm Version: ``ModelInfo.label``, the version and the digest of the exact weights."""
    return model.label


# ------------------------------------------------------------------------------------ content items
# The constant content items below are built once and shared by every SR of the process: highdicom
# content items are plain pydicom datasets, nothing mutates them after construction, and encoding
# only reads them (tests/test_results_sr.py checks that a later SR leaves an earlier one unchanged).
@lru_cache(maxsize=64)
def _algorithm_id(model: ModelInfo | None, parameters: tuple[str, ...] = ()) -> AlgorithmIdentification | None:
    if model is None:
        return None
    return shared(AlgorithmIdentification(name=model.name, version=_version_label(model),
                                          parameters=list(parameters) or None, manufacturer=MANUFACTURER))  # fmt: skip


# Caches keyed by a concept use its exact key: CodedConcept's own equality ignores the meaning and
# takes SRT codes for their SCT equivalents, so it would hand one concept's item to another.
ConceptKey = tuple[str, str, str, str | None]


def _exact(concept: CodedConcept) -> ConceptKey:
    """(value, scheme designator, meaning, scheme version): what a cached item must match exactly."""
    return (concept.value, concept.scheme_designator, concept.meaning, concept.scheme_version)


def _concept(key: ConceptKey) -> CodedConcept:
    return CodedConcept(key[0], key[1], key[2], key[3])


def _qualitative_evaluation(finding: CodedConcept, value: CodedConcept) -> QualitativeEvaluation:
    return _cached_qualitative_evaluation(_exact(finding), _exact(value))


@lru_cache(maxsize=64)
def _cached_qualitative_evaluation(finding: ConceptKey, value: ConceptKey) -> QualitativeEvaluation:
    return shared(QualitativeEvaluation(_concept(finding), _concept(value)))


@lru_cache(maxsize=1)
def _default_language() -> LanguageOfContentItemAndDescendants:
    """What MeasurementReport puts in when given no language (English), built once."""
    return shared(LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE))


@lru_cache(maxsize=8)
def _box_gating_item(gating: str) -> CodeContentItem:
    return shared(CodeContentItem(name=BOX_GATING, value=BOX_GATING_CODES[gating],
                                  relationship_type=RelationshipTypeValues.CONTAINS))  # fmt: skip


@lru_cache(maxsize=64)
def _observation_context(models: tuple[ModelInfo, ...]) -> ObservationContext:
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=uids.device_observer_uid(models),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=model_names(models),
            serial_number=models_label(models)[:64],
        ),
    )
    return shared(ObservationContext(observer_device_context=observer))


def _region(source: Dataset, polyline: Sequence[tuple[float, float]]) -> ImageRegion:
    return ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(polyline, dtype=np.float64),
        source_image=SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        ),
    )


def whole_image_polyline(rows: int, columns: int) -> tuple[tuple[float, float], ...]:
    """Closed polyline along the outer edges of a ``rows`` x ``columns`` image (x = column, y = row)."""
    c, r = float(columns), float(rows)
    return ((0.0, 0.0), (c, 0.0), (c, r), (0.0, r), (0.0, 0.0))


def _whole_image_region(source: Dataset) -> ImageRegion:
    return _region(source, whole_image_polyline(int(source.Rows), int(source.Columns)))


def _classifier_region(source: Dataset, findings: Findings) -> ImageRegion:
    """The image-level result's region: what the classifier looked at (its centre crop of the image;
    the whole image for a letterboxing classifier or when the findings do not say), clipped to the image."""
    if findings.classifier_region is None:
        return _whole_image_region(source)
    x, y, w, h = findings.classifier_region
    rows, columns = float(source.Rows), float(source.Columns)
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(columns, x + w), min(rows, y + h)
    if not (x1 > x0 and y1 > y0):
        return _whole_image_region(source)
    return _region(source, ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)))


def _num(name: CodedConcept, value: float, unit: CodedConcept = NO_UNITS) -> Measurement:
    return Measurement(name=name, value=float(value), unit=unit)


def _setting_num(name: CodedConcept, value: float) -> Measurement:
    """A measurement of a node setting (a threshold): the same for every SR, so built once per value."""
    return _cached_setting_num(_exact(name), float(value).hex())  # hex: exact, and 0.0 / -0.0 stay apart


@lru_cache(maxsize=64)
def _cached_setting_num(name: ConceptKey, value_hex: str) -> Measurement:
    return shared(_num(_concept(name), float.fromhex(value_hex)))


def _finding_sites(site: CodedConcept | None) -> tuple[FindingSite, ...] | None:
    return None if site is None else _cached_finding_sites(_exact(site))


@lru_cache(maxsize=16)
def _cached_finding_sites(site: ConceptKey) -> tuple[FindingSite, ...]:
    return shared((FindingSite(anatomic_location=_concept(site)),))


def _class_probability_measurements(probabilities: Mapping[str, float]) -> list[Measurement]:
    """One "Probability of <class>" measurement per classifier class, in the classifier's order."""
    return [_num(class_probability_concept(name), p) for name, p in probabilities.items()]


def _image_level_group(source: Dataset, findings: Findings) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    finding = _finding(findings)
    probability, threshold, detection_threshold = _analysed_values(findings)
    positive = is_decided_positive(findings)
    gating = findings.box_gating
    measurements = [
        _num(decision_concept(finding, positive), probability),
        _setting_num(THRESHOLD_VALUE, threshold),
        _setting_num(BOX_SCORE_THRESHOLD, detection_threshold),
        *_class_probability_measurements(findings.class_probabilities),
        _num(PROBABILITY, probability),
    ]
    group = PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=uids.tracking_uid(findings, "image"),
            identifier=f"{finding.label} (image level)",
        ),
        referenced_region=_classifier_region(source, findings),
        finding_type=finding.code,
        finding_sites=_finding_sites(finding.site),
        algorithm_id=_algorithm_id(classifier_model(findings), (f"decision threshold {threshold:g}",)),
        measurements=measurements,
        qualitative_evaluations=[_qualitative_evaluation(finding.code, PRESENT if positive else ABSENT)],
    )
    group[0].ContentSequence.append(_box_gating_item(gating))
    return group


def _box_group(
    source: Dataset, findings: Findings, index: int, box: Box
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    measurements = [_num(BOX_PROBABILITY, box.score)]
    if box.mm is not None:
        measurements.append(_num(AREA, box.mm.width * box.mm.height, SQUARE_MM))
    measurements.append(_num(PROBABILITY, box.score))
    _, _, detection_threshold = _analysed_values(findings)
    parameters = (f"box score threshold {detection_threshold:g}", f"box reporting rule {findings.box_gating}")
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=uids.tracking_uid(findings, f"box-{index}"),
            identifier=f"{BOX_FINDING.label} {index + 1}",
        ),
        referenced_region=_region(source, box.polyline()),
        finding_type=BOX_FINDING.code,
        finding_sites=_finding_sites(LUNG),
        algorithm_id=_algorithm_id(detector_model(findings), parameters),
        measurements=measurements,
    )


def _document(
    source: Dataset,
    findings: Findings,
    groups: Sequence[PlanarROIMeasurementsAndQualitativeEvaluations],
    kind: uids.ResultKind,
) -> Comprehensive3DSR:
    from dicom_node.results.sr.document import insert_image_library, sr_document

    models = tuple(findings.models)
    report = MeasurementReport(
        observation_context=_observation_context(models),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=list(groups),
        language_of_content_item_and_descendants=_default_language(),
    )
    root = report[0]
    insert_image_library(root, source)
    return sr_document(
        source,
        root,
        series_instance_uid=uids.series_uid(source.StudyInstanceUID, findings, uids.ResultKind.SR),
        sop_instance_uid=uids.instance_uid(findings, kind),
        instance_number=instance_number(source),
        model_name=model_names(models),
        software_versions=software_versions(models),
        coding_schemes=[private_coding_scheme()],
    )


__all__ = [
    "ABSENT",
    "CLASS_PROBABILITY_CONCEPTS",
    "FINDING",
    "LUNG",
    "LUNG_OPACITY",
    "NOT_EVALUATED",
    "PNEUMONIA",
    "PRESENT",
    "PRIVATE_SCHEME",
    "PROBABILITY",
    "THRESHOLD_VALUE",
    "NotEvaluatedReason",
    "build_not_evaluated_sr",
    "build_sr",
    "class_probability_concept",
    "private_coding_scheme",
    "whole_image_polyline",
]
