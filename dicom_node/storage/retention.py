"""Retention: finished jobs (delivered, skipped, failed) are purged after ``retention_hours``.

Purging a job deletes its received instance (``incoming/``), its result files (``outbox/<job>/``),
its outbox rows and its journal row: after that the node holds nothing of that patient. Jobs still
being worked on (``received``, ``analysed``) and jobs with a result not yet delivered are never
purged. Files go first, rows second: a purge interrupted in between leaves rows of finished jobs
whose files are gone (harmless, purged next time), never files nobody knows about.

``cxr-node purge`` runs one purge (also while the node runs: the journal is SQLite in WAL mode);
the running node purges every ``purge_interval_s`` (:class:`Purger`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dicom_node.storage.journal import Journal
from dicom_node.storage.spool import Spool

logger = logging.getLogger(__name__)

#: Job states that are finished: nothing will happen to such a job any more.
FINISHED_STATES = ("delivered", "skipped", "failed")


@dataclass(frozen=True)
class PurgeResult:
    """What one purge removed (or would remove, with ``dry_run``)."""

    jobs: int
    outbox_rows: int
    files: int
    bytes: int
    dry_run: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return {"jobs": self.jobs, "outbox_rows": self.outbox_rows, "files": self.files, "bytes": self.bytes,
                "dry_run": self.dry_run}  # fmt: skip


def purge(journal: Journal, spool: Spool, older_than_s: float, *, now: float | None = None,
          dry_run: bool = False, limit: int = 10_000) -> PurgeResult:  # fmt: skip
    """Purge finished jobs whose last change is older than ``older_than_s`` seconds (at most ``limit``)."""
    if older_than_s < 0:
        raise ValueError(f"older_than_s must be >= 0, got {older_than_s!r}")
    before = (time.time() if now is None else now) - older_than_s
    jobs = journal.finished_before(before, FINISHED_STATES, limit)
    files = nbytes = rows = 0
    for _job_id, paths, outbox_rows in jobs:
        rows += outbox_rows
        for path in paths:
            p = Path(path)
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            files += 1
            nbytes += size
            if not dry_run:
                spool.remove(p)
    if not dry_run and jobs:
        journal.delete_jobs([job_id for job_id, _, _ in jobs])
    return PurgeResult(len(jobs), rows, files, nbytes, dry_run)


class Purger:
    """Background thread of the running node: :func:`purge` every ``interval_s`` (first one at start)."""

    def __init__(self, journal: Journal, spool: Spool, retention_s: float, interval_s: float) -> None:
        if retention_s <= 0 or interval_s <= 0:
            raise ValueError(f"retention_s and interval_s must be > 0, got {retention_s!r}, {interval_s!r}")
        self.journal, self.spool = journal, spool
        self.retention_s, self.interval_s = retention_s, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cxr-purge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = purge(self.journal, self.spool, self.retention_s)
                if result.jobs:
                    logger.info("purged finished jobs older than the retention period",
                                extra={"event": "purged", "retention_s": self.retention_s, **result.as_dict()})  # fmt: skip
            except Exception:  # a purge failure must never stop the node; try again next period
                logger.exception("purge failed", extra={"event": "purge_failed"})
            self._stop.wait(self.interval_s)
