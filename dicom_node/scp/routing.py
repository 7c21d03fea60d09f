"""Which received instances are analysed: the project's one routing policy, configured by the settings.

The policy itself is :mod:`dicom_node.orthanc_plugin.routing_policy` (stdlib only, shared with the
Orthanc plug-in and the engine's view gate); this module builds it from the ``route_*`` settings and
applies it to a received data set's header (``models.inference.view_gate.header_tags``). Defaults: Modality
CR or DX (BodyPartExamined chest or absent), or SC / OT with a chest BodyPartExamined; a CXR-capable
SOP class (CR, DX for presentation/processing, Secondary Capture - the RSNA images are SC with
Modality CR); a frontal view (ViewPosition PA/AP or absent, and no lateral evidence elsewhere in
the header). Objects created by the node itself (Manufacturer ``cxr-ai-node``) and SRs are never
analysed. The outcome of every header combination is in ``docs/ROUTING.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset

from dicom_node.orthanc_plugin import routing_policy
from dicom_node.orthanc_plugin.routing_policy import RoutingPolicy
from dicom_node.settings import NodeSettings
from models.inference.view_gate import header_tags

OWN_MANUFACTURER = routing_policy.NODE_MANUFACTURER
SR_CLASS_ROOT = routing_policy.SR_CLASS_ROOT


@dataclass(frozen=True)
class RouteDecision:
    """Whether to analyse an instance, and if not, why (``category``: a fixed vocabulary, for metrics)."""

    analyse: bool
    reason: str | None = None
    category: str | None = None

    def __post_init__(self) -> None:
        if self.analyse == (self.reason is not None):
            raise ValueError(f"a decision to skip needs a reason and vice versa, got {self!r}")


class RoutingRules:
    """The routing policy as the node applies it; build from settings with :meth:`from_settings`."""

    def __init__(self, policy: RoutingPolicy) -> None:
        self.policy = policy

    @classmethod
    def from_settings(cls, settings: NodeSettings) -> RoutingRules:
        """Rules from the ``route_*`` settings."""
        return cls(
            RoutingPolicy(
                modalities=frozenset(settings.route_modalities),
                secondary_capture_modalities=frozenset(settings.route_secondary_capture_modalities),
                sop_classes=frozenset(settings.route_sop_classes),
                body_parts=frozenset(settings.route_body_parts),
                allow_empty_body_part=settings.route_allow_empty_body_part,
                view_positions=frozenset(settings.route_view_positions),
                allow_empty_view_position=settings.route_allow_empty_view_position,
            )
        )

    def decide(self, ds: Dataset, sop_class_uid: str | None = None) -> RouteDecision:
        """Decide on one dataset (only header attributes are read, never pixel data).

        An unreadable Modality / SOP Class UID / BodyPartExamined / ViewPosition / Manufacturer raises
        (the SCP refuses the data set with 0xC000); unreadable free-text hints count as absent."""
        tags = header_tags(ds, strict=True)
        if sop_class_uid:
            tags["SOPClassUID"] = str(sop_class_uid)
        d = self.policy.decide(tags)
        return RouteDecision(True) if d.analyse else RouteDecision(False, d.reason, d.category)
