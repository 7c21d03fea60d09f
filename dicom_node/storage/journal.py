"""SQLite journal: the state of every received instance (job) and every result to deliver (outbox).

Job states: ``received`` -> ``analysed`` -> ``delivered``; or ``skipped`` (not a CXR) or
``failed`` (undecodable / gave up; its "not evaluated" SR, when one could be built, is queued in
the outbox like any result and the job stays ``failed``). Outbox rows (one per result dataset and destination):
``pending`` -> ``delivered``, with ``attempts`` and ``next_attempt_at`` persisted so that the
backoff survives a restart. The database runs in WAL mode with ``synchronous=FULL``: a row
that was committed survives a crash. Together with the spool files it is the truth on restart.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

JOB_STATES = ("received", "analysed", "delivered", "skipped", "failed")
OUTBOX_STATES = ("pending", "delivered")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    path TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    starts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_uid ON jobs(sop_instance_uid);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    permanent INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox(job_id);
"""


@dataclass(frozen=True)
class Job:
    """One received instance."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    calling_aet: str
    path: str | None
    state: str
    reason: str | None
    attempts: int
    received_at: float
    #: analyses started (counted before the risky step: a start without an end means the process died)
    starts: int = 0

    def __post_init__(self) -> None:
        if self.state not in JOB_STATES:
            raise ValueError(f"unknown job state {self.state!r}")

    @property
    def suspect(self) -> bool:
        """Started more often than it ended (success or counted failure): the process died during it."""
        return self.state == "received" and self.starts > self.attempts


@dataclass(frozen=True)
class ResultFile:
    """A result dataset already written to the spool, to be queued for delivery."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str

    def __post_init__(self) -> None:
        if not self.sop_instance_uid or not self.sop_class_uid or not self.transfer_syntax:
            raise ValueError(f"ResultFile needs SOP Instance/Class UID and transfer syntax, got {self!r}")


@dataclass(frozen=True)
class OutboxItem:
    """One result dataset to deliver to one destination."""

    id: int
    job_id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    permanent: bool

    def __post_init__(self) -> None:
        if self.state not in OUTBOX_STATES:
            raise ValueError(f"unknown outbox state {self.state!r}")


_JOB_COLS = (
    "id, sop_instance_uid, sop_class_uid, transfer_syntax, calling_aet, path, state, reason, attempts, received_at, starts"
)
_OUT_COLS = (
    "id, job_id, sop_instance_uid, sop_class_uid, transfer_syntax, path, destination, state, attempts, "
    "next_attempt_at, last_error, permanent"
)


def _filtered(select: str, **equal_to: object) -> tuple[str, list[object]]:
    """``select`` restricted to rows whose columns equal the given values (None = no filter),
    oldest first. Column names come from the caller's keyword names, never from input."""
    filters = [(column, value) for column, value in equal_to.items() if value is not None]
    where = " AND ".join(f"{column}=?" for column, _ in filters)
    return select + (f" WHERE {where}" if where else "") + " ORDER BY id", [value for _, value in filters]


def _job(row: Sequence) -> Job:
    return Job(*row)


def _out(row: Sequence) -> OutboxItem:
    return OutboxItem(*row[:11], bool(row[11]))


class Journal:
    """Thread-safe access to the SQLite journal (one connection, serialised by a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._conn:
            self._conn.executescript(_SCHEMA)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
            if "starts" not in columns:  # journals written before the crash-safe attempt count
                self._conn.execute("ALTER TABLE jobs ADD COLUMN starts INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.ProgrammingError:  # pragma: no cover
                pass

    def pragma(self, name: str) -> object:
        """Value of a PRAGMA (used by tests: journal_mode, synchronous)."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        with self._lock:
            return self._conn.execute(f"PRAGMA {name}").fetchone()[0]

    # ------------------------------------------------------------------ jobs
    def add_job(
        self,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax: str,
        calling_aet: str,
        path: str | None,
        state: str = "received",
        reason: str | None = None,
    ) -> int:
        """Insert (and commit) a job row; returns its id."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        now = time.time()
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT INTO jobs (sop_instance_uid, sop_class_uid, transfer_syntax, calling_aet, path, state, "
                "reason, received_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    sop_instance_uid,
                    sop_class_uid,
                    transfer_syntax,
                    calling_aet,
                    path,
                    state,
                    reason,
                    now,
                    now,
                ),
            )
            return int(cur.lastrowid)

    def get_job(self, job_id: int) -> Job:
        """The job with id ``job_id``; ``KeyError`` naming it if absent."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job with id {job_id!r}")
        return _job(row)

    def jobs(self, *, state: str | None = None, sop_instance_uid: str | None = None) -> list[Job]:
        """Jobs, oldest first, optionally filtered."""
        sql, args = _filtered(f"SELECT {_JOB_COLS} FROM jobs", state=state, sop_instance_uid=sop_instance_uid)
        with self._lock:
            return [_job(r) for r in self._conn.execute(sql, args)]

    def next_received(self, limit: int, exclude: Iterable[int] = ()) -> list[Job]:
        """Up to ``limit`` jobs in state ``received`` (oldest first) whose ids are not in ``exclude``."""
        excluded = set(exclude)
        out: list[Job] = []
        if limit <= 0:
            return out
        with self._lock:
            cur = self._conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE state='received' ORDER BY id")
            for row in cur:
                if row[0] in excluded:
                    continue
                out.append(_job(row))
                if len(out) >= limit:
                    break
        return out

    def set_job_state(self, job_id: int, state: str, reason: str | None = None) -> None:
        """Set the state (and reason) of one job."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE jobs SET state=?, reason=?, updated_at=? WHERE id=?",
                (state, reason, time.time(), job_id),
            )

    def start_attempt(self, job_id: int) -> int:
        """Count (and commit) one analysis start, before anything risky is done with the data set;
        returns the number of starts so far, this one included."""
        with self._lock, self._conn:
            self._conn.execute("UPDATE jobs SET starts=starts+1, updated_at=? WHERE id=?", (time.time(), job_id))
            row = self._conn.execute("SELECT starts FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job with id {job_id!r}")
        return int(row[0])

    def undo_start(self, job_id: int) -> None:
        """Take back a start that ended without a verdict for a harmless reason (graceful stop)."""
        with self._lock, self._conn:
            self._conn.execute("UPDATE jobs SET starts=MAX(0, starts-1) WHERE id=? AND state='received'", (job_id,))

    def count_attempt(self, job_id: int, error: str) -> int:
        """Record one failed analysis attempt; returns the number of attempts so far."""
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE jobs SET attempts=attempts+1, reason=?, updated_at=? WHERE id=?",
                (error, time.time(), job_id),
            )
            return int(self._conn.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()[0])

    def mark_analysed(
        self, job_id: int, results: Sequence[ResultFile], destinations: Sequence[str]
    ) -> list[int]:
        """In one transaction: queue every result for every destination and mark the job analysed.

        Returns the new outbox ids. With no destinations the job is still marked analysed.
        """
        return self._queue_results(job_id, results, destinations, "analysed", None)

    def mark_failed(
        self, job_id: int, reason: str, results: Sequence[ResultFile], destinations: Sequence[str]
    ) -> list[int]:
        """In one transaction: mark the job failed (with ``reason``) and queue its status results
        (the "not evaluated" SR) for every destination. Returns the new outbox ids."""
        return self._queue_results(job_id, results, destinations, "failed", reason)

    def _queue_results(
        self, job_id: int, results: Sequence[ResultFile], destinations: Sequence[str], state: str, reason: str | None
    ) -> list[int]:
        now = time.time()
        ids: list[int] = []
        with self._lock, self._conn:
            for res in results:
                for dest in destinations:
                    cur = self._conn.execute(
                        "INSERT INTO outbox (job_id, sop_instance_uid, sop_class_uid, transfer_syntax, path, "
                        "destination, state, next_attempt_at, created_at) VALUES (?,?,?,?,?,?,'pending',?,?)",
                        (
                            job_id,
                            res.sop_instance_uid,
                            res.sop_class_uid,
                            res.transfer_syntax,
                            res.path,
                            dest,
                            now,
                            now,
                        ),
                    )
                    ids.append(int(cur.lastrowid))
            self._conn.execute(
                "UPDATE jobs SET state=?, reason=?, updated_at=? WHERE id=?", (state, reason, now, job_id)
            )
        return ids

    # ---------------------------------------------------------------- outbox
    def outbox(self, *, job_id: int | None = None, state: str | None = None) -> list[OutboxItem]:
        """Outbox rows, oldest first, optionally filtered."""
        sql, args = _filtered(f"SELECT {_OUT_COLS} FROM outbox", job_id=job_id, state=state)
        with self._lock:
            return [_out(r) for r in self._conn.execute(sql, args)]

    def due_outbox(self, now: float, limit: int) -> list[OutboxItem]:
        """Pending rows whose ``next_attempt_at`` has come, oldest first."""
        with self._lock:
            cur = self._conn.execute(
                f"SELECT {_OUT_COLS} FROM outbox WHERE state='pending' AND next_attempt_at<=? "
                "ORDER BY next_attempt_at, id LIMIT ?",
                (now, limit),
            )
            return [_out(r) for r in cur]

    def next_due_at(self) -> float | None:
        """Earliest ``next_attempt_at`` of a pending row, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE state='pending'"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_delivered(self, outbox_id: int) -> Job | None:
        """Mark one outbox row delivered; if that completes an analysed job, mark the job delivered and return it.

        A ``failed`` job whose "not evaluated" SR was delivered stays ``failed`` (None is returned).
        """
        now = time.time()
        with self._lock, self._conn:
            row = self._conn.execute("SELECT job_id FROM outbox WHERE id=?", (outbox_id,)).fetchone()
            if row is None:
                raise KeyError(f"no outbox row with id {outbox_id!r}")
            job_id = int(row[0])
            self._conn.execute(
                "UPDATE outbox SET state='delivered', delivered_at=?, attempts=attempts+1, last_error=NULL "
                "WHERE id=?",
                (now, outbox_id),
            )
            left = self._conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE job_id=? AND state!='delivered'", (job_id,)
            ).fetchone()[0]
            if left:
                return None
            self._conn.execute(
                "UPDATE jobs SET state='delivered', updated_at=? WHERE id=? AND state='analysed'",
                (now, job_id),
            )
            jrow = self._conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        job = _job(jrow)
        return job if job.state == "delivered" else None

    def mark_attempt_failed(
        self, outbox_id: int, error: str, next_attempt_at: float, *, permanent: bool
    ) -> int:
        """Record a failed delivery attempt and when to retry; returns the attempt count."""
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE outbox SET attempts=attempts+1, last_error=?, next_attempt_at=?, permanent=? WHERE id=?",
                (error, next_attempt_at, int(permanent), outbox_id),
            )
            row = self._conn.execute("SELECT attempts FROM outbox WHERE id=?", (outbox_id,)).fetchone()
        if row is None:
            raise KeyError(f"no outbox row with id {outbox_id!r}")
        return int(row[0])

    def paths_in_use(self, paths: Iterable[str]) -> set[str]:
        """Those of ``paths`` still referenced by a pending outbox row or an unfinished job."""
        out: set[str] = set()
        with self._lock:
            for p in paths:
                hit = self._conn.execute(
                    "SELECT 1 FROM outbox WHERE path=? AND state='pending' "
                    "UNION SELECT 1 FROM jobs WHERE path=? AND state='received' LIMIT 1",
                    (p, p),
                ).fetchone()
                if hit:
                    out.add(p)
        return out

    def known_paths(self) -> set[str]:
        """Every spool path referenced by a job or an outbox row."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT path FROM jobs WHERE path IS NOT NULL UNION SELECT path FROM outbox"
            ).fetchall()
        return {r[0] for r in rows}

    def finished_before(
        self, before: float, states: Sequence[str], limit: int
    ) -> list[tuple[int, list[str], int]]:
        """Jobs in one of ``states`` last changed before ``before`` with no result still pending:
        ``(job id, its spool paths (received file and results), number of outbox rows)``, oldest first."""
        for state in states:
            if state not in JOB_STATES:
                raise ValueError(f"unknown job state {state!r}")
        marks = ",".join("?" for _ in states)
        with self._lock:
            jobs = self._conn.execute(
                f"SELECT id, path FROM jobs WHERE state IN ({marks}) AND updated_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM outbox o WHERE o.job_id=jobs.id AND o.state='pending') ORDER BY id LIMIT ?",
                (*states, before, limit),
            ).fetchall()
            out = []
            for job_id, path in jobs:
                results = [r[0] for r in self._conn.execute("SELECT path FROM outbox WHERE job_id=?", (job_id,))]
                out.append((int(job_id), ([path] if path else []) + sorted(set(results)), len(results)))
        return out

    def delete_jobs(self, job_ids: Sequence[int]) -> None:
        """Delete jobs and their outbox rows, in one transaction (retention)."""
        with self._lock, self._conn:
            for job_id in job_ids:
                self._conn.execute("DELETE FROM outbox WHERE job_id=?", (job_id,))
                self._conn.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    def counts(self) -> dict[str, int]:
        """Number of jobs per state and of outbox rows per state (keys ``job.<state>``, ``outbox.<state>``)."""
        out: dict[str, int] = {}
        with self._lock:
            for state, n in self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                out[f"job.{state}"] = int(n)
            for state, n in self._conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
                out[f"outbox.{state}"] = int(n)
        return out
