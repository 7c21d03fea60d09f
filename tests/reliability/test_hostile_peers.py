"""Hostile peers against the real node (``cxr-node serve``) and the real Orthanc.

* spoofing: a client on another address (127.0.0.2; Linux routes all of 127/8 to loopback) calls
  itself ``ORTHANC`` towards the node and ``AINODE`` towards Orthanc: both refuse the association,
  nothing is stored; the genuine peers on 127.0.0.1 are accepted;
* idle and slow clients: many TCP connections that never send an A-ASSOCIATE request, and a few
  that send half of one, do not stop a genuine association (before: they held ``max_associations``
  for ~30 s each); the node closes them after ``association_request_timeout_s``;
* TLS: a client that connects to the TLS SCP and never starts the handshake does not block the
  accept loop (before: every other association waited for it, indefinitely); it is dropped after
  ``tls_handshake_timeout_s``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from integration_helpers import NodeProcess, make_image, write
from reliability_helpers import journal_rows, report, wait_for

from dicom_node.testing.local_orthanc import LocalOrthanc, WaitTimeout, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def associate(port: int, calling: str, called: str, *, bind: str = "127.0.0.1", tls_args=None,  # type: ignore[no-untyped-def]
              store: Path | None = None, timeout: float = 10.0) -> str:  # fmt: skip
    """'accepted' (C-ECHO or C-STORE succeeded), 'rejected' (A-ASSOCIATE-RJ), 'refused' (association
    accepted, the C-STORE answered with a failure status) or 'failed' (abort, timeout)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    ae.add_requested_context(CR_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, bind_address=(bind, 0), tls_args=tls_args)
    if assoc.is_rejected:
        return "rejected"
    if not assoc.is_established:
        return "failed"
    try:
        status = assoc.send_c_store(store) if store is not None else assoc.send_c_echo()
        if "Status" not in status:
            return "failed"
        return "accepted" if int(status.Status) == 0 else "refused"
    finally:
        if assoc.is_established:
            assoc.release()


def closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """True if the peer closes ``sock`` within ``within_s`` seconds (EOF or reset)."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_spoofed_ae_titles_are_refused_on_both_hops(orthanc_bin: None, tmp_path: Path) -> None:
    orthanc = LocalOrthanc(workdir=tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port(),
                           node_port=free_port(), auto_forward=False)  # fmt: skip
    node = NodeProcess(workdir=tmp_path / "node", port=orthanc.node_port, orthanc_dicom_port=orthanc.dicom_port,
                       env_overrides={"CXR_NODE_ALLOWED_AETS": "", "CXR_NODE_ALLOWED_PEERS": "ORTHANC@127.0.0.1,CXRTEST@127.0.0.1"})  # fmt: skip
    cxr = write(make_image("CR", patient_name="Spoof^Victim", seed=41), tmp_path / "cxr.dcm")
    try:
        orthanc.start()
        node.start()
        outcomes = {
            # hop 1: into the node
            "node: ORTHANC from 127.0.0.2 stores": associate(node.port, "ORTHANC", "AINODE", bind="127.0.0.2", store=cxr),
            "node: ORTHANC from 127.0.0.1 echoes": associate(node.port, "ORTHANC", "AINODE"),
            "node: unknown title from 127.0.0.1": associate(node.port, "INTRUDER", "AINODE"),
            # hop 2: into Orthanc (DicomCheckModalityHost)
            "orthanc: AINODE from 127.0.0.2 stores": associate(orthanc.dicom_port, "AINODE", "ORTHANC", bind="127.0.0.2", store=cxr),
            "orthanc: AINODE from 127.0.0.1 echoes": associate(orthanc.dicom_port, "AINODE", "ORTHANC"),
        }  # fmt: skip
        jobs = journal_rows(node.spool_dir, "SELECT COUNT(*) FROM jobs")[0][0]
        in_orthanc = len(orthanc.instances())
        rejected_lines = [r for r in node.log_records() if r.get("event") == "association_rejected"]
    finally:
        node.stop()
        orthanc.stop()
    report("hostile peers: spoofed AE titles", tried=3, refused=sum(v in ("rejected", "refused") for k, v in outcomes.items()
                                                                      if "127.0.0.2" in k or "unknown" in k),
           stored_by_spoofers=jobs + in_orthanc, genuine_accepted=sum(v == "accepted" for k, v in outcomes.items()
                                                                      if "127.0.0.1 echoes" in k))  # fmt: skip
    # Orthanc associates, then aborts (or refuses) the C-STORE of a modality calling from the wrong address
    assert outcomes.pop("orthanc: AINODE from 127.0.0.2 stores") in ("refused", "failed")
    assert outcomes == {
        "node: ORTHANC from 127.0.0.2 stores": "rejected",
        "node: ORTHANC from 127.0.0.1 echoes": "accepted",
        "node: unknown title from 127.0.0.1": "rejected",
        "orthanc: AINODE from 127.0.0.1 echoes": "accepted",
    }
    assert jobs == 0 and in_orthanc == 0, "a spoofed peer stored something"
    assert len(rejected_lines) == 2 and {r["peer"].split(":")[0] for r in rejected_lines} == {"127.0.0.2", "127.0.0.1"}
    assert all("Spoof" not in str(r) for r in rejected_lines)


def test_idle_and_slow_clients_do_not_block_the_scp(dcmtk: None, tmp_path: Path) -> None:
    node = NodeProcess(workdir=tmp_path / "node", port=free_port(), orthanc_dicom_port=free_port(),
                       env_overrides={"CXR_NODE_MAX_ASSOCIATIONS": "4", "CXR_NODE_ASSOCIATION_REQUEST_TIMEOUT_S": "3"})  # fmt: skip
    idle: list[socket.socket] = []
    flood: list[socket.socket] = []
    try:
        node.start()
        for _ in range(24):  # 6 x max_associations of silent TCP connections
            idle.append(socket.create_connection(("127.0.0.1", node.port), timeout=5))
        for _ in range(3):  # slow loris: the first bytes of an A-ASSOCIATE-RQ PDU (type 1, length 256), then nothing
            s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            s.sendall(b"\x01\x00\x00\x00\x01\x00\x00\x01")
            idle.append(s)
        time.sleep(0.5)
        t0 = time.monotonic()
        genuine = [associate(node.port, "ORTHANC", "AINODE", timeout=10) for _ in range(3)]
        genuine_s = time.monotonic() - t0
        all_closed = all(closed_by_peer(s, 10) for s in idle)
        closed_s = time.monotonic() - t0
        # a flood beyond the pending limit (max(64, 8 x max_associations)): the excess is closed at once,
        # the node survives, and genuine peers get in again once the flood's sockets time out
        for _ in range(80):
            flood.append(socket.create_connection(("127.0.0.1", node.port), timeout=5))
        refused_at_once = wait_for(lambda: sum(r.get("event") == "connection_refused" for r in node.log_records()),
                                   10, "connections beyond the pending limit refused")  # fmt: skip
        after_flood = wait_for(lambda: associate(node.port, "ORTHANC", "AINODE", timeout=5) == "accepted", 20,
                               "a genuine association once the flood timed out")  # fmt: skip
        alive = node.proc is not None and node.proc.poll() is None
    finally:
        for s in idle + flood:
            s.close()
        node.stop()
    report("hostile peers: idle and slow-loris connections", tried=len(idle) + len(flood),
           genuine_associations_ok=genuine.count("accepted") + int(bool(after_flood)), genuine_s=round(genuine_s, 1),
           idle_closed_by_node_s=round(closed_s, 1), refused_at_once=refused_at_once)  # fmt: skip
    assert genuine == ["accepted"] * 3, genuine
    assert genuine_s < 10, f"genuine associations took {genuine_s:.1f} s"
    assert all_closed and closed_s < 15, "the node kept idle connections open beyond association_request_timeout_s"
    assert refused_at_once >= 1 and alive  # (some of the 80 time out while the accept loop works through them)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tls_certs import have_openssl, make_pki

    if not have_openssl():
        pytest.skip("openssl CLI not on PATH")
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_a_client_that_never_handshakes_does_not_block_the_tls_scp(dcmtk: None, tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    from dicom_node.transport.tls import client_context, scu_tls_args

    ctx = client_context(pki.ca_crt, pki.client_crt, pki.client_key)
    tls_args = scu_tls_args(ctx, "127.0.0.1")
    port = free_port()
    node = NodeProcess(workdir=tmp_path / "node", port=port, orthanc_dicom_port=free_port(),
                       env_overrides={"CXR_NODE_TLS_SCP": "true", "CXR_NODE_TLS_CERT_FILE": str(pki.server_crt),
                                      "CXR_NODE_TLS_KEY_FILE": str(pki.server_key), "CXR_NODE_TLS_CA_FILE": str(pki.ca_crt),
                                      "CXR_NODE_TLS_HANDSHAKE_TIMEOUT_S": "3"},
                       ready_check=lambda: associate(port, "ORTHANC", "AINODE", tls_args=tls_args, timeout=5) == "accepted")  # fmt: skip
    silent: list[socket.socket] = []
    try:
        node.start()
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        time.sleep(0.5)  # the node has accepted them and is waiting for their ClientHello
        t0 = time.monotonic()
        outcome = associate(port, "ORTHANC", "AINODE", tls_args=tls_args, timeout=10)
        genuine_s = time.monotonic() - t0
        dropped = all(closed_by_peer(s, 10) for s in silent)

        def handshake_failed_lines() -> int:
            return sum(r.get("event") == "tls_handshake_failed" for r in node.log_records())

        # the node drops a socket before it writes that socket's log line: wait (bounded) for the last one
        try:
            wait_for(lambda: handshake_failed_lines() >= len(silent) or None, 10, "a log line per dropped client")
        except WaitTimeout:
            pass  # counted below, where a missing line fails the test with the count
        failed_lines = handshake_failed_lines()
    finally:
        for s in silent:
            s.close()
        node.stop()
    report("hostile peers: TLS clients that never handshake", tried=len(silent), genuine_association=outcome,
           genuine_s=round(genuine_s, 1), dropped_by_node=len(silent) if dropped else 0, handshake_failed_lines=failed_lines)  # fmt: skip
    assert outcome == "accepted" and genuine_s < 8, (outcome, genuine_s)
    assert dropped, "silent TLS clients were not dropped after tls_handshake_timeout_s"
    assert failed_lines >= len(silent)
