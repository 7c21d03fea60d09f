"""What the SR and the SC overlay share: identity of our objects, patient/study copying, model roles."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydicom.dataset import Dataset

from dicom_node import __version__ as NODE_VERSION
from dicom_node.results import highdicom_lookups
from models.findings import Findings, ModelInfo

highdicom_lookups.install()  # every SR and SC built with highdicom asks it the same questions

#: Manufacturer of every object the node creates; routing never re-analyses objects that carry it.
MANUFACTURER = "cxr-ai-node"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = "AI findings (SR)"
SC_SERIES_DESCRIPTION = "AI overlay (not for diagnosis)"

#: Patient and study attributes copied verbatim from the source into every result object.
#: Type 2 attributes in this list are written empty when the source lacks them.
PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)
PATIENT_STUDY_OPTIONAL = (
    "IssuerOfPatientID",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDescription",
)

_LO_MAX = 64


def _lo(value: str) -> str:
    """Clip a string to the 64 characters a LO value may hold."""
    return value if len(value) <= _LO_MAX else value[: _LO_MAX - 3] + "..."


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` as float if it is a finite number in [0, 1], else raise ValueError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number in [0, 1], got {threshold!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return float(threshold)


def check_source_matches(source: Dataset, findings: Findings) -> None:
    """Raise ValueError unless ``findings`` were computed on ``source`` (same SOP Instance UID and size)."""
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not source.get(keyword):
            raise ValueError(f"source dataset has no {keyword}; cannot build results for it")
    if str(source.SOPInstanceUID) != findings.sop_instance_uid:
        raise ValueError(
            f"findings are for SOP Instance {findings.sop_instance_uid}, "
            f"but the source dataset is {source.SOPInstanceUID}"
        )
    rows, cols = source.get("Rows"), source.get("Columns")
    if findings.analysed and (rows, cols) != (findings.rows, findings.columns):
        raise ValueError(
            f"findings are for a {findings.rows}x{findings.columns} image, "
            f"but SOP Instance {source.SOPInstanceUID} is {rows}x{cols}"
        )


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Copy patient/study attributes and Specific Character Set from ``source`` verbatim.

    The values are copied as data elements (not re-typed), together with the
    source's Specific Character Set, so that non-ASCII names (ISO_IR 192,
    ISO_IR 100, ISO 2022 multi-valued sets) are written back with the same
    character set they came with.
    """
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet
    elif "SpecificCharacterSet" in target:
        del target.SpecificCharacterSet
    target.StudyInstanceUID = source.StudyInstanceUID
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword in source:
            target[keyword] = source[keyword]
        else:
            setattr(target, keyword, None)
    for keyword in PATIENT_STUDY_OPTIONAL:
        if keyword in source and source[keyword].value not in (None, ""):
            target[keyword] = source[keyword]
        elif keyword in target:
            delattr(target, keyword)


def model_names(models: Sequence[ModelInfo]) -> str:
    """ManufacturerModelName value: the bundle names joined with ``+`` (or the node name)."""
    return _lo("+".join(m.name for m in models) or MANUFACTURER)


def software_versions(models: Sequence[ModelInfo]) -> list[str]:
    """SoftwareVersions values: the node version, then ``name version+digest`` of each bundle."""
    return [_lo(f"{MANUFACTURER} {NODE_VERSION}"), *(_lo(f"{m.name} {m.label}") for m in models)]


def models_label(models: Sequence[ModelInfo]) -> str:
    """Human-readable ``name vX, name vY`` for banners and text items."""
    return ", ".join(f"{m.name} v{m.label}" for m in models) or "no models"


def classifier_model(findings: Findings) -> ModelInfo | None:
    """The bundle that produced the image-level probability (the first one not named like a detector)."""
    for m in findings.models:
        if "detect" not in m.name.lower():
            return m
    return findings.models[0] if findings.models else None


def detector_model(findings: Findings) -> ModelInfo | None:
    """The bundle that produced the boxes (the first one whose name contains ``detect``)."""
    for m in findings.models:
        if "detect" in m.name.lower():
            return m
    return findings.models[-1] if findings.models else None


def instance_number(source: Dataset) -> int:
    """InstanceNumber for a result object: the source's, when it is a positive integer, else 1."""
    try:
        n = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1
    return n if n >= 1 else 1


#: the six directions of a biped patient (PS3.3 C.7.6.1.1.1) and the opposite of each
_OPPOSITE = {"A": "P", "P": "A", "R": "L", "L": "R", "H": "F", "F": "H"}


def is_biped_orientation_value(value: str) -> bool:
    """Whether ``value`` is one value of a biped Patient Orientation (PS3.3 C.7.6.1.1.1): a principal
    direction (A, P, R, L, H or F) refined by up to two more (an oblique row or column, e.g. ``"FL"``),
    no direction twice and never a direction with its opposite."""
    return (
        1 <= len(value) <= 3
        and all(c in _OPPOSITE for c in value)
        and len(set(value)) == len(value)
        and not any(_OPPOSITE[c] in value for c in value)
    )


def patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation (row direction, column direction) when it holds two valid biped
    values (:func:`is_biped_orientation_value`); None when it is absent, empty or malformed, so a result
    object leaves it empty (Type 2) rather than repeat a value a viewer cannot read."""
    value = source.get("PatientOrientation")
    if value is None or isinstance(value, (str, bytes)) or len(value) != 2:
        return None
    row, column = (str(v) for v in value)
    if not (is_biped_orientation_value(row) and is_biped_orientation_value(column)):
        return None
    return row, column


def is_decided_positive(findings: Findings) -> bool:
    """Image-level decision taken by the engine: probability >= the findings' threshold."""
    if findings.positive is None:
        raise ValueError(f"findings for {findings.sop_instance_uid} have no probability/threshold")
    return findings.positive
