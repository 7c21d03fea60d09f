"""Frontal-view gate: refuse to guess on lateral/oblique views and on images that are not of the chest.

The models are trained on frontal (PA/AP) chest radiographs only. :func:`not_analysable_reason`
returns a short reason when an instance is clearly something else, and None ("analyse it")
otherwise. It only reads header attributes, never pixels.

The tests themselves are the project's one routing policy
(``dicom_node/orthanc_plugin/routing_policy.py``, stdlib only, shared with the Orthanc plug-in and
the node's SCP): the body-part and view parts of :data:`routing_policy.DEFAULT_POLICY`. So an image
that the routers analyse is never refused here, and the reasons are the same words (``lateral view
(SeriesDescription)``, ``not a chest image (BodyPartExamined=ABDOMEN)``): attribute names and
code-string values, never free text from the header. Evidence, strongest first: ViewPosition (AP/PA
frontal, overriding any textual hint; LL/RL/LATERAL lateral; LLD/RLD decubitus; RLO/LLO/RAO/...
oblique; any other value is not a frontal view), View Code Sequence, lateral hints in Series
Description / Protocol Name / Acquisition Device Processing Description (ignored when they also
name a frontal view, e.g. "PA + LAT"), Patient Orientation with an A or P row direction (sagittal
plane). Body Part Examined other than chest/thorax/lung (when present) -> not analysable.
"""

from __future__ import annotations

from typing import Any

import pydicom
from pydicom.multival import MultiValue

from dicom_node.orthanc_plugin import routing_policy

#: Keywords whose reading errors propagate with ``strict`` (what routing needs to decide at all).
STRICT_KEYWORDS = ("Manufacturer", "Modality", "SOPClassUID", "BodyPartExamined", "ViewPosition")


def _value(ds: pydicom.Dataset, keyword: str, strict: bool) -> Any:
    try:
        value = ds.get(keyword, None)
        if value is None:
            return None
        if keyword == "ViewCodeSequence":
            return [{"CodeMeaning": str(item.get("CodeMeaning", "") or "")} for item in value]
        if isinstance(value, (list, tuple, MultiValue)):
            return "\\".join(str(v) for v in value)
        return str(value)
    except Exception:
        if strict and keyword in STRICT_KEYWORDS:
            raise
        return None  # a malformed hint is no evidence


def header_tags(ds: pydicom.Dataset, *, strict: bool = False) -> dict[str, Any]:
    """The attributes the routing policy reads, as Orthanc's ``simplified-tags`` would give them.

    With ``strict``, an element of :data:`STRICT_KEYWORDS` that cannot be read raises (the SCP then
    refuses the data set); otherwise, and always for the free-text hints, it counts as absent.
    """
    out: dict[str, Any] = {}
    for keyword in routing_policy.KEYWORDS:
        value = _value(ds, keyword, strict)
        if value is not None:
            out[keyword] = value
    return out


def not_analysable_reason(ds: pydicom.Dataset) -> str | None:
    """Why ``ds`` must not be analysed (lateral/oblique view, not a chest), or None to analyse it."""
    return routing_policy.DEFAULT_POLICY.not_analysable_reason(header_tags(ds))
