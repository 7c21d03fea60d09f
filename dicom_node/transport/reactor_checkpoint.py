"""A certain pause of a pynetdicom association's reactor before each ``send_*`` of a requestor.

pynetdicom pauses an association's reactor thread before each ``send_*`` by clearing
``Association._reactor_checkpoint`` and spinning until ``_is_paused`` is true; but the reactor sets
that flag *before* it waits on the checkpoint and clears it only after, so a reactor woken by the
previous message's ``set()`` and preempted between ``wait()`` and ``_is_paused = False`` looks paused
while it is about to take the next message off the DIMSE queue. If that message is the C-STORE response,
pynetdicom logs "Received unexpected C-STORE service message" and drops it, and the sender waits its
whole DIMSE timeout, then aborts (pynetdicom issue #875's symptom). :class:`ReactorCheckpoint` takes the
place of the checkpoint event, and :func:`pause_reactor` returns only once the reactor is parked inside
its ``wait()``, from which it leaves only when the event is set again.

Every requestor association the node opens uses it: the deliveries (``dicom_node.delivery``) and the
start-up self-test of the chunked receive (``dicom_node.scp.chunked``); so do the reliability harness's
SCU and the bench scripts' SCUs (``bench/common.pause_for_certain``).
This touches a pynetdicom internal of the pinned version (``_reactor_checkpoint``, read by the reactor
on every turn); where it is missing, :func:`install_checkpoint` returns None and pynetdicom's own pause
is used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pynetdicom.association import Association


class ReactorCheckpoint(threading.Event):
    """Stands in for ``Association._reactor_checkpoint`` (the event pynetdicom's association reactor
    waits on while it is paused) so that a pause is certain.

    pynetdicom pauses the reactor before each ``send_*`` by clearing the event and waiting until
    ``_is_paused`` is true; but that flag is still true for a moment after the reactor has returned
    from ``wait()`` (woken by the previous message's ``set()``), and a reactor preempted there goes on
    to take the next C-STORE response off the DIMSE queue ("Received unexpected C-STORE service
    message"): the sender then waits the whole DIMSE timeout and reports no response. It happened
    once in ~40 benchmark runs of back-to-back C-STOREs. Here the reactor leaves ``wait()`` only
    while the event is set, decided under a lock that :meth:`pause` shares, and :meth:`pause`
    returns once the reactor is inside ``wait()``."""

    def __init__(self) -> None:
        super().__init__()
        self._gate = threading.Lock()
        self.parked = False  # the reactor is inside wait() and cannot leave until set()
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._gate:
            self.parked = True
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            woken = super().wait(remaining)
            with self._gate:
                if self.is_set():
                    self.parked = False
                    return True
                if not woken and deadline is not None and time.monotonic() >= deadline:
                    self.parked = False
                    return False

    def pause(self, reactor_alive: Callable[[], bool], timeout_s: float = 2.0) -> bool:
        """Clear the event and wait (bounded) until the reactor is parked in :meth:`wait`; False if
        it did not get there (the reactor thread ended, or ``timeout_s`` passed)."""
        with self._gate:
            self.clear()
            parked = self.parked
        deadline = time.monotonic() + timeout_s
        while not parked:
            if not reactor_alive() or time.monotonic() >= deadline:
                return False
            time.sleep(0.0002)
            with self._gate:
                parked = self.parked
        return True


def install_checkpoint(assoc: Association) -> ReactorCheckpoint | None:
    """Give ``assoc`` a :class:`ReactorCheckpoint` (set, like the one it replaces); None when this
    pynetdicom has no ``_reactor_checkpoint``."""
    if not isinstance(getattr(assoc, "_reactor_checkpoint", None), threading.Event):
        return None
    checkpoint = ReactorCheckpoint()
    assoc._reactor_checkpoint = checkpoint  # the reactor reads the attribute on every turn
    return checkpoint


def pause_reactor(assoc: Association) -> bool:
    """Before a ``send_*`` on ``assoc``: pause its reactor for certain (see :class:`ReactorCheckpoint`).
    False where ``assoc`` has no :class:`ReactorCheckpoint` (not installed, or this pynetdicom has none)
    or its reactor did not park (its thread ended); pynetdicom's own pause then follows, as without it."""
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if not isinstance(checkpoint, ReactorCheckpoint):
        return False
    return checkpoint.pause(assoc.is_alive)
