"""The node's SCP with analysis paused: receive + persist (spool file + journal row) only.

Builds the same ``Spool``, ``Journal`` and ``Receiver`` as ``NodeService`` but starts neither the
analysis worker nor the deliverer, so received jobs stay in state ``received``. Used by
``bench/ingest.py`` (as a subprocess, like the real node).

    python -m dicom_node.testing.receive_only --spool DIR --port 11112 [--max-associations 10] [--reserve-mb 0]

Prints ``LISTENING <port>`` on stdout once the SCP listens; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from dicom_node.logging_setup import configure_logging
from dicom_node.scp.receive import Receiver
from dicom_node.settings import NodeSettings
from dicom_node.storage.journal import Journal
from dicom_node.storage.spool import Spool


def _share_port() -> None:
    """Every pynetdicom server socket of this process gets SO_REUSEPORT before it binds."""
    import socket

    from pynetdicom.transport import ThreadedAssociationServer

    bind = ThreadedAssociationServer.server_bind

    def server_bind(self: ThreadedAssociationServer) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        bind(self)

    ThreadedAssociationServer.server_bind = server_bind  # type: ignore[method-assign]


def _shorten_reactor_sleeps(seconds: float) -> None:
    """pynetdicom's DUL and association loops sleep at most ``seconds`` per turn (default 1 ms)."""
    import time
    import types

    import pynetdicom.association as association
    import pynetdicom.dul as dul

    if seconds < 0:
        raise ValueError(f"--reactor-delay must be >= 0, got {seconds!r}")
    init = dul.DULServiceProvider.__init__

    def dul_init(self: dul.DULServiceProvider, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        self._run_loop_delay = seconds

    dul.DULServiceProvider.__init__ = dul_init  # type: ignore[method-assign]
    shim = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")})
    shim.sleep = lambda s: time.sleep(min(s, seconds))
    association.time = shim  # type: ignore[assignment]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ae-title", default="AINODE")
    parser.add_argument("--max-associations", type=int, default=10)
    parser.add_argument("--reserve-mb", type=float, default=0.0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="json")
    parser.add_argument(
        "--max-pdu",
        type=int,
        default=None,
        help="override the SCP's maximum PDU receive size (default: receive.py's)",
    )
    parser.add_argument(
        "--unsafe-no-fsync",
        action="store_true",
        help="DIAGNOSTIC ONLY: make os.fsync a no-op (measures what durability costs)",
    )
    parser.add_argument(
        "--memory-receive",
        action="store_true",
        help="assemble each data set in memory (Receiver(chunked_receive=False)) instead of "
        "receiving it straight into the spool (the default)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="DIAGNOSTIC ONLY: SO_REUSEPORT on the listening socket, so that several receive_only "
        "processes share one port and the kernel spreads associations over them",
    )
    parser.add_argument(
        "--reactor-delay",
        type=float,
        default=None,
        help="DIAGNOSTIC ONLY: shorten pynetdicom's reactor sleeps (1 ms per idle turn of the DUL "
        "and of the association loop) to this many seconds",
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if args.reuse_port:
        _share_port()
    if args.reactor_delay is not None:
        _shorten_reactor_sleeps(args.reactor_delay)
    if args.unsafe_no_fsync:
        import os

        os.fsync = lambda fd: None  # type: ignore[assignment]  # SQLite's own fsync is untouched

    settings = NodeSettings(
        port=args.port,
        ae_title=args.ae_title,
        spool_dir=args.spool,
        max_associations=args.max_associations,
        disk_reserve_mb=args.reserve_mb,
        destinations=[],
    )
    spool = Spool(settings.spool_dir, reserve_bytes=int(settings.disk_reserve_mb * 1024 * 1024))
    journal = Journal(settings.journal_path)
    receiver = Receiver(settings, spool, journal, chunked_receive=not args.memory_receive)
    if args.max_pdu is not None:
        receiver.ae.maximum_pdu_size = args.max_pdu
    port = receiver.start()
    print(f"LISTENING {port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    receiver.stop(10)
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
