"""The routing table of docs/ROUTING.md, checked row by row against the plug-in, the node and the gate.

Issue 13 point 2: three routing layers disagreed (an OT secondary capture with CHEST was forwarded by
the plug-in and skipped by the node; THORAX was dropped by both routers; a lateral known only from
SeriesDescription got a "not evaluated" SR while ViewPosition LL got nothing). Every combination of
real header values below has one documented outcome, and all three implementations must give it.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicom_node.orthanc.config import load_shipped_config
from dicom_node.orthanc_plugin import routing_policy as rp
from dicom_node.orthanc_plugin import routing_rules as rr
from dicom_node.scp.routing import RoutingRules
from dicom_node.settings import NodeSettings
from models.inference.view_gate import not_analysable_reason

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

DOC = Path(__file__).resolve().parents[1] / "docs" / "ROUTING.md"
SOP_CLASS = {"CR": rp.CR_IMAGE_STORAGE, "DX": rp.DX_FOR_PRESENTATION, "SC": rp.SECONDARY_CAPTURE,
             "OT": rp.SECONDARY_CAPTURE, "CT": "1.2.840.10008.5.1.4.1.1.2", "SR": "1.2.840.10008.5.1.4.1.1.88.22"}  # fmt: skip
MANUFACTURERS = ("ACME", "cxr-ai-node")
MODALITIES = ("CR", "DX", "SC", "OT", "CT", "SR")
BODY_PARTS = ("CHEST", "THORAX", "", "ABDOMEN")
VIEWS = ("PA", "AP", "LL", "RL", "")
SERIES_DESCRIPTIONS = ("", "CHEST LAT", "CHEST PA + LAT")
COLUMNS = ("Manufacturer", "Modality", "BodyPartExamined", "ViewPosition", "SeriesDescription")


def documented_rules() -> list[dict[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- routing-table:start -->\n(.*?)<!-- routing-table:end -->", text, re.S)
    assert block, "docs/ROUTING.md has no routing table"
    lines = [ln for ln in block.group(1).splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]]


def _matches(cell: str, value: str) -> bool:
    if cell == "*":
        return True
    options = [o.strip() for o in cell.split(",")]
    return any((o == "(empty)" and value == "") or o.upper() == value.upper() for o in options)


def documented(combo: dict[str, str]) -> dict[str, str]:
    for rule in RULES:
        if all(_matches(rule[c], combo[c]) for c in COLUMNS):
            return rule
    raise AssertionError(f"no rule of docs/ROUTING.md matches {combo}")


RULES = documented_rules()
COMBOS = [dict(zip(COLUMNS, values, strict=True))
          for values in itertools.product(MANUFACTURERS, MODALITIES, BODY_PARTS, VIEWS, SERIES_DESCRIPTIONS)]  # fmt: skip
PLUGIN = rr.PluginConfig.from_orthanc_configuration(load_shipped_config()).rules
NODE = RoutingRules.from_settings(NodeSettings())


def simplified_tags(combo: dict[str, str]) -> dict[str, Any]:
    """What Orthanc's ``simplified-tags`` give the plug-in (absent attributes are absent)."""
    tags = {k: v for k, v in combo.items() if v}
    tags["SOPClassUID"] = SOP_CLASS[combo["Modality"]]
    return tags


def dataset(combo: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS[combo["Modality"]]
    ds.SOPInstanceUID = "1.2.3.4"
    for k, v in combo.items():
        if v:
            setattr(ds, k, v)
    return ds


def gate_category(reason: str | None) -> str | None:
    """The gate's reason in the routing vocabulary (the words ``sr_codes.reason_for_not_analysed`` reads)."""
    if reason is None:
        return None
    if "not a chest" in reason:
        return rp.BODY_PART
    if re.search(r"lateral|oblique|decubitus|frontal", reason):
        return rp.VIEW_POSITION
    return "other"


def test_every_rule_is_used_and_the_table_is_well_formed() -> None:
    assert [r["rule"] for r in RULES] == [str(i) for i in range(1, len(RULES) + 1)]
    used = {documented(c)["rule"] for c in COMBOS}
    assert used == {r["rule"] for r in RULES}, f"rules never matched: {sorted({r['rule'] for r in RULES} - used)}"


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(v or "empty" for v in c.values()))
def test_plugin_node_and_gate_give_the_documented_outcome(combo: dict[str, str]) -> None:
    rule = documented(combo)
    plugin = PLUGIN.decide(simplified_tags(combo))
    node = NODE.decide(dataset(combo))
    gate = not_analysable_reason(dataset(combo))
    where = f"rule {rule['rule']} for {combo}"
    assert ("forwarded" if plugin.forward else "not forwarded") == rule["plug-in"], f"plug-in: {plugin} ({where})"
    got_node = "analysed" if node.analyse else f"skipped: {node.category}"
    assert got_node == rule["node"], f"node: {node} ({where})"
    if not plugin.forward:
        assert plugin.category == node.category, f"plug-in and node give different reasons ({where})"
    if rule["gate"] != "–":
        got_gate = "analyses" if gate is None else f"refuses: {gate_category(gate)}"
        assert got_gate == rule["gate"], f"gate: {gate!r} ({where})"
    # free text never reaches a reason
    for reason in (plugin.reason, node.reason, gate):
        assert "CHEST LAT" not in (reason or "") and "PA + LAT" not in (reason or ""), reason
