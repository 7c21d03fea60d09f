"""Regression tests for robustness fixes found by the fault suite (in-process SCP, loopback)."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import pytest
from hostile import _elem, _split, base_dataset, encode, part10
from pynetdicom import _config
from reliability_helpers import send_files

from dicom_node.scp.receive import MAX_REASON_CHARS, Receiver
from dicom_node.settings import NodeSettings
from dicom_node.storage.journal import Journal
from dicom_node.storage.spool import Spool

pytestmark = pytest.mark.integration

PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


def test_skip_reason_from_a_wrong_vr_is_clipped_and_printable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ViewPosition sent with a wrong VR (UT, 4-byte length) swallows binary bytes; before the
    fix the whole value (NULs, C1 controls such as U+0085 that split log lines, neighbouring
    attributes) went into the skip reason of the log line and the journal."""
    rng = random.Random(1)
    ds = base_dataset(rng)
    del ds.ViewPosition
    head, tail = _split(ds, 0x0018)
    junk = b"LATERAL\x00\x85\x01Secret^Patient" * 40
    body = encode(head) + _elem(0x0018, 0x5101, b"UT", junk) + encode(tail)
    path = tmp_path / "wrong-vr.dcm"
    path.write_bytes(part10(ds.SOPInstanceUID, body))

    settings = NodeSettings(port=0, spool_dir=tmp_path / "spool", disk_reserve_mb=0, http_port=0)
    journal = Journal(settings.journal_path)
    receiver = Receiver(settings, Spool(settings.spool_dir), journal)
    port = receiver.start()
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    try:
        with caplog.at_level(logging.INFO, logger="dicom_node.scp.receive"):
            log = send_files(port, [path], calling="PYSCU")
    finally:
        receiver.stop(5)
    assert log.statuses == {ds.SOPInstanceUID: 0}
    (job,) = journal.jobs(sop_instance_uid=ds.SOPInstanceUID)
    journal.close()
    assert job.state == "skipped"
    assert job.reason and len(job.reason) <= MAX_REASON_CHARS and PRINTABLE.match(job.reason), job.reason
    skipped = [r for r in caplog.records if getattr(r, "event", None) == "skipped"]
    assert len(skipped) == 1
    line = skipped[0].getMessage()
    assert PRINTABLE.match(line) and len(line) <= MAX_REASON_CHARS + 20, line
    assert PRINTABLE.match(str(skipped[0].reason))
