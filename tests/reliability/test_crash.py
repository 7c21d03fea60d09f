"""Crash: SIGKILL the node at a random (seeded) moment while instances stream in; nothing acknowledged is lost.

Definition of "twice" used here:

* in Orthanc, a result can never be stored twice: result SOP Instance UIDs are deterministic
  (source SOP Instance UID + model versions, ``dicom_node.results.uids``) and Orthanc keeps one
  instance per SOP Instance UID. The test checks Orthanc holds exactly one SR and one SC per
  source image and nothing else;
* a *delivery* (C-STORE of a result by the node) may be repeated only when the crash hit
  between Orthanc's success response and the journal commit: at most one delivery batch per
  destination (``delivery_batch_size`` rows). A source instance the sender re-sends because
  its acknowledgement was lost in the crash may also produce a second job (same result UIDs).
  Every other result is delivered exactly once: checked from the node's ``delivered`` log lines.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from pathlib import Path

import pytest
from reliability_helpers import (
    SCALE,
    SendLog,
    journal_rows,
    make_node,
    orthanc_sop_uids,
    phantoms,
    report,
    scaled,
    send_files,
    sop_uid_of,
    wait_for,
)

from dicom_node.testing.local_orthanc import LocalOrthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20261123
DELIVERY_BATCH = 16


def test_sigkill_mid_stream_loses_nothing_acknowledged(
    orthanc: LocalOrthanc, tmp_path: Path, phantom_dir: Path
) -> None:
    n = scaled(200, 40)
    rng = random.Random(SEED)
    files = phantoms(phantom_dir, n, seed=SEED % 1000, size=256)
    uids = [sop_uid_of(f) for f in files]
    assert len(set(uids)) == n
    node = make_node(
        tmp_path, orthanc, CXR_NODE_BATCH_SIZE="8", CXR_NODE_DELIVERY_BATCH_SIZE=str(DELIVERY_BATCH)
    )
    node.start()
    t0 = time.monotonic()

    first = SendLog()
    stop = threading.Event()

    def stream() -> None:
        for i in range(0, n, 10):  # one association per 10 instances, like a modality sending studies
            if stop.is_set():
                first.not_sent.extend(uids[i:])
                return
            send_files(node.port, files[i : i + 10], log=first, uids=uids[i : i + 10], timeout=10)

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    kill_after_acks = rng.randint(n // 4, 3 * n // 4)
    extra_delay = rng.uniform(0.0, 0.3)
    wait_for(lambda: len(first.acknowledged) >= kill_after_acks or not sender.is_alive(), 300,
             "acknowledgements before the kill", interval=0.05)  # fmt: skip
    time.sleep(extra_delay)
    stop.set()
    node.kill()  # SIGKILL: no cleanup at all
    sender.join(60)
    acked_before = set(first.acknowledged)
    assert len(acked_before) >= kill_after_acks, "the sender stopped before the kill"
    assert len(acked_before) < n, "the node was killed after every instance was acknowledged: no crash tested"

    node.start()
    # the modality re-sends what it has no success for (like storescu / Orthanc would)
    resend = [(f, u) for f, u in zip(files, uids, strict=True) if u not in acked_before]
    second = SendLog()
    for i in range(0, len(resend), 10):
        chunk = resend[i : i + 10]
        send_files(node.port, [f for f, _ in chunk], log=second, uids=[u for _, u in chunk], timeout=30)
    assert second.acknowledged == {u for _, u in resend}, f"re-send not acknowledged: {second}"

    def all_delivered() -> bool:
        rows = journal_rows(
            node.spool_dir, "SELECT COUNT(DISTINCT sop_instance_uid) FROM jobs WHERE state='delivered'"
        )
        pending = journal_rows(
            node.spool_dir, "SELECT COUNT(*) FROM jobs WHERE state IN ('received','analysed')"
        )
        return rows[0][0] == n and pending[0][0] == 0

    wait_for(all_delivered, 120 + 3.0 * n, "every job delivered after the restart", interval=1.0)
    duration = time.monotonic() - t0
    node.stop()

    jobs = journal_rows(node.spool_dir, "SELECT id, sop_instance_uid, state FROM jobs")
    outbox = journal_rows(node.spool_dir, "SELECT job_id, sop_instance_uid, sop_class_uid, state FROM outbox")
    jobs_per_uid = collections.Counter(u for _, u, _ in jobs)
    # an acknowledged instance is never re-sent, so it has exactly one job
    assert all(jobs_per_uid[u] == 1 for u in acked_before), {
        u: jobs_per_uid[u] for u in acked_before if jobs_per_uid[u] != 1
    }
    results_by_job: dict[int, set[str]] = collections.defaultdict(set)
    for job_id, res_uid, _cls, state in outbox:
        assert state == "delivered", f"outbox row of job {job_id} still {state}"
        results_by_job[job_id].add(res_uid)
    in_orthanc = orthanc_sop_uids(orthanc)
    assert len(in_orthanc) == len(set(in_orthanc))
    stored = set(in_orthanc)
    lost = []
    for job_id, uid, state in jobs:
        res = results_by_job.get(job_id, set())
        if state != "delivered" or len(res) != 2 or not res <= stored:
            lost.append(uid)
    assert not lost, f"{len(lost)} instances without SR+SC in Orthanc: {lost[:5]}"
    expected_results = {r for res in results_by_job.values() for r in res}
    assert len(expected_results) == 2 * n, "result UIDs are not one SR + one SC per source image"
    assert stored == expected_results, f"Orthanc holds {len(stored)} instances, expected {2 * n}"

    delivered = collections.Counter(
        r["sop_instance_uid"] for r in node.log_records() if r.get("event") == "delivered"
    )
    assert set(delivered) == expected_results
    repeated = {u for u, c in delivered.items() if c > 1}
    duplicated_sources = {u for u, c in jobs_per_uid.items() if c > 1}
    assert duplicated_sources <= set(first.no_response) | set(first.not_sent)
    assert len(repeated) <= DELIVERY_BATCH + 2 * len(duplicated_sources), (
        f"{len(repeated)} results delivered more than once (allowed: one batch in flight at the crash "
        f"+ results of {len(duplicated_sources)} re-sent instances)"
    )
    report("crash (SIGKILL mid-stream, restart on the same spool)", tried=n, acknowledged_before_kill=len(acked_before),
           lost=len(lost), redelivered_results=len(repeated), duplicate_jobs=len(duplicated_sources),
           seconds=round(duration, 1), scale_note=f"N={n} at scale {SCALE}")  # fmt: skip
