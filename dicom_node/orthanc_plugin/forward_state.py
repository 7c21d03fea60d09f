"""Durable forwarding state of the Orthanc routing plug-in (pure Python, stdlib only).

This module runs inside Orthanc's embedded interpreter (see ``routing_rules``) and is unit-tested
as ``dicom_node.orthanc_plugin.forward_state``. It holds no Orthanc calls: the plug-in
(``cxr_router.py``) feeds it events and stores :meth:`ForwardState.to_json` in an Orthanc global
property after every change, so the state survives an Orthanc restart and a node outage of any
length.

What is kept:

* ``checkpoint``: the sequence number of the last Orthanc change (``/changes``) the plug-in has
  read. Changes are read from the checkpoint on, so a study that arrived while the plug-in was not
  running (Orthanc restarted before the study became stable) is still seen;
* ``waiting``: the studies that may hold CXR instances not yet forwarded, each with when it
  started waiting, when it is due, the Orthanc job that is sending it (if any) and how many times
  a job failed while the node answered C-ECHO (``attempts``);
* ``node_down_since`` / ``probe_due`` / ``probe_delay_s``: while the node is unreachable no job is
  submitted; one C-ECHO probe is sent with exponential backoff, and when it succeeds every waiting
  study is due at once. A node outage never counts against a study's attempts: forwarding never
  gives up because the node is down;
* ``set_aside``: studies whose job failed ``max_attempts`` times while the node was reachable
  (something about the study itself): kept with the error for the status route and an ERROR log
  line; ``POST /cxr-ai/studies/{id}/analyze`` sends them again.

Times are wall-clock seconds (``time.time()``), since they must mean the same after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Version of the JSON layout written by :meth:`ForwardState.to_json`.
STATE_VERSION = 1
#: At most this many set-aside studies are remembered (oldest dropped first).
MAX_SET_ASIDE = 1000
#: "Until the node is back": :meth:`ForwardState.node_up` makes every held study due again.
HOLD_S = 10 * 365 * 86400.0


@dataclass
class WaitingStudy:
    """One study that may hold CXR instances not yet forwarded to the node."""

    since: float
    due: float
    attempts: int = 0
    failures: int = 0
    job: str | None = None
    instances: list[str] = field(default_factory=list)
    #: seen again (new instances) while its job was running: look at it again when the job ends
    again: bool = False
    last_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since, "due": self.due, "attempts": self.attempts, "failures": self.failures,
                "job": self.job, "instances": list(self.instances), "again": self.again,
                "last_error": self.last_error}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WaitingStudy:
        return cls(since=float(d["since"]), due=float(d["due"]), attempts=int(d.get("attempts", 0)),
                   failures=int(d.get("failures", 0)), job=d.get("job") or None,
                   instances=[str(i) for i in d.get("instances", [])], again=bool(d.get("again", False)),
                   last_error=str(d.get("last_error", "")))  # fmt: skip


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``first_s``, doubling, at most ``max_s``."""

    first_s: float
    max_s: float

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < first_s <= max_s, got {self.first_s!r}, {self.max_s!r}")

    def delay(self, n: int) -> float:
        """Delay after the ``n``-th consecutive failure (``n >= 1``)."""
        return min(self.max_s, self.first_s * 2 ** max(0, min(n - 1, 30)))


@dataclass
class ForwardState:
    """Everything the plug-in must remember across restarts (see the module docstring)."""

    checkpoint: int | None = None
    waiting: dict[str, WaitingStudy] = field(default_factory=dict)
    set_aside: dict[str, dict[str, Any]] = field(default_factory=dict)
    node_down_since: float | None = None
    probe_due: float = 0.0
    probe_failures: int = 0
    last_alert: float = 0.0

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> str:
        """The state as compact JSON (what the plug-in stores in its Orthanc global property)."""
        return json.dumps({
            "version": STATE_VERSION, "checkpoint": self.checkpoint,
            "waiting": {k: v.to_dict() for k, v in self.waiting.items()},
            "set_aside": self.set_aside, "node_down_since": self.node_down_since, "probe_due": self.probe_due,
            "probe_failures": self.probe_failures, "last_alert": self.last_alert,
        }, separators=(",", ":"), sort_keys=True)  # fmt: skip

    @classmethod
    def from_json(cls, text: str | None) -> ForwardState:
        """Parse :meth:`to_json` output; an empty value is a fresh state. Raises ``ValueError`` on garbage."""
        if not text:
            return cls()
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {d.get('version') if isinstance(d, dict) else d!r}")
            return cls(
                checkpoint=None if d.get("checkpoint") is None else int(d["checkpoint"]),
                waiting={str(k): WaitingStudy.from_dict(v) for k, v in (d.get("waiting") or {}).items()},
                set_aside={str(k): dict(v) for k, v in (d.get("set_aside") or {}).items()},
                node_down_since=None if d.get("node_down_since") is None else float(d["node_down_since"]),
                probe_due=float(d.get("probe_due", 0.0)),
                probe_failures=int(d.get("probe_failures", 0)),
                last_alert=float(d.get("last_alert", 0.0)),
            )
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"forwarding state is not valid: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------------ events
    def schedule(self, study_id: str, due: float, now: float) -> None:
        """A study may hold something to forward from ``due`` on (a stable study, a new instance)."""
        self.set_aside.pop(study_id, None)
        entry = self.waiting.get(study_id)
        if entry is None:
            self.waiting[study_id] = WaitingStudy(since=now, due=due)
        elif entry.job is not None:
            entry.again = True
        else:
            # a new instance pushes a not-yet-stable study back; a stable one (due=now) comes forward
            entry.due = due if due <= now else max(entry.due, due)

    def due_studies(self, now: float) -> list[str]:
        """Studies to look at now: due and no job running (oldest first). While the node is down they
        are still looked at (a study with nothing to forward is done), but not sent: see :meth:`hold`."""
        due = [(e.since, e.due, s) for s, e in self.waiting.items() if e.job is None and e.due <= now]
        return [s for _, _, s in sorted(due)]

    def hold(self, study_id: str, now: float) -> None:
        """The study has instances to forward but the node is down: wait for :meth:`node_up`."""
        entry = self.waiting.get(study_id)
        if entry is not None:
            entry.due = now + HOLD_S

    def nothing_to_send(self, study_id: str) -> None:
        """Routing found nothing (left) to forward: the study is done."""
        self.waiting.pop(study_id, None)

    def postpone(self, study_id: str, due: float) -> None:
        """Look at the study again at ``due`` (e.g. not stable yet)."""
        entry = self.waiting.get(study_id)
        if entry is not None:
            entry.due = due

    def job_submitted(self, study_id: str, job_id: str, instance_ids: Iterable[str], now: float) -> None:
        """A C-STORE job now sends ``instance_ids`` of the study."""
        entry = self.waiting.setdefault(study_id, WaitingStudy(since=now, due=now))
        entry.job = job_id
        entry.instances = list(instance_ids)
        entry.again = False

    def job_succeeded(self, study_id: str, now: float) -> None:
        """The study's job succeeded (its instances are marked forwarded): done, unless seen again meanwhile."""
        entry = self.waiting.get(study_id)
        if entry is None:
            return
        if entry.again:
            entry.job, entry.instances, entry.again, entry.due = None, [], False, now
        else:
            del self.waiting[study_id]

    def job_failed(self, study_id: str, error: str, *, node_reachable: bool, now: float,
                   backoff: Backoff, max_attempts: int) -> bool:  # fmt: skip
        """The study's job failed. If the node does not answer C-ECHO, the node is down: the study
        waits for it (no attempt counted). Otherwise the attempt counts, the study is retried with
        ``backoff`` and, after ``max_attempts`` such failures, set aside. Returns True if set aside."""
        entry = self.waiting.get(study_id)
        if entry is None:
            return False
        entry.job, entry.instances, entry.again = None, [], False
        entry.failures += 1
        entry.last_error = error
        if not node_reachable:
            if self.node_down_since is None:
                self.node_down(now, backoff)
            entry.due = now
            return False
        entry.attempts += 1
        if entry.attempts >= max_attempts:
            del self.waiting[study_id]
            self.set_aside[study_id] = {"since": entry.since, "at": now, "attempts": entry.attempts, "error": error}
            while len(self.set_aside) > MAX_SET_ASIDE:
                self.set_aside.pop(next(iter(self.set_aside)))
            return True
        entry.due = now + backoff.delay(entry.attempts)
        return False

    def job_lost(self, study_id: str, now: float) -> None:
        """Orthanc no longer knows the study's job (e.g. its job history was cut): send it again."""
        entry = self.waiting.get(study_id)
        if entry is not None:
            entry.job, entry.instances, entry.due = None, [], now

    def node_down(self, now: float, backoff: Backoff) -> bool:
        """The node did not answer; returns True if this is news (it was believed up)."""
        news = self.node_down_since is None
        if news:
            self.node_down_since = now
            self.probe_failures = 0
        self.probe_failures += 1
        self.probe_due = now + backoff.delay(self.probe_failures)
        return news

    def probe_is_due(self, now: float) -> bool:
        return self.node_down_since is not None and self.probe_due <= now

    def node_up(self, now: float) -> float | None:
        """The node answered C-ECHO again: every waiting study is due now. Returns the outage length."""
        if self.node_down_since is None:
            return None
        outage = now - self.node_down_since
        self.node_down_since = None
        self.probe_failures = 0
        for entry in self.waiting.values():
            if entry.job is None:
                entry.due = min(entry.due, now)
        return outage

    # ------------------------------------------------------------------ figures
    def in_flight(self) -> set[str]:
        """Instance ids being sent by a running job."""
        out: set[str] = set()
        for entry in self.waiting.values():
            out.update(entry.instances)
        return out

    def summary(self, now: float) -> dict[str, Any]:
        """Figures for the status route and the metrics (no patient data: Orthanc ids only)."""
        oldest = min((e.since for e in self.waiting.values()), default=None)
        return {
            "WaitingStudies": len(self.waiting),
            "OldestWaitingSeconds": 0.0 if oldest is None else round(max(0.0, now - oldest), 1),
            "PendingJobs": sum(1 for e in self.waiting.values() if e.job is not None),
            "PendingRetries": sum(1 for e in self.waiting.values() if e.job is None and e.failures > 0),
            "NodeReachable": self.node_down_since is None,
            "NodeDownSeconds": 0.0 if self.node_down_since is None else round(max(0.0, now - self.node_down_since), 1),
            "SetAsideStudies": len(self.set_aside),
            "Checkpoint": self.checkpoint,
        }

    def alert_due(self, now: float, after_s: float) -> list[str]:
        """Studies waiting longer than ``after_s`` if an alert is due now (at most one per ``after_s``)."""
        late = [s for s, e in self.waiting.items() if now - e.since >= after_s]
        if not late or now - self.last_alert < after_s:
            return []
        self.last_alert = now
        return late


#: job states Orthanc announces with its ``JOB_SUCCESS`` and ``JOB_FAILURE`` changes
JOB_OUTCOMES = ("Success", "Failure")


@dataclass
class FinishedJobs:
    """The outcomes Orthanc announced for its jobs (``JOB_SUCCESS`` / ``JOB_FAILURE`` changes), the
    latest ``limit`` of them, in memory.

    Orthanc keeps only ``JobsHistorySize`` finished jobs (10 by default): when more forward jobs
    finish between two polls, the first are gone from ``/jobs`` before the router asks. Their outcome
    is still here, so the router does not mistake them for jobs lost in a restart and send their
    studies again (RELIABILITY.md bug 9). After a restart this record is empty, as Orthanc's is.
    """

    limit: int = 10_000
    _outcomes: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(f"the finished-jobs record needs a limit >= 1, got {self.limit!r}")

    def record(self, job_id: str, state: str) -> None:
        """Remember that ``job_id`` ended in ``state`` (one of :data:`JOB_OUTCOMES`); the oldest
        record goes when there are more than ``limit``."""
        if state not in JOB_OUTCOMES:
            raise ValueError(f"a finished job's state must be one of {JOB_OUTCOMES}, got {state!r}")
        if not job_id:
            raise ValueError(f"a finished job needs an id, got {job_id!r}")
        self._outcomes.pop(job_id, None)
        self._outcomes[job_id] = state
        while len(self._outcomes) > self.limit:
            del self._outcomes[next(iter(self._outcomes))]

    def outcome(self, job_id: str) -> str | None:
        """How ``job_id`` ended, or None when Orthanc announced nothing for it here."""
        return self._outcomes.get(job_id)

    def __len__(self) -> int:
        return len(self._outcomes)
