"""Retention (issue 13 point 6): finished jobs, failed ones too, are purged with their files; ``cxr-node purge``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.storage.journal import Journal, ResultFile
from dicom_node.storage.retention import Purger, purge
from dicom_node.storage.spool import Spool

REPO = Path(__file__).resolve().parents[1]
TS = "1.2.840.10008.1.2.1"


def _job(j: Journal, spool: Spool, uid: str, state: str, *, result: str | None = None, delivered: bool = True) -> int:
    path = spool.store_incoming(uid, b"DICM" + uid.encode())
    job_id = j.add_job(sop_instance_uid=uid, sop_class_uid="1.2.3", transfer_syntax=TS, calling_aet="A",
                       path=str(path), state="received")  # fmt: skip
    if result is not None:
        rpath = spool.store_result_bytes(job_id, result, b"SR")
        (out,) = j.mark_analysed(job_id, [ResultFile(result, "1.2.4", TS, str(rpath))], ["ORTHANC@h:1"])
        if delivered:
            j.mark_delivered(out)
    if state in ("skipped", "failed"):
        j.set_job_state(job_id, state, "why")
    return job_id


def _age(j: Journal, seconds: float) -> None:
    with sqlite3.connect(j.path) as db:
        db.execute("UPDATE jobs SET updated_at = updated_at - ?", (seconds,))


@pytest.fixture
def store(tmp_path: Path) -> tuple[Journal, Spool]:
    spool = Spool(tmp_path / "spool")
    return Journal(tmp_path / "spool" / "journal.sqlite3"), spool


def test_finished_jobs_and_their_files_are_purged_after_the_retention_period(store: tuple[Journal, Spool]) -> None:
    j, spool = store
    done = _job(j, spool, "1.1", "delivered", result="9.1")
    skipped = _job(j, spool, "1.2", "skipped")
    failed = _job(j, spool, "1.3", "failed")
    waiting = _job(j, spool, "1.4", "received")  # still to analyse: never purged
    pending = _job(j, spool, "1.5", "analysed", result="9.5", delivered=False)  # result not delivered yet
    _age(j, 8 * 86400)
    fresh = _job(j, spool, "1.6", "delivered", result="9.6")
    assert purge(j, spool, 7 * 86400, dry_run=True).jobs == 3  # nothing removed yet
    assert len(j.jobs()) == 6
    result = purge(j, spool, 7 * 86400)
    assert (result.jobs, result.outbox_rows, result.files) == (3, 1, 4)
    left = {job.id for job in j.jobs()}
    assert left == {waiting, pending, fresh} and not {done, skipped, failed} & left
    on_disk = {p.name for p in spool.root.rglob("*.dcm")}
    assert not any(n.startswith(("1.1_", "1.2_", "1.3_", "9.1")) for n in on_disk), on_disk
    assert any(n.startswith("1.4_") for n in on_disk) and any(n.startswith("9.5") for n in on_disk)
    assert not (spool.outbox / str(done)).exists()  # the job's result folder went with it
    assert j.outbox(job_id=done) == []


def test_the_running_node_purges_periodically(store: tuple[Journal, Spool]) -> None:
    j, spool = store
    _job(j, spool, "2.1", "failed")
    p = Purger(j, spool, retention_s=0.01, interval_s=0.05)
    p.start()
    try:
        import time

        deadline = time.monotonic() + 10
        while j.jobs() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        p.stop()
    assert j.jobs() == []


def test_cxr_node_purge_command(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    j = Journal(tmp_path / "spool" / "journal.sqlite3")
    _job(j, spool, "3.1", "failed")
    _job(j, spool, "3.2", "delivered", result="9.2")
    _age(j, 3 * 3600)
    _job(j, spool, "3.3", "skipped")
    j.close()
    env = {"CXR_NODE_SPOOL_DIR": str(tmp_path / "spool"), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "dicom_node.cli", "purge", *args], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert run("--older-than-hours", "2", "--dry-run") == {"older_than_hours": 2.0, "jobs": 2, "outbox_rows": 1,
                                                           "files": 3, "bytes": 16, "dry_run": True}  # fmt: skip
    assert run("--older-than-hours", "2")["jobs"] == 2
    assert run()["jobs"] == 0  # default retention (168 h): the fresh one stays
    j = Journal(tmp_path / "spool" / "journal.sqlite3")
    assert [job.sop_instance_uid for job in j.jobs()] == ["3.3"]
    j.close()
