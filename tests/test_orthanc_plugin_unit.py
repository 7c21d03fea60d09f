"""Unit tests of the routing rules of the Orthanc plug-in and of the shipped Orthanc configuration."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dicom_node.orthanc.config import (
    DEBIAN_DICOMWEB_PLUGIN,
    DEBIAN_PYTHON_PLUGIN,
    DICOMWEB_ROOT,
    PLUGIN_SCRIPT,
    SHIPPED_CONFIG,
    Modality,
    OrthancDeployment,
    load_shipped_config,
    render_config,
    write_config,
)
from dicom_node.orthanc_plugin import routing_rules as rr

CXR = {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA", "Manufacturer": "ACME"}


def tags(**kw: Any) -> dict[str, Any]:
    out = dict(CXR)
    for k, v in kw.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------------- RoutingRules
@pytest.mark.parametrize(
    "instance_tags",
    [
        tags(),
        tags(Modality="DX", ViewPosition="AP"),
        tags(BodyPartExamined=None, ViewPosition=None),  # CR without body part / view: forwarded
        tags(BodyPartExamined="chest ", ViewPosition=" pa"),  # normalised
        tags(Modality="SC"),  # secondary capture saying CHEST
        tags(Modality=["DX"]),  # multi-valued answers
    ],
)
def test_chest_radiographs_are_forwarded(instance_tags: dict[str, Any]) -> None:
    d = rr.RoutingRules().decide(instance_tags)
    assert d.forward, d.reason


@pytest.mark.parametrize(
    ("instance_tags", "category"),
    [
        (tags(Manufacturer="cxr-ai-node"), "own_result"),
        (tags(Manufacturer="CXR-AI-NODE", Modality="SC"), "own_result"),
        (tags(Modality="SR"), "structured_report"),
        (tags(Modality="PR"), "structured_report"),
        (tags(Modality="CT"), "modality"),
        (tags(Modality=None), "modality"),
        (tags(BodyPartExamined="ABDOMEN"), "body_part"),
        (tags(Modality="SC", BodyPartExamined=None), "body_part"),
        (tags(ViewPosition="LL"), "view_position"),
        (tags(ViewPosition="LATERAL"), "view_position"),
        (tags(SOPClassUID="1.2.840.10008.5.1.4.1.1.2"), "sop_class"),
    ],
)
def test_non_cxr_and_node_output_are_not_forwarded(instance_tags: dict[str, Any], category: str) -> None:
    d = rr.RoutingRules().decide(instance_tags)
    assert not d.forward
    assert d.category == category, d.reason


def test_reasons_carry_no_patient_data() -> None:
    t = tags(Modality="CT", PatientName="Doe^Jane", PatientID="P123")
    reason = rr.RoutingRules().decide(t).reason
    assert "Doe" not in reason and "P123" not in reason


def test_select_instances_keeps_order_and_skips_already_forwarded() -> None:
    instances = [("a", tags()), ("b", tags(Modality="CT")), ("c", tags(Modality="DX")), ("d", tags())]
    sel = rr.select_instances(instances, rr.RoutingRules(), already_forwarded={"d"})
    assert sel.forward == ("a", "c")
    assert [i for i, _ in sel.skipped] == ["b", "d"]
    assert dict(sel.skipped)["d"] == "already forwarded"


# ----------------------------------------------------------------------------------- PluginConfig
def test_config_section_defaults_and_overrides() -> None:
    cfg = rr.PluginConfig.from_section({"Modalities": ["dx"], "ViewPositions": ["PA"], "AutoForward": False})
    assert cfg.rules.modalities == {"DX"}
    assert cfg.auto_forward is False
    assert not cfg.rules.decide(tags()).forward  # CR no longer routed
    assert cfg.rules.decide(tags(Modality="DX")).forward
    assert not cfg.rules.decide(tags(Modality="DX", ViewPosition=None)).forward  # empty view not allowed now
    assert rr.PluginConfig.from_section(None) == rr.PluginConfig()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"Modalitys": ["CR"]}, "unknown keys"),
        ({"Modalities": "CR"}, "must be a list of strings"),
        ({"Modalities": ["SR"]}, "can never be"),
        ({"Modalities": [""]}, "empty string"),
        ({"SecondaryCaptureModalities": [""]}, "empty string"),
        ({"SecondaryCaptureBodyParts": ["CHEST"]}, "unknown keys"),  # one body-part list now (routing policy)
        ({"SopClasses": ["not-a-uid"]}, "SOP Class UID"),
        ({"ExcludedManufacturers": ["someone"]}, "loop guard"),
        ({"MaxRetries": -1}, "MaxRetries"),
        ({"RetryDelaySeconds": 0}, "RetryDelaySeconds"),
        ({"RetryDelaySeconds": 60, "MaxRetryDelaySeconds": 30}, "MaxRetryDelaySeconds"),
        ({"AlertAfterSeconds": 0}, "AlertAfterSeconds"),
        ({"AutoForward": "yes"}, "AutoForward"),
        ({"NodeModality": ""}, "NodeModality"),
        ({"BodyParts": ["CHEST\\ABDOMEN"]}, "invalid DICOM code string"),
    ],
)
def test_bad_config_sections_are_rejected_with_the_value(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rr.PluginConfig.from_section(section)


def test_node_modality_must_be_declared() -> None:
    with pytest.raises(ValueError, match="not declared in DicomModalities"):
        rr.PluginConfig.from_orthanc_configuration({"CxrAiNode": {"NodeModality": "ai"}, "DicomModalities": {}})


def test_store_request_and_route() -> None:
    cfg = rr.PluginConfig(job_priority=3)
    assert rr.store_request(["x", "y"], cfg) == {"Resources": ["x", "y"], "Synchronous": False, "Priority": 3}
    with pytest.raises(ValueError):
        rr.store_request([], cfg)
    sid = "ef0cb5b5-a795f739-29696aee-5ef3fdbf-6483e9e8"
    assert rr.analyze_route_study_id(f"/cxr-ai/studies/{sid}/analyze") == sid
    assert rr.analyze_route_study_id(f"/cxr-ai/studies/{sid}/analyze/x") is None


# ----------------------------------------------------------------------------------- shipped configuration
def test_shipped_config_is_consistent_with_the_plugin() -> None:
    cfg = load_shipped_config()
    plugin_cfg = rr.PluginConfig.from_orthanc_configuration(cfg)
    assert plugin_cfg == rr.PluginConfig.from_section(cfg["CxrAiNode"])
    assert cfg["UserMetadata"][rr.FORWARDED_METADATA] >= 1024  # user metadata range
    assert cfg["AuthenticationEnabled"] is True and cfg["DicomCheckCalledAet"] is True
    assert cfg["DicomAlwaysAllowStore"] is False
    assert cfg["DicomCheckModalityHost"] is True  # a peer must call from its declared address (issue 13 point 3)
    assert cfg["DicomModalities"]["cxr-node"]["AllowStore"] is True


def test_orthanc_keeps_the_router_jobs_it_has_not_polled_yet() -> None:
    """The router polls each forward job (``GET /jobs/{id}``) once per poll interval and sends a study again
    when Orthanc no longer knows its job. Orthanc keeps only ``JobsHistorySize`` finished jobs (default 10):
    with that default, a burst of more than 10 studies finishing within one interval dropped the first
    finished jobs before they were polled, and those studies were analysed twice (seen in
    tests/reliability/test_replicas.py: 12 studies, 13 analyses). The shipped configuration keeps 1,000."""
    assert load_shipped_config()["JobsHistorySize"] >= 1000
    deployment_docs = (Path(__file__).resolve().parents[1] / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    assert '"JobsHistorySize": 1000' in deployment_docs  # and a site adding the plug-in to its own Orthanc is told


def test_shipped_config_uses_env_placeholders_only_in_strings() -> None:
    # Orthanc 1.10 substitutes ${VAR} in strings only; an integer option given as "${VAR}" is fatal.
    cfg = load_shipped_config()
    text = SHIPPED_CONFIG.read_text()
    found = set(re.findall(r"\$\{([A-Za-z_0-9]+)\}", text))
    assert found == {"ORTHANC_USER", "ORTHANC_PASSWORD", "CXR_NODE_HOST", "CXR_MODALITY_AET", "CXR_MODALITY_HOST",
                     "CXR_ORTHANC_PLUGIN_SCRIPT"}  # fmt: skip
    for key in ("HttpPort", "DicomPort", "StableAge"):
        assert isinstance(cfg[key], int), key
    for m in cfg["DicomModalities"].values():
        assert isinstance(m["Port"], int)


def test_render_config_fills_every_deployment_value(tmp_path: Path) -> None:
    dep = OrthancDeployment(
        storage_dir=tmp_path / "db",
        users={"alice": "s3cret"},
        node=Modality("cxr-node", "AINODE", "127.0.0.1", 11113),
        http_port=18042,
        dicom_port=14242,
        modalities=(Modality("cr1", "CR1", "10.0.0.5", 104),),
        stable_age_s=2,
    )
    cfg = render_config(dep)
    assert "${" not in json.dumps(cfg)
    assert (cfg["HttpPort"], cfg["DicomPort"], cfg["StableAge"]) == (18042, 14242, 2)
    assert cfg["RegisteredUsers"] == {"alice": "s3cret"}
    assert cfg["DicomModalities"]["cxr-node"]["Port"] == 11113
    assert cfg["DicomModalities"]["cr1"]["AET"] == "CR1"
    assert set(cfg["DicomModalities"]) == {"cxr-node", "cr1"}
    assert Path(cfg["PythonScript"]) == PLUGIN_SCRIPT.resolve() and PLUGIN_SCRIPT.is_file()
    assert cfg["RemoteAccessAllowed"] is False
    rr.PluginConfig.from_orthanc_configuration(cfg)
    path = write_config(dep, tmp_path / "orthanc.json")
    assert json.loads(path.read_text()) == cfg
    assert path.stat().st_mode & 0o077 == 0  # holds a password
    assert cfg["Plugins"] == [str(DEBIAN_PYTHON_PLUGIN)] and "DicomWeb" not in cfg  # DICOMweb only when asked


def test_render_config_adds_dicomweb_when_asked(tmp_path: Path) -> None:
    dep = OrthancDeployment(storage_dir=tmp_path / "db", users={"alice": "s3cret"},
                            node=Modality("cxr-node", "AINODE", "127.0.0.1", 11113),
                            dicomweb_plugin=DEBIAN_DICOMWEB_PLUGIN)  # fmt: skip
    cfg = render_config(dep)
    assert cfg["Plugins"] == [str(DEBIAN_PYTHON_PLUGIN), str(DEBIAN_DICOMWEB_PLUGIN)]
    assert cfg["DicomWeb"]["Enable"] is True and cfg["DicomWeb"]["Root"] == DICOMWEB_ROOT == "/dicom-web/"
    assert cfg["DicomWeb"]["StudiesMetadata"] == "Full"  # OHIF reads whole-study metadata
    assert cfg["AuthenticationEnabled"] is True  # the plug-in answers behind the same HTTP auth


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"http_port": 0}, "http_port"),
        ({"http_port": 4242, "dicom_port": 4242}, "must differ"),
        ({"users": {}}, "users"),
        ({"stable_age_s": 0}, "stable_age_s"),
        ({"ae_title": "A" * 17}, "ae_title"),
        ({"modalities": (Modality("cxr-node", "X", "h", 1),)}, "unique"),
    ],
)
def test_bad_deployments_are_rejected(tmp_path: Path, kw: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {
        "storage_dir": tmp_path,
        "users": {"u": "p"},
        "node": Modality("cxr-node", "AINODE", "127.0.0.1", 11112),
    }
    base.update(kw)
    with pytest.raises(ValueError, match=message):
        OrthancDeployment(**base)


def test_render_config_refuses_a_host_name_while_orthanc_checks_addresses(tmp_path: Path) -> None:
    dep = OrthancDeployment(storage_dir=tmp_path, users={"u": "p"}, node=Modality("cxr-node", "AINODE", "cxr-node", 11112))
    with pytest.raises(ValueError, match="must be an IP address, got 'cxr-node'"):
        render_config(dep)


def test_bad_modality_is_rejected() -> None:
    with pytest.raises(ValueError, match="AE title"):
        Modality("x", "BAD\\AET", "h", 104)
    with pytest.raises(ValueError, match="port"):
        Modality("x", "AET", "h", 70000)
