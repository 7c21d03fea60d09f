"""Frontal-view gate: refuse to guess on lateral/oblique views and on images that are not of the chest.

The models are trained on frontal (PA/AP) chest radiographs only. :func:`not_analysable_reason`
returns a short human-readable reason when an instance is clearly something else, and None
("analyse it") otherwise. It only reads header attributes, never pixels.

Evidence, strongest first:

1. View Position (0018,5101): LL/RL/LATERAL -> lateral; LLD/RLD -> lateral decubitus (a horizontal
   beam on a patient lying on the side: not the upright/supine frontal film the models know);
   RLO/LLO/RAO/LAO/RPO/LPO -> oblique; AP/PA -> frontal, which overrides any textual hint.
2. View Code Sequence (0054,0220) Code Meaning ("lateral", "oblique", "postero-anterior" ...).
3. Text hints in Series Description, Protocol Name, Acquisition Device Processing Description
   ("LAT", "LATERAL"); ignored when they also name a frontal view
   (e.g. "PA + LAT" describing a two-view study).
4. Patient Orientation (0020,0020): a row direction of A or P (e.g. ``A\\F``) means the image
   plane is sagittal, i.e. a lateral projection.

Body Part Examined other than chest/thorax/lung (when present) -> not analysable.
"""

from __future__ import annotations

import re
from typing import Any

import pydicom
from pydicom.multival import MultiValue

_LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLAT", "RLAT"})
_DECUBITUS_VIEW_POSITIONS = frozenset({"LLD", "RLD"})
_OBLIQUE_VIEW_POSITIONS = frozenset({"RLO", "LLO", "RAO", "LAO", "RPO", "LPO", "OBL", "OBLIQUE"})
_FRONTAL_VIEW_POSITIONS = frozenset({"AP", "PA", "APS", "PAS", "AP SUPINE", "PA ERECT"})

_CHEST_BODY_PARTS = frozenset(
    {"CHEST", "THORAX", "LUNG", "LUNGS", "TORAX", "THORAX_AP", "CHEST_AP", "CHEST_PA"}
)
_CHEST_WORDS = re.compile(r"CHEST|THORA|LUNG|TORAX|TORACE|POUMON|BRUST")

_LATERAL_TEXT = re.compile(r"(?<![A-Z])(LAT|LATERAL|LATERALE|LL|RL|LLD|RLD)(?![A-Z])")
_FRONTAL_TEXT = re.compile(r"(?<![A-Z])(PA|AP|FRONTAL|FRONT|POSTERO-?ANTERIOR|ANTERO-?POSTERIOR)(?![A-Z])")
_LATERAL_MEANING = re.compile(r"(?<![a-z])(lateral|latero)", re.IGNORECASE)
_OBLIQUE_MEANING = re.compile(r"oblique", re.IGNORECASE)
_FRONTAL_MEANING = re.compile(r"postero-?anterior|antero-?posterior|frontal", re.IGNORECASE)

# Study Description is not used: it describes the whole (often two-view) study, not this image.
_TEXT_ATTRIBUTES = ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription")


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, None)
    except Exception:  # a malformed element is no evidence
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _view_code_meanings(ds: pydicom.Dataset) -> list[str]:
    try:
        seq: Any = ds.get("ViewCodeSequence", None) or []
        return [str(item.get("CodeMeaning", "") or "") for item in seq]
    except Exception:
        return []


def _body_part_reason(ds: pydicom.Dataset) -> str | None:
    body_part = _text(ds, "BodyPartExamined").strip().upper()
    if not body_part or body_part in _CHEST_BODY_PARTS or _CHEST_WORDS.search(body_part):
        return None
    return f"not a chest image (BodyPartExamined={body_part})"


def _view_reason(ds: pydicom.Dataset) -> str | None:
    view = _text(ds, "ViewPosition").strip().upper()
    if view in _LATERAL_VIEW_POSITIONS:
        return f"lateral view (ViewPosition={view})"
    if view in _DECUBITUS_VIEW_POSITIONS:
        return f"lateral decubitus view (ViewPosition={view})"
    if view in _OBLIQUE_VIEW_POSITIONS:
        return f"oblique view (ViewPosition={view})"
    if view in _FRONTAL_VIEW_POSITIONS:
        return None

    meanings = _view_code_meanings(ds)
    for meaning in meanings:
        if _FRONTAL_MEANING.search(meaning):
            return None
    for meaning in meanings:
        if _LATERAL_MEANING.search(meaning):
            return f"lateral view (ViewCodeSequence={meaning!r})"
        if _OBLIQUE_MEANING.search(meaning):
            return f"oblique view (ViewCodeSequence={meaning!r})"

    for keyword in _TEXT_ATTRIBUTES:
        text = _text(ds, keyword).upper()
        if text and _LATERAL_TEXT.search(text) and not _FRONTAL_TEXT.search(text):
            return f"lateral view ({keyword}={_text(ds, keyword)!r})"

    orientation = _text(ds, "PatientOrientation").upper().split("\\")
    if len(orientation) == 2 and orientation[0][:1] in ("A", "P") and orientation[1][:1] in ("F", "H"):
        return "lateral view (PatientOrientation=" + "\\".join(orientation) + ")"
    return None


def not_analysable_reason(ds: pydicom.Dataset) -> str | None:
    """Why ``ds`` must not be analysed (lateral/oblique view, not a chest), or None to analyse it."""
    return _body_part_reason(ds) or _view_reason(ds)
