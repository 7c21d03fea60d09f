"""Structured logs: formats, fields, pynetdicom kept quiet, and no patient name/ID through the pipeline."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicom_factory import cxr_like_array, have_dcmtk, make_dataset, write
from pydicom.uid import generate_uid
from tls_certs import free_port

from dicom_node.logging_setup import JsonFormatter, TextFormatter, configure_logging, make_formatter


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    pnd_level = logging.getLogger("pynetdicom").level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(pnd_level)


def _record(msg: str = "received", **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("dicom_node.scp.receive", logging.INFO, __file__, 1, msg, None, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_line_has_fields_and_drops_patient_fields() -> None:
    rec = _record(
        event="received",
        sop_instance_uid="1.2.3",
        calling_aet="ORTHANC",
        ms=12.3456,
        patient_name="Doe^John",
        PatientID="123",
    )
    line = JsonFormatter().format(rec)
    obj = json.loads(line)
    assert (
        obj["event"] == "received" and obj["sop_instance_uid"] == "1.2.3" and obj["calling_aet"] == "ORTHANC"
    )
    assert obj["ms"] == 12.35 and obj["level"] == "INFO" and obj["logger"] == "dicom_node.scp.receive"
    assert "Doe" not in line and "patient" not in line.lower() and '123"' not in line


def test_text_line() -> None:
    line = TextFormatter().format(
        _record("skipped: x", event="skipped", reason="Modality CT is not routed", ms=1.25)
    )
    assert " INFO dicom_node.scp.receive: skipped: x " in line
    assert 'event=skipped reason="Modality CT is not routed" ms=1.2' in line


def test_exception_is_included() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonFormatter().format(rec))["exc"]
    assert "ValueError: boom" in TextFormatter().format(rec)


def test_make_formatter_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="'xml'"):
        make_formatter("xml")


def test_configure_logging_quiets_pynetdicom(restore_logging: None) -> None:
    buf = io.StringIO()
    configure_logging("DEBUG", "json", stream=buf)
    configure_logging("DEBUG", "json", stream=buf)  # replaces, does not duplicate
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.WARNING
    logging.getLogger("pynetdicom.assoc").debug("dataset dump")
    logging.getLogger("dicom_node.test").info("hello", extra={"event": "x"})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["event"] == "x"
    configure_logging("INFO", "text", stream=buf, pynetdicom_level="DEBUG")
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.DEBUG


def test_configure_logging_keeps_highdicom_at_info(restore_logging: None) -> None:
    """highdicom's DEBUG chatter (~100 "copied attribute" lines per result object) stays out of a DEBUG log."""
    buf = io.StringIO()
    configure_logging("DEBUG", "json", stream=buf)
    assert logging.getLogger("highdicom").getEffectiveLevel() == logging.INFO
    logging.getLogger("highdicom.base").debug('copied attribute "PatientName"')
    logging.getLogger("dicom_node.test").debug("kept", extra={"event": "y"})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["event"] == "y"


@pytest.mark.integration
@pytest.mark.skipif(not have_dcmtk("storescu", "storescp"), reason="dcmtk not installed")
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_no_patient_name_or_id_in_logs(tmp_path: Path, restore_logging: None, fmt: str) -> None:
    """receive + analyse + deliver (+ a skipped CT and a refused caller) at DEBUG: the captured log
    output must not contain the distinctive patient name or ID that the results do carry."""
    from service_helpers import FakeAnalyser, _storescu

    from dicom_node.service import NodeService
    from dicom_node.settings import NodeSettings

    name, pid = "Xylophage^Quintessa", "PHI-55667788"
    dport = free_port()
    out = tmp_path / "dest"
    out.mkdir()
    scp = subprocess.Popen(
        ["storescp", "-aet", "DEST", "-od", str(out), str(dport)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    buf = io.StringIO()
    configure_logging("DEBUG", fmt, stream=buf)
    try:
        cxr = write(
            make_dataset(
                cxr_like_array(96, 80), PatientName=name, PatientID=pid, sop_instance_uid=generate_uid()
            ),
            tmp_path / "cxr.dcm",
        )
        ct = write(
            make_dataset(
                cxr_like_array(32, 32),
                PatientName=name,
                PatientID=pid,
                Modality="CT",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            ),
            tmp_path / "ct.dcm",
        )
        settings = NodeSettings(
            port=0,
            http_port=0,
            spool_dir=tmp_path / "spool",
            disk_reserve_mb=0,
            allowed_aets="STORESCU",
            destinations=f"DEST@127.0.0.1:{dport}",
            poll_interval_s=0.05,
            log_format=fmt,
        )
        with NodeService(settings, analyser=FakeAnalyser()) as svc:
            for aet in ("STORESCU", "INTRUDER"):
                _storescu(svc.port, cxr, ct, aet=aet, check=False)
            end = time.monotonic() + 30
            while time.monotonic() < end and svc.journal.counts().get("job.delivered", 0) < 1:
                time.sleep(0.05)
            assert svc.journal.counts().get("job.delivered") == 1
    finally:
        scp.terminate()
        scp.wait(10)
    results = [pydicom.dcmread(f) for f in out.iterdir()]
    assert results and all(str(r.PatientID) == pid for r in results)  # the data did flow through
    text = buf.getvalue()
    for event in ("received", "skipped", "analysed", "delivered", "association_rejected"):
        assert f"event={event}" in text or f'"event": "{event}"' in text, event
    for needle in (name, "Xylophage", "Quintessa", pid, "55667788"):
        assert needle not in text, needle


def test_json_log_line_survives_line_separators_and_warnings_are_captured() -> None:
    """Regression: with ensure_ascii=False a U+2028/U+0085 in a logged value split a JSON log line;
    pydicom warnings bypassed the structured handler."""
    import io
    import json as _json
    import logging as _logging
    import warnings

    from dicom_node.logging_setup import configure_logging

    _logging.captureWarnings(False)  # an earlier test's capture may have been undone by pytest's own
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", stream=stream)
    try:
        _logging.getLogger("cxr.test").info("odd value", extra={"reason": "a\u2028b\u0085c\u2029d"})
        warnings.warn("a pydicom-style warning", UserWarning, stacklevel=1)
    finally:
        _logging.getLogger().removeHandler(handler)
        _logging.captureWarnings(False)
    lines = stream.getvalue().splitlines()  # splitlines() breaks on U+2028/U+0085 too
    records = [_json.loads(line) for line in lines]
    assert records[0]["reason"] == "a\u2028b\u0085c\u2029d"
    assert any("a pydicom-style warning" in r["msg"] for r in records[1:])
