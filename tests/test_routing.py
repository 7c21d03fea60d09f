"""Routing rules: frontal CXRs are analysed, everything else is skipped with a reason."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicom_node.scp.routing import OWN_MANUFACTURER, RouteDecision, RoutingRules
from dicom_node.settings import CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, SECONDARY_CAPTURE, NodeSettings

CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _ds(sop_class: str = DX_FOR_PRESENTATION, **attrs: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.Modality = "DX"
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


RULES = RoutingRules.from_settings(NodeSettings())


@pytest.mark.parametrize(
    ("sop_class", "attrs"),
    [
        (DX_FOR_PRESENTATION, {"BodyPartExamined": "CHEST", "ViewPosition": "PA"}),
        (CR_IMAGE_STORAGE, {"Modality": "CR", "ViewPosition": "AP"}),
        (SECONDARY_CAPTURE, {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}),  # RSNA
        (DX_FOR_PRESENTATION, {}),
    ],
)
def test_analysed(sop_class: str, attrs: dict[str, str]) -> None:
    assert RULES.decide(_ds(sop_class, **attrs)) == RouteDecision(True)


@pytest.mark.parametrize(
    ("sop_class", "attrs", "needle"),
    [
        (CT, {"Modality": "CT"}, "Modality CT"),
        (CT, {"Modality": "DX"}, CT),
        (SECONDARY_CAPTURE, {"Modality": "OT"}, "BodyPartExamined is empty (required for Modality OT)"),
        (DX_FOR_PRESENTATION, {"BodyPartExamined": "KNEE"}, "KNEE"),
        (DX_FOR_PRESENTATION, {"ViewPosition": "LL"}, "LL"),
        (SR, {"Modality": "SR"}, "structured report"),
        (SECONDARY_CAPTURE, {"Modality": "CR", "Manufacturer": OWN_MANUFACTURER}, "created by this node"),
    ],
)
def test_skipped_with_reason(sop_class: str, attrs: dict[str, str], needle: str) -> None:
    d = RULES.decide(_ds(sop_class, **attrs))
    assert not d.analyse and needle in (d.reason or "")


def test_empty_body_part_and_view_can_be_required() -> None:
    strict = RoutingRules.from_settings(
        NodeSettings(route_allow_empty_body_part=False, route_allow_empty_view_position=False)
    )
    assert strict.decide(_ds(ViewPosition="PA")).reason == "BodyPartExamined is empty"
    assert strict.decide(_ds(BodyPartExamined="CHEST")).reason == "ViewPosition is empty"
    assert strict.decide(_ds(BodyPartExamined="CHEST", ViewPosition="PA")).analyse


def test_rules_follow_settings() -> None:
    rules = RoutingRules.from_settings(NodeSettings(route_modalities="OT", route_view_positions="LL"))
    assert rules.decide(_ds(SECONDARY_CAPTURE, Modality="OT", ViewPosition="LL")).analyse
    assert not rules.decide(_ds(DX_FOR_PRESENTATION, ViewPosition="LL")).analyse


def test_decision_validation() -> None:
    with pytest.raises(ValueError):
        RouteDecision(False)
    with pytest.raises(ValueError):
        RouteDecision(True, "why")
