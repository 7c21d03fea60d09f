"""A data set that kills the node's process (poison pill) is set aside after ``analysis_max_attempts``.

Before (issue 13 point 5): a native crash or an OOM kill during analysis left the job ``received``
with its attempt count unchanged, so the node crashed again on it after every restart, forever, and
the jobs in flight with it were charged nothing but never finished either. Now every start is counted
before the data set is read; after a restart the unfinished job runs alone, and after
``analysis_max_attempts`` starts it is set aside (``failed``). The node runs as ``cxr-node serve``
through ``poison_node.py``, which kills the process (SIGKILL) when the marked data set is decoded.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pydicom
import pytest
from integration_helpers import NodeProcess
from reliability_helpers import journal_rows, orthanc_sop_uids, phantoms, report, send_files, wait_for

from dicom_node.testing.local_orthanc import LocalOrthanc, ProcessExited

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_ATTEMPTS = 3
MARKER = "cxr-test-poison"


def test_a_data_set_that_kills_the_process_is_set_aside(orthanc: LocalOrthanc, tmp_path: Path, phantom_dir: Path) -> None:
    good = phantoms(phantom_dir, 4, seed=99, size=256)
    poison_ds = pydicom.dcmread(good[0])
    poison_ds.SOPInstanceUID = poison_ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    poison_ds.ImageComments = MARKER
    good_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in good}
    poison = tmp_path / "poison.dcm"
    poison_ds.save_as(poison, enforce_file_format=True)
    node = NodeProcess(workdir=tmp_path / "node", port=orthanc.node_port, orthanc_dicom_port=orthanc.dicom_port,
                       env_overrides={"CXR_NODE_ANALYSIS_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
                                      "CXR_TEST_POISON_MARKER": MARKER, "CXR_NODE_DECODE_WORKERS": "2"},
                       command=[sys.executable, str(Path(__file__).with_name("poison_node.py"))])  # fmt: skip
    t0 = time.monotonic()
    node.start()
    # the poison last, in the same association: the good ones are still being analysed when it kills the
    # node (it may die before the poison's own C-STORE response: the instance is in the journal by then)
    sent = send_files(node.port, [*good, poison])
    assert len(sent.acknowledged & good_uids) == len(good), sent
    assert journal_rows(node.spool_dir, "SELECT COUNT(*) FROM jobs WHERE sop_instance_uid=?",
                        (str(poison_ds.SOPInstanceUID),))[0][0] == 1  # fmt: skip
    deaths = 0
    for _ in range(MAX_ATTEMPTS + 3):  # bounded: before the fix this loop never ends with the node alive
        if node.proc is not None:
            try:
                wait_for(lambda: node.proc.poll() is not None, 30, "the node to die", interval=0.5)  # type: ignore[union-attr]
            except AssertionError:
                break  # it stayed up for 30 s
        deaths += 1
        node.proc = None
        try:
            node.start()
        except ProcessExited:  # died again while starting (the poison was picked up at once): proc is None
            pass
    alive = node.proc is not None and node.proc.poll() is None
    poison_uid = str(poison_ds.SOPInstanceUID)

    def settled() -> bool:
        rows = journal_rows(node.spool_dir, "SELECT COUNT(*) FROM jobs WHERE state IN ('received', 'analysed')")
        return rows[0][0] == 0

    if alive:
        wait_for(settled, 240, "every job delivered or failed", interval=1.0)
    duration = time.monotonic() - t0
    node.stop()
    states = dict(journal_rows(node.spool_dir, "SELECT sop_instance_uid, state FROM jobs"))
    starts = dict(journal_rows(node.spool_dir, "SELECT sop_instance_uid, starts FROM jobs"))
    reason = journal_rows(node.spool_dir, "SELECT reason FROM jobs WHERE sop_instance_uid=?", (poison_uid,))[0][0]
    results = len(orthanc_sop_uids(orthanc))
    report("poison pill: a data set that kills the process", tried=1 + len(good), lost=sum(states.get(u) != "delivered" for u in good_uids),
           deaths=deaths, poison_starts=starts.get(poison_uid), poison_state=states.get(poison_uid),
           good_delivered=sum(states.get(u) == "delivered" for u in good_uids), results_in_orthanc=results,
           seconds=round(duration, 1))  # fmt: skip
    assert alive, f"the node kept dying ({deaths} deaths)"
    assert deaths == MAX_ATTEMPTS, f"the node died {deaths} times, expected {MAX_ATTEMPTS}"
    assert states[poison_uid] == "failed" and "set aside" in (reason or ""), (states[poison_uid], reason)
    assert starts[poison_uid] == MAX_ATTEMPTS + 1  # the last start is the one that set it aside
    assert all(states[u] == "delivered" for u in good_uids), states
    assert max(starts[u] for u in good_uids) <= 2, f"innocent jobs were charged with the crashes: {starts}"
    assert results >= 2 * len(good)
