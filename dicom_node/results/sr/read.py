"""Read the node's TID 1500 SR back (highdicom): the image-level result, the boxes, or why it was not evaluated.

The counterpart of :mod:`dicom_node.results.sr.build` for the demo, the tests and anyone post-processing
our SRs. Every measurement group is a TID 1410 planar ROI group: the image-level group carries the
Threshold Value (DCM 122411), a box group the box probability (99CXRAI P-BOX-OPACITY), a "not
evaluated" group the Not Evaluated qualitative evaluation and a "Not evaluated: <reason>" NUM.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_node.results.sr.codes import (
    BOX_PROBABILITY,
    BOX_SCORE_THRESHOLD,
    NOT_EVALUATED,
    PRIVATE_SCHEME,
    PROBABILITY,
    THRESHOLD_VALUE,
    NotEvaluatedReason,
)


@dataclass(frozen=True)
class SrBox:
    """One box group: its closed polyline (5 x 2, source pixels) and probability."""

    polyline: np.ndarray
    probability: float


@dataclass(frozen=True)
class SrResult:
    """What one of our SRs says about its source image."""

    source_sop_instance_uid: str
    finding: str | None = None
    #: "Present" / "Absent" / "Not Evaluated"
    decision: str | None = None
    probability: float | None = None
    threshold: float | None = None
    box_score_threshold: float | None = None
    boxes: tuple[SrBox, ...] = ()
    not_evaluated_reason: NotEvaluatedReason | None = None


def _measurement(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations, concept: object) -> float | None:
    found = group.get_measurements(name=concept)
    return float(found[0].value) if found else None


def read_sr(source: str | Path | bytes | Dataset) -> SrResult:
    """Read one of the node's SRs (a path, the file's bytes or a dataset). ValueError if it is not one."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)  # type: ignore[assignment]
    sr = hd.sr.Comprehensive3DSR.from_dataset(source) if isinstance(source, Dataset) else hd.sr.srread(source)
    groups = sr.content.get_planar_roi_measurement_groups()
    image = [g for g in groups if g.get_measurements(name=THRESHOLD_VALUE)]
    boxes = [g for g in groups if g.get_measurements(name=BOX_PROBABILITY)]
    if len(groups) == 1 and not image:  # a "not evaluated" SR
        (group,) = groups
        by_code = {r.concept.value: r for r in NotEvaluatedReason}
        names = [m.name for m in group.get_measurements()]
        reason = next((by_code[n.value] for n in names if n.scheme_designator == PRIVATE_SCHEME and n.value in by_code), None)
        if reason is None or not any(q.value == NOT_EVALUATED for q in group.get_qualitative_evaluations()):
            raise ValueError("SR has one measurement group that is neither an image-level result nor 'not evaluated'")
        return SrResult(_source_uid(group), group.finding_type.meaning, "Not Evaluated", not_evaluated_reason=reason)
    if len(image) != 1:
        raise ValueError(f"SR has {len(image)} image-level groups (one expected)")
    (level,) = image
    finding = level.finding_type
    decision = next((q.value.meaning for q in level.get_qualitative_evaluations() if q.name == finding), None)
    return SrResult(
        source_sop_instance_uid=_source_uid(level),
        finding=finding.meaning,
        decision=decision,
        probability=_measurement(level, PROBABILITY),
        threshold=_measurement(level, THRESHOLD_VALUE),
        box_score_threshold=_measurement(level, BOX_SCORE_THRESHOLD),
        boxes=tuple(SrBox(np.asarray(g.roi.value, dtype=float), _box_probability(g)) for g in boxes),
    )


def _box_probability(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> float:
    value = _measurement(group, PROBABILITY)
    if value is None:
        raise ValueError(f"box group {group.tracking_identifier!r} has no Probability")
    return value


def _source_uid(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> str:
    return str(group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
