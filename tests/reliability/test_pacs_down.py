"""PACS down: Orthanc stops while results are pending, restarts later; all delivered once, no hot retry loop.

The outage lasts ``60 s x CXR_RELIABILITY_SCALE`` (at least 20 s; 60 s at scale 1). The node
runs with ``retry_base_s = 2``, ``retry_max_s = 8``: the jittered backoff waits at least
``0.5 x min(8, 2 x 2**(n-1))`` s before attempt ``n + 1``, so the number of failed attempts of a
result is bounded by how many such waits fit between its first failure and its delivery.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from pathlib import Path

import pytest
from reliability_helpers import (
    SCALE,
    journal_rows,
    make_node,
    orthanc_sop_uids,
    phantoms,
    report,
    scaled,
    send_files,
    wait_for,
)

from dicom_node.testing.local_orthanc import LocalOrthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RETRY_BASE_S = 2.0
RETRY_MAX_S = 8.0


def max_failed_attempts(window_s: float, base: float = RETRY_BASE_S, cap: float = RETRY_MAX_S) -> int:
    """Most failed attempts the jittered backoff allows within ``window_s`` after the first one (+1 slack)."""
    n, spent = 1, 0.0
    while True:
        wait = 0.5 * min(cap, base * 2 ** (n - 1))  # shortest wait after failure n
        if spent + wait > window_s:
            return n + 1  # +1: a batch may already be in flight when the window is measured
        spent += wait
        n += 1


def _ts(record: dict) -> float:
    return dt.datetime.fromisoformat(record["ts"]).timestamp()


def test_orthanc_outage_all_delivered_once_without_hot_loop(
    orthanc: LocalOrthanc, tmp_path: Path, phantom_dir: Path
) -> None:
    m = scaled(40, 8)
    outage_s = float(scaled(60, 20))
    files = phantoms(phantom_dir, m, seed=77, size=256)
    node = make_node(
        tmp_path, orthanc, CXR_NODE_RETRY_BASE_S=str(RETRY_BASE_S), CXR_NODE_RETRY_MAX_S=str(RETRY_MAX_S)
    )
    node.start()
    t0 = time.monotonic()
    orthanc.stop()  # down before the first result is ready
    sent = send_files(node.port, files)
    assert len(sent.acknowledged) == m, f"the node did not acknowledge every instance: {sent}"
    time.sleep(outage_s)
    pending = journal_rows(
        node.spool_dir, "SELECT COUNT(*), MAX(attempts) FROM outbox WHERE state='pending'"
    )[0]
    assert pending[0] > 0 and pending[1] >= 1, (
        f"no results were pending (and retried) during the outage: {pending}"
    )
    orthanc.start()

    def done() -> bool:
        left = journal_rows(node.spool_dir, "SELECT COUNT(*) FROM jobs WHERE state!='delivered'")[0][0]
        return left == 0

    wait_for(done, 120 + 2.0 * m, "every job delivered after Orthanc came back", interval=1.0)
    duration = time.monotonic() - t0
    node.stop()

    rows = journal_rows(node.spool_dir, "SELECT sop_instance_uid, state, attempts FROM outbox")
    results = {u for u, _, _ in rows}
    stored = orthanc_sop_uids(orthanc)
    by_source = collections.defaultdict(set)
    for src, res in journal_rows(node.spool_dir, "SELECT j.sop_instance_uid, o.sop_instance_uid FROM jobs j "
                                 "JOIN outbox o ON o.job_id=j.id"):  # fmt: skip
        by_source[src].add(res)
    acknowledged = set(sent.acknowledged)
    lost = sorted(u for u in acknowledged if len(by_source[u]) != 2 or not by_source[u] <= set(stored))
    assert not lost, f"{len(lost)} images without SR + SC in Orthanc"
    assert len(rows) == 2 * m and all(state == "delivered" for _, state, _ in rows)
    assert sorted(stored) == sorted(results), "Orthanc does not hold exactly one copy of every result"

    records = node.log_records()
    failed_at: dict[str, list[float]] = collections.defaultdict(list)
    delivered_at: dict[str, list[float]] = collections.defaultdict(list)
    for r in records:
        if r.get("event") == "delivery_failed":
            failed_at[r["sop_instance_uid"]].append(_ts(r))
        elif r.get("event") == "delivered":
            delivered_at[r["sop_instance_uid"]].append(_ts(r))
    assert all(len(delivered_at[u]) == 1 for u in results), "a result was delivered more than once"
    over = {}
    for uid, attempts_total in ((u, a) for u, _, a in rows):
        fails = failed_at.get(uid, [])
        assert attempts_total == len(fails) + 1, f"journal attempts {attempts_total} != log lines for {uid}"
        if fails:
            allowed = max_failed_attempts(delivered_at[uid][0] - min(fails))
            if len(fails) > allowed:
                over[uid] = (len(fails), allowed)
    assert not over, f"retries faster than the backoff schedule allows: {over}"
    total_failed = sum(len(v) for v in failed_at.values())
    report("PACS (Orthanc) down while results pending", tried=m, lost=len(lost), outage_s=outage_s,
           failed_attempts=total_failed, max_failed_attempts_per_result=max(map(len, failed_at.values()), default=0),
           seconds=round(duration, 1), scale_note=f"{m} images, {outage_s:.0f} s outage at scale {SCALE}")  # fmt: skip
