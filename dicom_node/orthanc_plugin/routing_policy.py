"""The one routing policy: which images are analysed, written once (pure Python, stdlib only).

Three places apply it, and so they cannot disagree:

* the Orthanc plug-in (``routing_rules`` / ``cxr_router.py``) decides which instances it forwards,
  from Orthanc's ``simplified-tags``; this module runs inside Orthanc's embedded interpreter, so it
  imports nothing outside the standard library (it is a sibling of the plug-in script);
* the node's SCP (``dicom_node.scp.routing``) decides which received instances are analysed, from the
  data set's header (``models.inference.view_gate.header_tags`` turns it into the same mapping);
* the engine's view gate (``models.inference.view_gate.not_analysable_reason``) refuses what is not a frontal
  chest image with the body-part and view tests below; when the routers let an image through, the
  gate agrees, so it only speaks for images that reach the engine some other way (``cxr-node infer``,
  widened ``route_*`` settings), and then its refusal becomes a "not evaluated" SR.

The input is a mapping keyword -> value as Orthanc's ``simplified-tags`` give it: strings (multi-valued
ones joined with ``\\``), lists for multi-valued answers, a list of mappings for a sequence.

The outcome of every header combination is documented in ``docs/ROUTING.md`` and checked row by row
by ``tests/test_routing_table.py``. Reasons never quote free text from the header (SeriesDescription,
ProtocolName, code meanings ... may identify a patient): only attribute names and code-string values
that look like code strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Manufacturer the node writes into its own SR / SC (the loop guard).
NODE_MANUFACTURER = "cxr-ai-node"
#: Modalities that are results, never images to analyse, whatever the configuration says.
NEVER_ANALYSED_MODALITIES = frozenset({"SR", "KO", "PR", "SEG", "RTSTRUCT", "DOC"})
#: Structured Report storage SOP classes start with this root (1.2.840.10008.5.1.4.1.1.88.x).
SR_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.88."

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: SOP classes a chest radiograph arrives as (the RSNA images are Secondary Capture with Modality CR).
DEFAULT_SOP_CLASSES = (CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING, SECONDARY_CAPTURE)

# categories of a refusal: a fixed vocabulary (metric labels, "not evaluated" SR reasons)
OWN_RESULT = "own_result"
STRUCTURED_REPORT = "structured_report"
SOP_CLASS = "sop_class"
MODALITY = "modality"
BODY_PART = "body_part"
VIEW_POSITION = "view_position"
CATEGORIES = (OWN_RESULT, STRUCTURED_REPORT, SOP_CLASS, MODALITY, BODY_PART, VIEW_POSITION)

#: BodyPartExamined values (or parts of them) that mean "chest", besides the configured ones.
_CHEST_WORDS = re.compile(r"CHEST|THORA|LUNG|TORAX|TORACE|POUMON|BRUST")
_LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLAT", "RLAT"})
_DECUBITUS_VIEW_POSITIONS = frozenset({"LLD", "RLD"})
_OBLIQUE_VIEW_POSITIONS = frozenset({"RLO", "LLO", "RAO", "LAO", "RPO", "LPO", "OBL", "OBLIQUE"})
_LATERAL_TEXT = re.compile(r"(?<![A-Z])(LAT|LATERAL|LATERALE|LL|RL|LLD|RLD)(?![A-Z])")
_FRONTAL_TEXT = re.compile(r"(?<![A-Z])(PA|AP|FRONTAL|FRONT|POSTERO-?ANTERIOR|ANTERO-?POSTERIOR)(?![A-Z])")
_LATERAL_MEANING = re.compile(r"(?<![a-z])(lateral|latero)", re.IGNORECASE)
_OBLIQUE_MEANING = re.compile(r"oblique", re.IGNORECASE)
_FRONTAL_MEANING = re.compile(r"postero-?anterior|antero-?posterior|frontal", re.IGNORECASE)
#: Free-text attributes read for a lateral hint (Study Description is not: it describes the whole,
#: often two-view, study). Their values are never quoted.
TEXT_HINT_ATTRIBUTES = ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription")
#: Every keyword the policy reads (what an adapter must provide).
KEYWORDS = ("Manufacturer", "Modality", "SOPClassUID", "BodyPartExamined", "ViewPosition", "ViewCodeSequence",
            "PatientOrientation", *TEXT_HINT_ATTRIBUTES)  # fmt: skip
_CS_RE = re.compile(r"^[A-Z0-9 _]{1,16}$")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def text(value: Any) -> str:
    """A header value as one stripped string ('' if absent; multi-valued joined with ``\\``)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\\".join(text(v) for v in value)
    if isinstance(value, Mapping):
        return ""
    return str(value).strip()


def code(value: Any) -> str:
    """A code string (CS) value, stripped and upper-cased ('' if absent); only the first of several."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return text(value).upper()


#: Values that may be quoted in a reason: defined terms (PS3.3 / PS3.16 Annex L) and what the policy
#: itself lists. Anything else is "(other value)": a code-string-looking value can still be a name or
#: an ID put in the wrong attribute, and reasons reach log lines.
KNOWN_CODES = frozenset({
    # Modality
    "CR", "DX", "SC", "OT", "CT", "MR", "US", "NM", "PT", "XA", "RF", "MG", "IO", "PX", "RG", "ES", "XC", "OP",
    "SR", "KO", "PR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTIMAGE", "DOC", "REG", "BDUS", "BMD", "ECG", "OCT",
    # ViewPosition
    "AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO", "RAO", "LAO", "RPO", "LPO", "LATERAL", "LAT", "LLAT",
    "RLAT", "OBL", "OBLIQUE", "APS", "PAS", "AP SUPINE", "PA ERECT",
    # BodyPartExamined (common defined terms)
    "CHEST", "THORAX", "LUNG", "ABDOMEN", "PELVIS", "SKULL", "HEAD", "BRAIN", "NECK", "CSPINE", "TSPINE", "LSPINE",
    "SSPINE", "SPINE", "WHOLESPINE", "HAND", "WRIST", "FOREARM", "ELBOW", "ARM", "HUMERUS", "SHOULDER", "CLAVICLE",
    "SCAPULA", "RIB", "STERNUM", "HIP", "FEMUR", "LEG", "KNEE", "TIBIA", "FIBULA", "ANKLE", "FOOT", "HEEL", "TOE",
    "FINGER", "THUMB", "BREAST", "HEART", "KIDNEY", "LIVER", "EXTREMITY", "SINUS", "JAW", "TMJ", "FACE", "ORBIT",
    "SACRUM", "COCCYX", "WHOLEBODY", "BODY", "ABDOMENPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS", "HEADNECK",
})


def quoted(value: str) -> str:
    """``value`` if it is a known code (safe in a log line), else ``(other value)``."""
    return value if value in KNOWN_CODES else "(other value)"


def _uid(value: str) -> str:
    return value if _UID_RE.match(value) and len(value) <= 64 else "(invalid)"


@dataclass(frozen=True)
class Decision:
    """Whether an instance is analysed (forwarded by the plug-in), and if not, the category and reason."""

    analyse: bool
    category: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.analyse != (self.category is None) or (self.category is None) != (self.reason is None):
            raise ValueError(f"a refusal needs a category and a reason, an acceptance neither: {self!r}")
        if self.category is not None and self.category not in CATEGORIES:
            raise ValueError(f"unknown refusal category {self.category!r}")

    @property
    def forward(self) -> bool:
        """The plug-in's word for :attr:`analyse`."""
        return self.analyse


ANALYSE = Decision(True)


def _frozen_codes(name: str, values: Iterable[str], *, allow_empty: bool = False) -> frozenset[str]:
    if isinstance(values, str):
        raise ValueError(f"{name} must be a collection of strings, got the string {values!r}")
    out = frozenset(str(v).strip().upper() for v in values)
    for v in out:
        if not v and not allow_empty:
            raise ValueError(f"{name} may not contain the empty string, got {sorted(out)!r}")
        if v and not _CS_RE.match(v):
            raise ValueError(f"{name} has an invalid DICOM code string {v!r}")
    return out


@dataclass(frozen=True)
class RoutingPolicy:
    """The rules (defaults: frontal chest radiographs). ``decide(tags)`` applies them in this order:

    1. node output (``excluded_manufacturers``) and structured reports / result modalities: refused;
    2. Modality in ``modalities`` (a radiograph: BodyPartExamined may be empty if
       ``allow_empty_body_part``), or in ``secondary_capture_modalities`` (SC/OT: BodyPartExamined
       must say chest); any other Modality is refused;
    3. SOP Class UID (when present) in ``sop_classes`` (empty: any);
    4. BodyPartExamined, when present, is a chest: in ``body_parts`` or containing CHEST, THORA, LUNG,
       TORAX, TORACE, POUMON or BRUST;
    5. the view: :meth:`view_reason` (ViewPosition in ``view_positions`` is frontal; lateral, decubitus,
       oblique ViewPosition values, a lateral ViewCodeSequence, a lateral hint in SeriesDescription /
       ProtocolName / AcquisitionDeviceProcessingDescription, or a sagittal PatientOrientation are refused).
    """

    modalities: frozenset[str] = frozenset({"CR", "DX"})
    secondary_capture_modalities: frozenset[str] = frozenset({"SC", "OT"})
    sop_classes: frozenset[str] = frozenset(DEFAULT_SOP_CLASSES)
    body_parts: frozenset[str] = frozenset({"CHEST", "THORAX"})
    allow_empty_body_part: bool = True
    view_positions: frozenset[str] = frozenset({"AP", "PA"})
    allow_empty_view_position: bool = True
    excluded_manufacturers: frozenset[str] = frozenset({NODE_MANUFACTURER.upper()})

    def __post_init__(self) -> None:
        for name in ("modalities", "secondary_capture_modalities", "body_parts", "view_positions"):
            object.__setattr__(self, name, _frozen_codes(name, getattr(self, name)))
            bad = getattr(self, name) & NEVER_ANALYSED_MODALITIES if "modalities" in name else set()
            if bad:
                raise ValueError(f"modalities {sorted(bad)} are results and can never be analysed ({name})")
        if not self.modalities and not self.secondary_capture_modalities:
            raise ValueError("the routing policy needs at least one modality")
        sops = frozenset(str(s).strip() for s in self.sop_classes)
        for s in sops:
            if not _UID_RE.match(s) or len(s) > 64:
                raise ValueError(f"not a valid SOP Class UID: {s!r}")
        object.__setattr__(self, "sop_classes", sops)
        excluded = frozenset(str(m).strip().upper() for m in self.excluded_manufacturers)
        if NODE_MANUFACTURER.upper() not in excluded:
            raise ValueError(f"excluded_manufacturers must contain {NODE_MANUFACTURER!r} (loop guard), "
                             f"got {sorted(excluded)!r}")  # fmt: skip
        object.__setattr__(self, "excluded_manufacturers", excluded)

    # ------------------------------------------------------------------ the decision
    def decide(self, tags: Mapping[str, Any]) -> Decision:
        """Decide for one instance from its header attributes (see the class docstring)."""
        manufacturer = text(tags.get("Manufacturer")).upper()
        if manufacturer in self.excluded_manufacturers:
            return Decision(False, OWN_RESULT, f"created by this node (Manufacturer {NODE_MANUFACTURER})")
        sop_class = text(tags.get("SOPClassUID"))
        modality = code(tags.get("Modality"))
        if sop_class.startswith(SR_CLASS_ROOT) or modality in NEVER_ANALYSED_MODALITIES:
            return Decision(False, STRUCTURED_REPORT, f"structured report or other result object "
                                                      f"(Modality {quoted(modality) if modality else '(none)'})")  # fmt: skip
        body = code(tags.get("BodyPartExamined"))
        if modality in self.modalities:
            if not body and not self.allow_empty_body_part:
                return Decision(False, BODY_PART, "BodyPartExamined is empty")
        elif modality in self.secondary_capture_modalities:
            if not body:
                return Decision(False, BODY_PART, f"BodyPartExamined is empty (required for Modality {modality})")
        else:
            return Decision(False, MODALITY, f"Modality {quoted(modality) if modality else '(none)'} is not "
                                             "routed for analysis")  # fmt: skip
        if sop_class and self.sop_classes and sop_class not in self.sop_classes:
            return Decision(False, SOP_CLASS, f"SOP class {_uid(sop_class)} is not routed for analysis")
        refusal = self.body_part_refusal(tags) or self.view_refusal(tags)
        return refusal or ANALYSE

    def body_part_refusal(self, tags: Mapping[str, Any]) -> Decision | None:
        """Refusal when BodyPartExamined is present and not a chest (an empty one is no evidence)."""
        body = code(tags.get("BodyPartExamined"))
        if not body or body in self.body_parts or _CHEST_WORDS.search(body):
            return None
        shown = body if body in KNOWN_CODES or body in self.body_parts else quoted(body)
        return Decision(False, BODY_PART, f"not a chest image (BodyPartExamined={shown})")

    def view_refusal(self, tags: Mapping[str, Any]) -> Decision | None:
        """Refusal when the view is not frontal. Evidence, strongest first: ViewPosition (a configured
        frontal value overrides everything else), ViewCodeSequence, the free-text hints, PatientOrientation."""
        view = code(tags.get("ViewPosition"))
        if view:
            if view in self.view_positions:
                return None
            for kinds, what in ((_LATERAL_VIEW_POSITIONS, "lateral view"),
                                (_DECUBITUS_VIEW_POSITIONS, "lateral decubitus view"),
                                (_OBLIQUE_VIEW_POSITIONS, "oblique view")):  # fmt: skip
                if view in kinds:
                    return Decision(False, VIEW_POSITION, f"{what} (ViewPosition={view})")  # a listed code
            return Decision(False, VIEW_POSITION, f"not a frontal view (ViewPosition={quoted(view)})")
        if not self.allow_empty_view_position:
            return Decision(False, VIEW_POSITION, "ViewPosition is empty")
        meanings = [text(item.get("CodeMeaning")) for item in _items(tags.get("ViewCodeSequence"))]
        if any(_FRONTAL_MEANING.search(m) for m in meanings):
            return None
        for m in meanings:
            if _LATERAL_MEANING.search(m):
                return Decision(False, VIEW_POSITION, "lateral view (ViewCodeSequence)")
            if _OBLIQUE_MEANING.search(m):
                return Decision(False, VIEW_POSITION, "oblique view (ViewCodeSequence)")
        for keyword in TEXT_HINT_ATTRIBUTES:
            hint = text(tags.get(keyword)).upper()
            if hint and _LATERAL_TEXT.search(hint) and not _FRONTAL_TEXT.search(hint):
                return Decision(False, VIEW_POSITION, f"lateral view ({keyword})")
        orientation = text(tags.get("PatientOrientation")).upper().split("\\")
        if len(orientation) == 2 and orientation[0][:1] in ("A", "P") and orientation[1][:1] in ("F", "H"):
            shown = "\\".join(o if re.fullmatch(r"[APLRHF]{1,3}", o) else "(other value)" for o in orientation)
            return Decision(False, VIEW_POSITION, f"lateral view (PatientOrientation={shown})")
        return None

    def not_analysable_reason(self, tags: Mapping[str, Any]) -> str | None:
        """The engine's gate: why the image is not a frontal chest image, or None (body part + view only)."""
        refusal = self.body_part_refusal(tags) or self.view_refusal(tags)
        return None if refusal is None else refusal.reason


def _items(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, Mapping)]
    return []


#: The defaults every part of the project starts from (the engine's gate uses exactly these).
DEFAULT_POLICY = RoutingPolicy()
