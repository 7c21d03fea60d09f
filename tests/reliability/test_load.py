"""Load: 50 concurrent associations, then a flood of twice the association limit.

Runs against the real node (``cxr-node serve``, ``max_associations`` 50). The instances are CT
images, skipped by routing and kept in the spool (``keep_skipped``), so that the scenario measures
the SCP and persistence rather than the analysis: every acknowledged instance must be in the journal
and the spool afterwards. Associations beyond the limit must be
refused cleanly (A-ASSOCIATE-RJ) or aborted, never half-served: every instance is either
acknowledged (and persisted) or reported to its sender as not stored.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from integration_helpers import make_image, write
from reliability_helpers import (
    SCALE,
    SendLog,
    echo_ok,
    journal_rows,
    receiving_node,
    report,
    scaled,
    send_files,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONCURRENT = 50


def _files(folder: Path, n: int, seed: int) -> list[Path]:
    return [
        write(make_image("CT", rows=64, columns=64, body_part="CHEST", view_position=None, seed=seed + i),
              folder / f"{seed + i}.dcm")
        for i in range(n)
    ]


def _storm(port: int, groups: list[list[Path]]) -> tuple[list[SendLog], float]:
    logs = [SendLog() for _ in groups]
    barrier = threading.Barrier(len(groups))

    def one(i: int) -> None:
        barrier.wait(30)
        send_files(port, groups[i], log=logs[i], timeout=60)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(groups))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "an SCU thread hung"
    return logs, time.monotonic() - t0


def test_concurrent_associations_and_flood(dcmtk: None, tmp_path: Path) -> None:
    per_assoc = scaled(20, 4)
    scp = receiving_node(tmp_path / "node", CXR_NODE_MAX_ASSOCIATIONS=str(CONCURRENT))
    scp.start()
    files = _files(tmp_path / "in", 3 * CONCURRENT * per_assoc, seed=1000)

    # 1) exactly the limit: every association served, every instance acknowledged
    groups = [files[i * per_assoc : (i + 1) * per_assoc] for i in range(CONCURRENT)]
    logs, t1 = _storm(scp.port, groups)
    assert sum(lg.rejected_associations + lg.aborted_associations for lg in logs) == 0, (
        "refused below the limit"
    )
    acked = set().union(*(lg.acknowledged for lg in logs))
    assert len(acked) == CONCURRENT * per_assoc
    assert echo_ok(scp.port)

    # 2) flood: twice the limit at once
    rest = files[CONCURRENT * per_assoc :]
    flood = [rest[i * per_assoc : (i + 1) * per_assoc] for i in range(2 * CONCURRENT)]
    flogs, t2 = _storm(scp.port, flood)
    rejected = sum(lg.rejected_associations for lg in flogs)
    aborted = sum(lg.aborted_associations for lg in flogs)
    for lg in flogs:  # per association: fully served, or refused/aborted with nothing reported stored twice
        assert set(lg.statuses.values()) <= {0x0000, 0xA700}, lg
    flood_acked = set().union(*(lg.acknowledged for lg in flogs))
    assert echo_ok(scp.port), "the SCP stopped answering after the flood"
    scp.stop()

    # no instance acknowledged and then lost: journal row + spool file for each
    rows = journal_rows(scp.spool_dir, "SELECT sop_instance_uid, path FROM jobs")
    in_journal = {u: p for u, p in rows}
    all_acked = acked | flood_acked
    lost = [u for u in all_acked if u not in in_journal or not Path(in_journal[u]).is_file()]
    assert not lost, f"{len(lost)} acknowledged instances missing from journal/spool"
    assert set(in_journal) == all_acked, "journal rows for instances the sender was told failed"
    tried = len(files)
    report("load: 50 concurrent associations, then 100 at once (limit 50)", tried=tried,
           acknowledged=len(all_acked), refused_associations=rejected, aborted_associations=aborted,
           not_stored_reported_to_sender=tried - len(all_acked), lost=len(lost), seconds=round(t1 + t2, 1),
           scale_note=f"{per_assoc} instances per association at scale {SCALE}")  # fmt: skip
