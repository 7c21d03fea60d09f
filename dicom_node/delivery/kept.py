"""Associations kept open between deliveries: at most one idle association per destination.

Opening and releasing an association costs the node ~4–5 ms of CPU (pynetdicom's ACSE exchange, two
threads started and stopped); at a steady rate consecutive images' results share one association
instead. An association is *parked* while it waits: its reactor thread is paused (pynetdicom's own
``_reactor_checkpoint``, the switch every ``send_*`` uses) and its DUL thread polls every
:data:`PARKED_DUL_DELAY_S` instead of every millisecond, woken at once when the association is taken
again (:class:`DulClock`), so an idle association costs ~1 % of the CPU an unparked one burns (~85 ms
per second on this VM). It is released after ``idle_release_s`` without
use (keep that below the destination's own idle timeout: Orthanc's ``DicomScpTimeout``, 30 s), on
:meth:`KeptAssociations.close`, or when it is found unusable.

Before reuse :func:`is_usable` checks that the association is still established (state Sta6, DUL
alive) and that nothing is waiting to be read on its socket (an idle association receives nothing: a
readable socket means the peer aborted, released or closed it). The check cannot see a peer that
closes at the same moment; :class:`~dicom_node.delivery.deliver.DicomSender` sends what such an
association lost on a fresh one.

This touches pynetdicom internals of the pinned version (see ``dicom_node/scp/chunked.py``):
``Association._reactor_checkpoint`` (replaced by a :class:`ReactorCheckpoint`, from
``dicom_node.transport.reactor_checkpoint``),
``DULServiceProvider._run_loop_delay`` and the ``time`` module global of ``pynetdicom.dul``
(:class:`DulClock`); without them an association is kept unparked (correct, dearer).
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom.association import Association

from dicom_node.transport.reactor_checkpoint import pause_reactor

logger = logging.getLogger(__name__)


#: how often a parked association's DUL thread looks at its socket (pynetdicom's default while active:
#: 0.001 s); :meth:`KeptAssociation.unpark` wakes it at once (:class:`DulClock`), so this costs no latency
PARKED_DUL_DELAY_S = 0.5


class DulClock:
    """Stands in for the ``time`` module inside ``pynetdicom.dul`` (its only use there: the DUL loop's
    ``time.sleep(self._run_loop_delay)``): the sleep of a parked association's DUL thread is a wait on
    that association's wake-up event, so a parked DUL can poll rarely (~2 turns/s instead of ~100: an
    idle kept association cost ~12 ms of CPU per second polling every 10 ms, 85 ms unparked) and still
    start the next send at once. Every other DUL thread sleeps exactly as before."""

    def __init__(self) -> None:
        self._wake: dict[int, threading.Event] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        wake = self._wake.get(threading.get_ident())
        if wake is None:
            time.sleep(seconds)
        else:
            wake.wait(seconds)

    def park(self, thread_id: int) -> threading.Event:
        """Make the sleeps of DUL thread ``thread_id`` interruptible; returns the event that wakes it."""
        wake = threading.Event()
        self._wake[thread_id] = wake
        return wake

    def unpark(self, thread_id: int) -> None:
        wake = self._wake.pop(thread_id, None)
        if wake is not None:
            wake.set()


_CLOCK_LOCK = threading.Lock()
_clock: DulClock | None = None


def dul_clock() -> DulClock | None:
    """The :class:`DulClock` installed in ``pynetdicom.dul`` (installed on first use); None when that
    module does not use ``time`` the way the pinned pynetdicom does (parked DULs then poll every
    10 ms, which is correct and dearer)."""
    global _clock
    with _CLOCK_LOCK:
        if _clock is None:
            import pynetdicom.dul as dul_module

            if getattr(dul_module, "time", None) is not time:
                return None
            _clock = DulClock()
            dul_module.time = _clock  # type: ignore[assignment]
        return _clock


@dataclass
class KeptAssociation:
    """An established association and what was negotiated on it."""

    assoc: Association
    #: (SOP class, transfer syntax) pairs requested and accepted
    requested: frozenset[tuple[str, str]]
    accepted: frozenset[tuple[str, str]]
    #: how many batches it has carried (1 = opened for the current one)
    uses: int = 1
    idle_since: float = field(default_factory=time.monotonic)
    _active_delay: float | None = None

    def pause_reactor(self) -> None:
        """Make sure the association's reactor is paused before a ``send_*`` (see :class:`ReactorCheckpoint`)."""
        pause_reactor(self.assoc)

    def park(self) -> None:
        """Pause the reactor and slow the DUL's polling while the association waits."""
        self.idle_since = time.monotonic()
        checkpoint = getattr(self.assoc, "_reactor_checkpoint", None)
        dul = self.assoc.dul
        if checkpoint is None or not hasattr(dul, "_run_loop_delay"):
            return
        checkpoint.clear()  # the reactor stops at its next turn; the next send pauses it for certain
        if self._active_delay is None:
            self._active_delay = float(dul._run_loop_delay)
        clock = dul_clock()
        if clock is not None and dul.ident is not None:
            clock.park(dul.ident)
            dul._run_loop_delay = PARKED_DUL_DELAY_S
        else:
            dul._run_loop_delay = 0.01

    def unpark(self) -> None:
        """Back to pynetdicom's active polling, the DUL woken at once (the reactor stays paused until
        the next ``send_*`` sets its checkpoint, as it does after every message)."""
        if self._active_delay is not None:
            dul = self.assoc.dul
            dul._run_loop_delay = self._active_delay
            clock = dul_clock()
            if clock is not None and dul.ident is not None:
                clock.unpark(dul.ident)

    def resume_reactor(self) -> None:
        """Unpark fully (before a release or abort, so the reactor can finish the association)."""
        self.unpark()
        checkpoint = getattr(self.assoc, "_reactor_checkpoint", None)
        if checkpoint is not None:
            checkpoint.set()


def is_usable(assoc: Association) -> bool:
    """Whether an idle association can carry another C-STORE: established, state Sta6, DUL thread
    alive, and nothing to read on its socket (which on an idle association means abort, release or EOF)."""
    if not assoc.is_established or assoc.is_aborted or assoc.is_released:
        return False
    dul = assoc.dul
    if not dul.is_alive():
        return False
    machine = getattr(dul, "state_machine", None)
    if machine is not None and getattr(machine, "current_state", "Sta6") != "Sta6":
        return False
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is None:
        return False
    try:
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():  # TLS: decrypted bytes already buffered
            return False
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed socket (fileno -1)
        return False
    return not readable


class KeptAssociations:
    """At most one parked association per destination key; released after ``idle_release_s`` idle.

    Thread-safe: :meth:`take` hands an association to one caller exclusively; :meth:`keep` parks it
    again (or releases it when the slot is taken, keeping is off, or the pool is closed).
    ``release`` is called for every association let go (it must not block long: the sender runs it
    on a helper thread)."""

    def __init__(self, idle_release_s: float, release: Callable[[KeptAssociation], None]) -> None:
        if idle_release_s < 0:
            raise ValueError(f"idle_release_s must be >= 0, got {idle_release_s!r}")
        self.idle_release_s = float(idle_release_s)
        self._release = release
        self._kept: dict[str, KeptAssociation] = {}
        self._cv = threading.Condition()
        self._closed = False
        self._reaper: threading.Thread | None = None

    def __len__(self) -> int:
        with self._cv:
            return len(self._kept)

    def take(self, key: str, needed: set[tuple[str, str]]) -> KeptAssociation | None:
        """The parked association of ``key`` if it is usable and was negotiated for every pair in
        ``needed`` (requested; accepted or not), now owned by the caller; else ``None`` (an unusable
        or unsuitable one is released)."""
        with self._cv:
            kept = self._kept.pop(key, None)
        if kept is None:
            return None
        if not needed <= kept.requested or not is_usable(kept.assoc):
            why = "contexts" if needed <= kept.requested else "unusable"
            logger.debug(
                "kept association not reused (%s)",
                why,
                extra={"event": "kept_association_dropped", "destination": key, "why": why},
            )
            self._release(kept)
            return None
        kept.uses += 1
        kept.unpark()
        return kept

    def keep(self, key: str, kept: KeptAssociation) -> None:
        """Park ``kept`` for ``key`` (release it instead if keeping is off, it is unusable, the pool
        is closed, or another association holds the slot)."""
        if self.idle_release_s <= 0 or not kept.assoc.is_established:
            self._release(kept)
            return
        kept.park()
        with self._cv:
            if self._closed or key in self._kept:
                surplus: KeptAssociation | None = kept
            else:
                self._kept[key] = kept
                surplus = None
                self._start_reaper()
                self._cv.notify_all()
        if surplus is not None:
            self._release(surplus)

    def discard(self, kept: KeptAssociation) -> None:
        """Let go of an association the caller owns and found broken."""
        self._release(kept)

    def close(self) -> None:
        """Release every kept association; later :meth:`keep` calls release at once (idempotent)."""
        with self._cv:
            self._closed = True
            kept = list(self._kept.values())
            self._kept.clear()
            self._cv.notify_all()
            reaper = self._reaper
        for k in kept:
            self._release(k)
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(5.0)

    def _start_reaper(self) -> None:  # with self._cv held
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="cxr-kept-assoc", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        """Release associations idle for ``idle_release_s``; sleeps until the next one is due."""
        while True:
            expired: list[KeptAssociation] = []
            with self._cv:
                if self._closed:
                    return
                now = time.monotonic()
                for key, k in list(self._kept.items()):
                    if now - k.idle_since >= self.idle_release_s:
                        expired.append(self._kept.pop(key))
                if not expired:
                    due = min((k.idle_since + self.idle_release_s for k in self._kept.values()), default=None)
                    self._cv.wait(None if due is None else max(0.01, due - now))
                    continue
            for k in expired:
                self._release(k)
