"""Disk full: the spool (files *and* SQLite journal) of the real node (``cxr-node serve``) on a 20 MiB tmpfs.

C-STORE must answer 0xA7xx (never success) once the instance cannot be persisted, leave no
orphan behind, and succeed again as soon as space returns (here: the tmpfs is grown with
``mount -o remount``). Needs root to mount a tmpfs; skipped otherwise.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_helpers import make_image, write
from reliability_helpers import SendLog, echo_ok, journal_rows, receiving_node, report, send_files, sop_uid_of

pytestmark = pytest.mark.integration

SIZE_MB = 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mnt)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_spool_full_answers_a7xx_and_recovers(dcmtk: None, small_fs: Path, tmp_path: Path) -> None:
    # ~1 MiB instances: 40 of them cannot fit into 20 MiB. CT images: skipped by routing and kept
    # (keep_skipped), so the spool only grows by what is received
    files = [
        write(make_image("CT", rows=724, columns=724, body_part="CHEST", view_position=None, seed=i),
              tmp_path / "in" / f"{i}.dcm")
        for i in range(40)
    ]
    scp = receiving_node(tmp_path / "node", CXR_NODE_SPOOL_DIR=str(small_fs / "spool"), CXR_NODE_DISK_RESERVE_MB="0")
    scp.start()
    t0 = time.monotonic()
    first = send_files(scp.port, files, timeout=30)
    full = {u: s for u, s in first.statuses.items() if s != 0}
    assert full, "the spool never filled up"
    assert all(0xA700 <= s <= 0xA7FF for s in full.values()), {hex(s) for s in full.values()}
    assert not first.no_response and not first.not_sent
    assert echo_ok(scp.port)
    assert "out of disk space" in scp.log_text()

    # every acknowledged instance is persisted (journal row + complete file); no orphans of refused ones
    def persisted() -> dict[str, str]:
        return dict(journal_rows(small_fs / "spool", "SELECT sop_instance_uid, path FROM jobs"))

    rows = persisted()
    assert set(rows) == first.acknowledged
    on_disk = {p.name for p in (small_fs / "spool" / "incoming").iterdir() if p.suffix == ".dcm"}
    assert on_disk == {Path(p).name for p in rows.values()}, "orphan or missing spool files"

    # space returns: grow the tmpfs; the same SCP (no restart) accepts the rest
    res = subprocess.run(
        ["mount", "-o", "remount,size=128m", str(small_fs)], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    second = SendLog()
    refused_uids = set(full)
    send_files(scp.port, [f for f in files if sop_uid_of(f) in refused_uids], log=second, timeout=30)
    assert second.acknowledged == refused_uids, second
    scp.stop()
    rows = persisted()
    assert set(rows) == first.acknowledged | refused_uids
    lost = [u for u, p in rows.items() if not Path(p).is_file()]
    assert not lost
    with sqlite3.connect(small_fs / "spool" / "journal.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    report(f"disk full (spool + journal on a {SIZE_MB} MiB tmpfs, then grown)", tried=len(files),
           acknowledged_while_full=len(first.acknowledged), refused_a7xx=len(full),
           acknowledged_after_recovery=len(second.acknowledged), lost=len(lost),
           seconds=round(time.monotonic() - t0, 1))  # fmt: skip
