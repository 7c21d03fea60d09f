"""The demo's Orthanc configuration is one the routing plug-in accepts (README's first command).

A plug-in setting the demo did not pass (MaxRetryDelaySeconds below the demo's RetryDelaySeconds) once
made Orthanc refuse to start in `bash scripts/demo.sh` while every test, with its own Orthanc settings,
still passed. This renders the demo's own configuration and loads its plug-in section as the plug-in does.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dicom_node.orthanc_plugin import routing_rules

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CXR_DEMO_DIR", str(tmp_path / "demo"))
    spec = importlib.util.spec_from_file_location("cxr_demo_under_test", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "cxr_demo_under_test", module)
    spec.loader.exec_module(module)
    return module


def test_the_demo_orthanc_config_loads_in_the_routing_plugin(demo) -> None:
    orthanc = demo._orthanc()
    orthanc.workdir.mkdir(parents=True, exist_ok=True)
    config = json.loads(orthanc.write_config().read_text())
    plugin = routing_rules.PluginConfig.from_orthanc_configuration(config)  # raises for an invalid section
    assert plugin.max_retry_delay_s >= plugin.retry_delay_s
    assert config["DicomPort"] == demo.DICOM_PORT and config["HttpPort"] == demo.HTTP_PORT
