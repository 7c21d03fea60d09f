"""Which received instances are analysed (settings-driven rules).

The default rules pass frontal chest radiographs: Modality CR or DX, a CXR-capable SOP class
(CR, DX for presentation/processing, Secondary Capture - the RSNA images are SC with Modality
CR), BodyPartExamined CHEST or absent, ViewPosition PA/AP or absent. Objects created by the node
itself (Manufacturer ``cxr-ai-node``, or any SR) are never analysed.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset

from dicom_node.settings import NodeSettings

try:  # the results writers own the marker; fall back to the same literal if they are absent
    from dicom_node.results_common import MANUFACTURER as OWN_MANUFACTURER
except ImportError:  # pragma: no cover
    OWN_MANUFACTURER = "cxr-ai-node"

#: Structured Report storage SOP classes start with this root (1.2.840.10008.5.1.4.1.1.88.x).
SR_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.88."


@dataclass(frozen=True)
class RouteDecision:
    """Whether to analyse an instance, and if not, why."""

    analyse: bool
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.analyse == (self.reason is not None):
            raise ValueError(f"a decision to skip needs a reason and vice versa, got {self!r}")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


@dataclass(frozen=True)
class RoutingRules:
    """The rules; build from settings with :meth:`from_settings`."""

    modalities: frozenset[str]
    sop_classes: frozenset[str]
    body_parts: frozenset[str]
    allow_empty_body_part: bool
    view_positions: frozenset[str]
    allow_empty_view_position: bool

    def __post_init__(self) -> None:
        for name in ("modalities", "sop_classes", "body_parts", "view_positions"):
            value = getattr(self, name)
            if not isinstance(value, frozenset):
                object.__setattr__(self, name, frozenset(value))
        if not self.modalities or not self.sop_classes:
            raise ValueError(
                f"routing needs at least one modality and SOP class, got {sorted(self.modalities)!r} "
                f"and {sorted(self.sop_classes)!r}"
            )

    @classmethod
    def from_settings(cls, settings: NodeSettings) -> RoutingRules:
        """Rules from the ``route_*`` settings."""
        return cls(
            modalities=frozenset(settings.route_modalities),
            sop_classes=frozenset(settings.route_sop_classes),
            body_parts=frozenset(settings.route_body_parts),
            allow_empty_body_part=settings.route_allow_empty_body_part,
            view_positions=frozenset(settings.route_view_positions),
            allow_empty_view_position=settings.route_allow_empty_view_position,
        )

    def decide(self, ds: Dataset, sop_class_uid: str | None = None) -> RouteDecision:
        """Decide on one dataset (only header attributes are read, never pixel data)."""
        sop_class = str(sop_class_uid or ds.get("SOPClassUID", "") or "")
        if sop_class.startswith(SR_CLASS_ROOT):
            return RouteDecision(False, f"structured report ({sop_class})")
        if _text(ds, "Manufacturer").lower() == OWN_MANUFACTURER.lower():
            return RouteDecision(False, f"created by this node (Manufacturer {OWN_MANUFACTURER})")
        if sop_class not in self.sop_classes:
            return RouteDecision(False, f"SOP class {sop_class or '(none)'} is not routed for analysis")
        modality = _text(ds, "Modality").upper()
        if modality not in self.modalities:
            return RouteDecision(False, f"Modality {modality or '(none)'} is not routed for analysis")
        body = _text(ds, "BodyPartExamined").upper()
        if body:
            if body not in self.body_parts:
                return RouteDecision(False, f"BodyPartExamined {body} is not routed for analysis")
        elif not self.allow_empty_body_part:
            return RouteDecision(False, "BodyPartExamined is empty")
        view = _text(ds, "ViewPosition").upper()
        if view:
            if view not in self.view_positions:
                return RouteDecision(False, f"ViewPosition {view} is not a routed (frontal) view")
        elif not self.allow_empty_view_position:
            return RouteDecision(False, "ViewPosition is empty")
        return RouteDecision(True)
