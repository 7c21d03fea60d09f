"""NodeSettings: env, YAML, comma lists, validation messages, generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dicom_node.settings import (
    DEFAULT_CXR_SOP_CLASSES,
    NodeSettings,
    configuration_markdown,
    load_settings,
    parse_destination,
    settings_markdown_table,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CXR_NODE_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = NodeSettings()
    assert (s.ae_title, s.bind, s.port, s.threshold, s.log_format) == (
        "AINODE",
        "127.0.0.1",
        11112,
        None,  # the classification bundle's decision_threshold
        "text",
    )
    assert s.allowed_aets == [] and s.destinations == []
    assert s.route_sop_classes == list(DEFAULT_CXR_SOP_CLASSES)
    assert s.journal_path == Path("spool") / "journal.sqlite3"


def test_env_comma_lists_and_types(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXR_NODE_AE_TITLE", "MYNODE")
    monkeypatch.setenv("CXR_NODE_PORT", "4243")
    monkeypatch.setenv("CXR_NODE_ALLOWED_AETS", "ORTHANC, MODALITY1 ,")
    monkeypatch.setenv("CXR_NODE_DESTINATIONS", "ORTHANC@127.0.0.1:4242,PACS@pacs.example:104")
    monkeypatch.setenv("CXR_NODE_ROUTE_MODALITIES", "cr,dx,ot")
    monkeypatch.setenv("CXR_NODE_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("CXR_NODE_DEVICE", "CUDA:1")
    monkeypatch.setenv("CXR_NODE_LOG_FORMAT", "JSON")
    s = load_settings()
    assert s.ae_title == "MYNODE" and s.port == 4243
    assert s.allowed_aets == ["ORTHANC", "MODALITY1"]
    assert [str(d) for d in s.destinations] == ["ORTHANC@127.0.0.1:4242", "PACS@pacs.example:104"]
    assert s.destinations[1].host == "pacs.example" and s.destinations[1].port == 104
    assert s.route_modalities == ["CR", "DX", "OT"]
    assert s.spool_dir == tmp_path and s.device == "cuda:1" and s.log_format == "json"


def test_env_json_list_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_ALLOWED_AETS", '["A1", "B2"]')
    assert load_settings().allowed_aets == ["A1", "B2"]


def test_yaml_then_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        "ae_title: YAMLNODE\nport: 5000\nallowed_aets: [ORTHANC]\n"
        "destinations:\n  - ORTHANC@localhost:4242\n  - http://alice:s3cret@localhost:8042\nthreshold: 0.3\n"
    )
    s = load_settings(cfg)
    assert (s.ae_title, s.port, s.allowed_aets, s.threshold) == ("YAMLNODE", 5000, ["ORTHANC"], 0.3)
    rest = s.destinations[1]
    assert rest.kind == "rest" and rest.username == "alice" and rest.password == "s3cret"
    assert "s3cret" not in str(s.public_dict()) and "s3cret" not in repr(s.destinations)
    monkeypatch.setenv("CXR_NODE_PORT", "6000")
    monkeypatch.setenv("CXR_NODE_CONFIG", str(cfg))
    s2 = load_settings()
    assert s2.port == 6000 and s2.ae_title == "YAMLNODE"


def test_yaml_missing_and_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_settings(tmp_path / "nope.yaml")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ae_titel: X\n")
    with pytest.raises(ValidationError, match="ae_titel"):
        load_settings(cfg)


@pytest.mark.parametrize(
    "text",
    [
        "ORTHANC@localhost",
        "@localhost:4242",
        "ORTHANC@localhost:99999",
        "THIS_AE_TITLE_IS_TOO_LONG@h:1",
        "garbage",
    ],
)
def test_bad_destination_names_value(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("CXR_NODE_DESTINATIONS", f"GOOD@localhost:4242,{text}")
    with pytest.raises(ValidationError) as err:
        load_settings()
    assert text in str(err.value) or text.split("@")[0] in str(err.value)


def test_parse_destination_forms() -> None:
    d = parse_destination("ORTHANC@[::1]:4242")
    assert (d.ae_title, d.host, d.port) == ("ORTHANC", "::1", 4242)
    r = parse_destination("https://u:p%40ss@orthanc:8043/")
    assert (r.url, r.password) == ("https://orthanc:8043", "p@ss")


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("CXR_NODE_THRESHOLD", "1.5", "threshold"),
        ("CXR_NODE_DEVICE", "tpu", "tpu"),
        ("CXR_NODE_LOG_LEVEL", "LOUD", "LOUD"),
        ("CXR_NODE_LOG_FORMAT", "xml", "xml"),
        ("CXR_NODE_AE_TITLE", "A\\B", "A\\\\B"),
        ("CXR_NODE_ROUTE_SOP_CLASSES", "1.2.x", "1.2.x"),
        ("CXR_NODE_BATCH_SIZE", "0", "batch_size"),
    ],
)
def test_invalid_values_are_named(monkeypatch: pytest.MonkeyPatch, key: str, value: str, needle: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as err:
        load_settings()
    assert needle in str(err.value)


def test_retry_max_below_base_is_rejected() -> None:
    with pytest.raises(ValidationError, match="retry_max_s"):
        NodeSettings(retry_base_s=10, retry_max_s=5)


def test_markdown_table_lists_every_field() -> None:
    table = settings_markdown_table()
    for name in NodeSettings.model_fields:
        assert f"`CXR_NODE_{name.upper()}`" in table and f"`{name}`" in table
    assert table.count("\n") == len(NodeSettings.model_fields) + 2


def test_configuration_doc_is_up_to_date() -> None:
    doc = (REPO / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    assert doc == configuration_markdown(), (
        "regenerate: python -m dicom_node.settings > docs/CONFIGURATION.md"
    )


def test_serve_exits_2_on_bad_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from dicom_node.cli import main

    monkeypatch.setenv("CXR_NODE_DESTINATIONS", "not-a-destination")
    assert main(["serve"]) == 2
    assert "not-a-destination" in capsys.readouterr().err
    monkeypatch.delenv("CXR_NODE_DESTINATIONS")
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_readme_configuration_table_is_up_to_date() -> None:
    """The README documents every setting with its default: its table is the generated one."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    assert start in readme and end in readme, "README.md lost its settings-table markers"
    block = readme.split(start, 1)[1].split(end, 1)[0]
    assert block.strip() == settings_markdown_table().strip(), (
        "README.md configuration table is stale: paste `python -c 'from dicom_node.settings import "
        "settings_markdown_table as t; print(t())'` between the settings-table markers"
    )


def test_result_workers_and_chunked_receive_reach_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both were constructor arguments only; IT sets them like every other setting."""
    monkeypatch.setenv("CXR_NODE_RESULT_WORKERS", "3")
    monkeypatch.setenv("CXR_NODE_CHUNKED_RECEIVE", "false")
    s = NodeSettings(spool_dir=tmp_path)
    assert s.result_workers == 3 and s.chunked_receive is False
    monkeypatch.delenv("CXR_NODE_RESULT_WORKERS")
    assert NodeSettings(spool_dir=tmp_path).result_workers is None
    for bad in (-1, 0):  # one result-building path: the process pool (issue 14)
        with pytest.raises(ValueError, match="result_workers"):
            NodeSettings(spool_dir=tmp_path, result_workers=bad)
