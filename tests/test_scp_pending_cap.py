"""The SCP's cap on connections that have not sent their association request yet.

Regression: the cap counted only connections whose association thread already ran, so a burst of
accepts that outpaced those threads (a flood on a busy machine) was never refused.
"""

from __future__ import annotations

import socket
import threading

from pynetdicom import AE

from dicom_node.scp.receive import ScpAE, ScpServer


def _server(max_pending: int) -> ScpServer:
    ae = ScpAE(ae_title="AINODE")
    ae.add_supported_context("1.2.840.10008.1.1")
    ae.network_timeout = 1  # a connection that never sends its association request ends after 1 s
    ae.acse_timeout = 1
    server = ae.make_server(("127.0.0.1", 0), server_class=ScpServer)
    server.max_pending = max_pending
    return server


def test_a_burst_of_accepts_is_capped_before_any_association_thread_runs() -> None:
    server = _server(max_pending=4)
    try:
        peer = ("127.0.0.1", 40000)
        verdicts = [server.verify_request(None, peer) for _ in range(6)]  # accepted, threads not run yet
        assert verdicts == [True] * 4 + [False] * 2
    finally:
        server.server_close()


def test_a_connection_leaves_the_count_once_its_thread_has_run() -> None:
    server = _server(max_pending=1)
    try:
        assert server.verify_request(None, ("127.0.0.1", 40001))
        assert not server.verify_request(None, ("127.0.0.1", 40002))
        a, b = socket.socketpair()
        b.close()  # the peer is gone: the association ends at once
        worker = threading.Thread(target=server.process_request_thread, args=(a, ("127.0.0.1", 40001)))
        worker.start()
        worker.join(10)
        assert not worker.is_alive()
        assert server.ae.pending_connections == 1  # its association thread now counts it
        assert not server.verify_request(None, ("127.0.0.1", 40002))
        for assoc in AE.active_associations.fget(server.ae):  # type: ignore[attr-defined]
            assoc.join(10)  # the association gives up on the silent peer
        assert server.ae.pending_connections == 0
        assert server.verify_request(None, ("127.0.0.1", 40003))
    finally:
        server.server_close()
