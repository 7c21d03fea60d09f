"""Journal: durability settings, job and outbox state machine, restart."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dicom_node.storage.journal import Journal, ResultFile


def _add(j: Journal, uid: str = "1.2.3", state: str = "received") -> int:
    return j.add_job(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax="1.2.840.10008.1.2.1",
        calling_aet="ORTHANC",
        path=f"/spool/{uid}.dcm",
        state=state,
    )


def test_wal_and_full_sync(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    assert j.pragma("journal_mode") == "wal"
    assert j.pragma("synchronous") == 2  # FULL
    with pytest.raises(ValueError, match="not a pragma"):
        j.pragma("x; drop table jobs")


def test_job_lifecycle_and_outbox(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    a, b = _add(j, "1.1"), _add(j, "1.2")
    _add(j, "9.9", state="skipped")
    assert [x.id for x in j.next_received(10)] == [a, b]
    assert [x.id for x in j.next_received(10, exclude={a})] == [b]
    assert [x.id for x in j.next_received(1)] == [a]
    files = [
        ResultFile("2.1", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.1.2.1", "/o/sr.dcm"),
        ResultFile("2.2", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1", "/o/sc.dcm"),
    ]
    ids = j.mark_analysed(a, files, ["D1@h:1", "D2@h:2"])
    assert len(ids) == 4 and j.get_job(a).state == "analysed"
    assert [x.id for x in j.next_received(10)] == [b]
    due = j.due_outbox(now=1e12, limit=10)
    assert {(o.sop_instance_uid, o.destination) for o in due} == {
        ("2.1", "D1@h:1"),
        ("2.1", "D2@h:2"),
        ("2.2", "D1@h:1"),
        ("2.2", "D2@h:2"),
    }
    assert j.mark_attempt_failed(ids[0], "refused", 1e15, permanent=True) == 1
    assert ids[0] not in [o.id for o in j.due_outbox(now=1e12, limit=10)]
    assert j.next_due_at() is not None
    for oid in ids[1:]:
        assert j.mark_delivered(oid) is None  # ids[0] still pending
    done = j.mark_delivered(ids[0])
    assert done is not None and done.id == a and done.state == "delivered"
    assert j.counts() == {"job.delivered": 1, "job.received": 1, "job.skipped": 1, "outbox.delivered": 4}


def test_attempts_and_failed(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    a = _add(j)
    assert j.count_attempt(a, "boom") == 1
    assert j.count_attempt(a, "boom") == 2
    j.set_job_state(a, "failed", "cannot decode")
    job = j.get_job(a)
    assert (job.state, job.reason, job.attempts) == ("failed", "cannot decode", 2)
    with pytest.raises(ValueError, match="'bogus'"):
        j.set_job_state(a, "bogus")
    with pytest.raises(KeyError, match="12345"):
        j.get_job(12345)


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = Journal(path)
    a = _add(j, "5.5")
    j.mark_analysed(a, [ResultFile("6.6", "1.2.3", "1.2.840.10008.1.2.1", "/o/x.dcm")], ["D@h:1"])
    j.close()
    j2 = Journal(path)
    assert j2.get_job(a).state == "analysed"
    assert [o.sop_instance_uid for o in j2.outbox(state="pending")] == ["6.6"]


def test_concurrent_inserts(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    threads = [
        threading.Thread(target=lambda i=i: [_add(j, f"1.{i}.{k}") for k in range(20)]) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert j.counts()["job.received"] == 80
    assert len({x.id for x in j.jobs()}) == 80


def test_analysis_starts_are_counted_before_and_survive_a_reopen(tmp_path: Path) -> None:
    """A start without an end (the process died) makes the job a suspect after a restart (issue 13 point 5)."""
    j = Journal(tmp_path / "j.sqlite3")
    job_id = j.add_job(sop_instance_uid="1.2", sop_class_uid="1.2.3", transfer_syntax="1.2.840.10008.1.2.1",
                       calling_aet="A", path="/x")  # fmt: skip
    assert j.start_attempt(job_id) == 1
    j.close()
    j = Journal(tmp_path / "j.sqlite3")  # "restart"
    job = j.get_job(job_id)
    assert job.starts == 1 and job.attempts == 0 and job.suspect
    j.count_attempt(job_id, "ValueError: x")  # a counted failure ends the start: not a suspect
    assert not j.get_job(job_id).suspect
    j.start_attempt(job_id)
    j.undo_start(job_id)  # graceful stop
    assert j.get_job(job_id).starts == 1
    j.close()


def test_old_journals_get_the_starts_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT "
            "NOT NULL, transfer_syntax TEXT NOT NULL, calling_aet TEXT NOT NULL, path TEXT, state TEXT NOT NULL, reason "
            "TEXT, attempts INTEGER NOT NULL DEFAULT 0, received_at REAL NOT NULL, updated_at REAL NOT NULL);"
            "INSERT INTO jobs VALUES (1, '1.2', '1.2.3', '1.2.840.10008.1.2.1', 'A', NULL, 'received', NULL, 0, 1, 1);"
        )
    j = Journal(path)
    assert j.get_job(1).starts == 0 and j.start_attempt(1) == 1
    j.close()
