"""TCP options of the node's DICOM connections (pynetdicom leaves Nagle's algorithm on).

With Nagle on, the last small segment of a P-DATA write waits for the peer's delayed ACK
(~40 ms on Linux) before it leaves, so every C-STORE and its response can stall that long:
measured on loopback, one association delivering 0.3 MB objects to Orthanc took 26 ms per
instance with Nagle on and 7.6 ms with it off (``bench/store_latency.py``; BENCHMARKS.md,
"C-STORE into Orthanc with and without Nagle").
Turning it off costs nothing for DICOM's request/response traffic.
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt

logger = logging.getLogger(__name__)


def set_tcp_nodelay(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler: switch Nagle's algorithm off on the association's socket.

    Best effort: a socket that refuses the option (not TCP, already closed) is logged at
    DEBUG and left as it is; the association goes on either way.
    """
    sock = getattr(getattr(getattr(event.assoc, "dul", None), "socket", None), "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, ValueError) as exc:
        logger.debug("TCP_NODELAY not set: %s", exc, extra={"event": "tcp_nodelay_failed"})


#: Handler list to pass as ``evt_handlers`` (SCU) or to add to an SCP's handlers.
NODELAY_HANDLERS: list[tuple[evt.NotificationEventType, object]] = [(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
