"""Coded concepts of the node's TID 1500 SR: standard codes, the private ``99CXRAI`` codes, reason categories.

Why private codes at all: OHIF v3 shows, next to each drawn region, only the concept name and
value of the group's NUM items (and the finding site); it shows neither the Finding, nor the
Tracking Identifier, nor qualitative evaluations. So the words a radiologist must read in the
viewer ("Pneumonia PRESENT", "Lung opacity", "Not evaluated: ...") have to be the Code Meaning
of a NUM concept, and a standard code's meaning cannot be changed. Each such display item sits
next to the standard items machines read (DCM 122157 Probability, DCM 122411 Threshold Value,
the Present/Absent qualitative evaluation). See docs/SR_CONTENT.md.

Every private code is in the scheme :data:`PRIVATE_SCHEME`, declared by the Coding Scheme
Identification Sequence of each SR that uses it (:func:`private_coding_scheme`). Code values are
SH (at most 16 characters); a code value always has the same meaning.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept

from dicom_node.results.common import MANUFACTURER

# ---------------------------------------------------------------------------------------- standard
PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
OPACITY = CodedConcept("112001", "DCM", "Opacity")
#: kept for callers of the first SR layout: the box finding (DCM 112001 "Opacity", site Lung)
LUNG_OPACITY = OPACITY
LUNG = CodedConcept("39607008", "SCT", "Lung")
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
NOT_EVALUATED = CodedConcept("373121007", "SCT", "Not Evaluated")
FINDING = CodedConcept("121071", "DCM", "Finding")
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
THRESHOLD_VALUE = CodedConcept("122411", "DCM", "Threshold Value")
AREA = CodedConcept("42798000", "SCT", "Area")
CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
SOURCE = CodedConcept("260753009", "SCT", "Source")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
SQUARE_MM = CodedConcept("mm2", "UCUM", "square millimeter")
PIXELS = CodedConcept("{pixels}", "UCUM", "Pixels")
ATTEMPTS = CodedConcept("{attempts}", "UCUM", "attempts")

# ---------------------------------------------------------------------------------------- private
#: Private coding scheme of the node's own codes (DICOM reserves the "99" prefix for private schemes).
PRIVATE_SCHEME = "99CXRAI"
_SH_MAX = 16


def _private(value: str, meaning: str) -> CodedConcept:
    if not 0 < len(value) <= _SH_MAX:
        raise ValueError(f"private code value must have 1-{_SH_MAX} characters, got {value!r}")
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


def _slug(text: str, room: int) -> str:
    """Upper-case ``A-Z0-9-`` form of ``text`` in at most ``room`` characters (a short hash when longer)."""
    slug = re.sub(r"[^A-Z0-9]+", "-", text.upper()).strip("-")
    if slug and len(slug) <= room:
        return slug
    return "H" + hashlib.sha256(text.encode()).hexdigest()[: room - 1]


#: Box score (detector) display concept: what OHIF writes next to each box.
BOX_PROBABILITY = _private("P-BOX-OPACITY", "Lung opacity probability")
#: The detector's score threshold (a second DCM 122411 in the image-level group would be ambiguous).
BOX_SCORE_THRESHOLD = _private("BOX-THRESHOLD", "Box score threshold")
#: Concept name of the box gating rule; its values are :data:`BOX_GATING_CODES`.
BOX_GATING = _private("BOX-GATING", "Box reporting rule")
#: ``Findings.box_gating`` value -> code of the rule.
BOX_GATING_CODES = {
    "positive-only": _private("BOXES-IF-POS", "Boxes only when the image-level finding is present"),
    "all": _private("BOXES-ALL", "All boxes at or above the box score threshold"),
}

#: "Probability of <class>" code values of the RSNA classes (the first SR layout's, kept stable).
_CLASS_CODE_VALUES = {
    "Normal": "P-NORMAL",
    "No Lung Opacity / Not Normal": "P-NOT-NORMAL",
    "Lung Opacity": "P-LUNG-OPACITY",
}


@lru_cache(maxsize=256)
def class_probability_concept(class_name: str) -> CodedConcept:
    """The private "Probability of <class_name>" concept (one code per class name)."""
    if not class_name:
        raise ValueError("class name is empty")
    value = _CLASS_CODE_VALUES.get(class_name) or "P-" + _slug(class_name, _SH_MAX - 2)
    return _private(value, f"Probability of {class_name}")


#: "Probability of <class>" concept of each RSNA class
CLASS_PROBABILITY_CONCEPTS: dict[str, CodedConcept] = {name: class_probability_concept(name) for name in _CLASS_CODE_VALUES}


@dataclass(frozen=True)
class FindingDisplay:
    """How one finding is named in the SR: its code, optional site, and the words OHIF shows."""

    code: CodedConcept
    #: e.g. "Pneumonia", "Lung opacity"
    label: str
    site: CodedConcept | None = None

    def __post_init__(self) -> None:
        if not self.label:
            raise ValueError(f"finding {self.code.value!r} needs a label")


@lru_cache(maxsize=256)
def finding_display(value: str, scheme: str, meaning: str) -> FindingDisplay:
    """The :class:`FindingDisplay` of a finding code (DCM 112001 "Opacity" becomes "Lung opacity", site Lung)."""
    code = CodedConcept(value, scheme, meaning)
    if (value, scheme) == (OPACITY.value, OPACITY.scheme_designator):
        return FindingDisplay(code, "Lung opacity", LUNG)
    return FindingDisplay(code, meaning)


@lru_cache(maxsize=256)
def decision_concept(finding: FindingDisplay, positive: bool) -> CodedConcept:
    """Display concept of the image-level probability, naming the finding and the decision.

    E.g. "Pneumonia PRESENT, probability" / "Pneumonia absent, probability"; code value
    ``<finding>-POS`` / ``<finding>-NEG``.
    """
    suffix = "-POS" if positive else "-NEG"
    value = _slug(finding.label, _SH_MAX - len(suffix)) + suffix
    meaning = f"{finding.label} PRESENT, probability" if positive else f"{finding.label} absent, probability"
    return _private(value, meaning)


class NotEvaluatedReason(str, Enum):
    """Why an image accepted for analysis has no result: the fixed vocabulary of a "not evaluated" SR.

    Never free text: the reason carries no patient data and no value read from the DICOM header.
    """

    PIXEL_DATA_UNDECODABLE = "pixel-data-undecodable"
    ANALYSIS_FAILED = "analysis-failed"
    NOT_FRONTAL_VIEW = "not-frontal-view"
    NOT_CHEST = "not-chest"
    NOT_ANALYSABLE = "not-analysable"

    @property
    def concept(self) -> CodedConcept:
        """Display NUM concept "Not evaluated: <reason>" (its value: analysis attempts)."""
        return _REASON_CONCEPTS[self]


_REASON_CONCEPTS = {
    NotEvaluatedReason.PIXEL_DATA_UNDECODABLE: _private("NE-UNDECODABLE", "Not evaluated: image could not be decoded"),
    NotEvaluatedReason.ANALYSIS_FAILED: _private("NE-FAILED", "Not evaluated: analysis failed repeatedly"),
    NotEvaluatedReason.NOT_FRONTAL_VIEW: _private("NE-NOT-FRONTAL", "Not evaluated: not a frontal chest view"),
    NotEvaluatedReason.NOT_CHEST: _private("NE-NOT-CHEST", "Not evaluated: not a chest image"),
    NotEvaluatedReason.NOT_ANALYSABLE: _private("NE-OTHER", "Not evaluated: image not analysable"),
}


def reason_for_not_analysed(reason: str | None) -> NotEvaluatedReason:
    """Category of a refusal by the frontal-view gate (``Findings.not_analysed_reason``, free text)."""
    text = (reason or "").lower()
    if "not a chest" in text:
        return NotEvaluatedReason.NOT_CHEST
    if any(word in text for word in ("lateral", "oblique", "decubitus", "not a frontal view")):
        return NotEvaluatedReason.NOT_FRONTAL_VIEW
    return NotEvaluatedReason.NOT_ANALYSABLE


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """A new Coding Scheme Identification item declaring :data:`PRIVATE_SCHEME` (PS3.3 C.12.1.1.4)."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="cxr-ai-node private codes",
        version="2",
        responsible_organization=MANUFACTURER,
    )
