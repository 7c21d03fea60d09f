"""Delivery: C-STORE to real dcmtk storescp / pynetdicom SCPs, backoff, permanent refusals, REST errors."""

from __future__ import annotations

import logging
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicom_factory import cxr_like_array, have_dcmtk, make_dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from service_helpers import _port_open, _wait, delivery_settings
from tls_certs import free_port

from dicom_node.delivery.deliver import Deliverer, backoff_delay, classify_status
from dicom_node.storage.journal import Journal, ResultFile
from dicom_node.storage.spool import Spool

needs_dcmtk = pytest.mark.skipif(not have_dcmtk("storescp"), reason="dcmtk storescp not installed")


# ----------------------------------------------------------------------------- unit
@pytest.mark.parametrize(
    ("status", "delivered", "permanent"),
    [
        (0x0000, True, False),
        (0xB000, True, False),
        (0x0107, True, False),
        (0xA700, False, False),
        (0xA7FF, False, False),
        (0x0110, False, False),
        (0xC000, False, True),
        (0xC211, False, True),
        (0xA900, False, True),
        (0x0122, False, True),
        (0xFE00, False, False),
    ],
)
def test_classify_status(status: int, delivered: bool, permanent: bool) -> None:
    out = classify_status(status)
    assert (out.delivered, out.permanent) == (delivered, permanent)
    if not delivered:
        assert f"0x{status:04X}" in (out.error or "")


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 2.0, 60.0, rng=rng) for n in range(1, 12)]
    for n, d in enumerate(delays, start=1):
        raw = min(60.0, 2.0 * 2 ** (n - 1))
        assert 0.5 * raw <= d <= raw
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not constant
    assert max(delays) <= 60.0
    with pytest.raises(ValueError, match="0"):
        backoff_delay(0, 1, 2)


# ---------------------------------------------------------------------- helpers
class Queue:
    """Spool + journal with one analysed job whose two result files are queued for ``dest``."""

    def __init__(self, tmp_path: Path, dest: str, **overrides: object) -> None:
        self.settings = delivery_settings(tmp_path, dest, **overrides)
        self.spool = Spool(self.settings.spool_dir)
        self.journal = Journal(self.settings.journal_path)
        src = self.spool.store_incoming("1.2.3", b"source bytes")
        self.job_id = self.journal.add_job(
            sop_instance_uid="1.2.3",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
            transfer_syntax="1.2.840.10008.1.2.1",
            calling_aet="X",
            path=str(src),
        )
        files = []
        self.uids = []
        for i in range(2):
            ds = make_dataset(
                cxr_like_array(64, 48, seed=i),
                sop_class_uid=SecondaryCaptureImageStorage,
                sop_instance_uid=generate_uid(),
            )
            path = self.spool.store_result(self.job_id, ds)
            self.uids.append(str(ds.SOPInstanceUID))
            files.append(
                ResultFile(
                    str(ds.SOPInstanceUID),
                    str(ds.SOPClassUID),
                    str(ds.file_meta.TransferSyntaxUID),
                    str(path),
                )
            )
        self.files = files
        self.journal.mark_analysed(self.job_id, files, [d.key for d in self.settings.destinations])
        self.deliverer = Deliverer(self.settings, self.journal, self.spool)

    def pending(self) -> list:
        return self.journal.outbox(state="pending")

    def close(self) -> None:
        self.deliverer.stop(10)
        self.journal.close()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    procs: list[subprocess.Popen] = []
    extra: list[str] = []

    def start(*options: str) -> subprocess.Popen:
        p = subprocess.Popen(
            ["storescp", "-aet", "DEST", *options, "-od", str(out), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(p)
        assert _wait(lambda: _port_open(port), 10), "storescp did not start"
        return p

    yield port, out, extra, start  # type: ignore[misc]
    for p in procs:
        p.terminate()
        p.wait(10)


# ----------------------------------------------------------------- integration
@pytest.mark.integration
@needs_dcmtk
def test_delivers_to_storescp_and_cleans_up(tmp_path: Path, storescp) -> None:
    port, out, _, start = storescp
    start()
    q = Queue(tmp_path, f"DEST@127.0.0.1:{port}")
    try:
        assert q.deliverer.run_once() == 2
        assert q.pending() == []
        assert q.journal.get_job(q.job_id).state == "delivered"
        got = {str(pydicom.dcmread(f).SOPInstanceUID) for f in out.iterdir()}
        assert got == set(q.uids)
        # as sent: the file storescp wrote carries the bytes of our spool file's pixel data
        assert not any(Path(f.path).exists() for f in q.files)  # keep_delivered=False removes them
        assert not any(q.spool.incoming.iterdir())
    finally:
        q.close()


@pytest.mark.integration
@needs_dcmtk
def test_accepted_store_is_logged_even_if_the_journal_commit_never_happens(
    tmp_path: Path, storescp, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by the SIGKILL test (tests/reliability/test_crash.py): a kill between the journal commit
    # and the log line left a result delivered in Orthanc and in the journal with no "delivered" line.
    port, _, _, start = storescp
    start()
    q = Queue(tmp_path, f"DEST@127.0.0.1:{port}")
    caplog.set_level(logging.INFO, logger="dicom_node.delivery.deliver")

    def killed(outbox_id: int) -> None:
        raise SystemExit("killed before the commit")

    q.journal.mark_delivered = killed  # type: ignore[method-assign]
    try:
        with pytest.raises(SystemExit):
            q.deliverer.run_once()
        logged = [r for r in caplog.records if getattr(r, "event", "") == "delivered"]
        assert [r.sop_instance_uid for r in logged] == [q.uids[0]]  # type: ignore[attr-defined]
        assert len(q.pending()) == 2  # not committed: both are sent again after the restart
    finally:
        q.close()


@pytest.mark.integration
@needs_dcmtk
def test_destination_down_then_up(tmp_path: Path, storescp, caplog: pytest.LogCaptureFixture) -> None:
    port, out, _, start = storescp
    q = Queue(tmp_path, f"DEST@127.0.0.1:{port}", keep_delivered=True)
    caplog.set_level(logging.WARNING, logger="dicom_node.delivery.deliver")
    try:
        q.deliverer.start()
        assert _wait(lambda: all(o.attempts >= 2 for o in q.pending()), 15)
        rows = q.pending()
        assert all(not o.permanent and "connection" in (o.last_error or "") for o in rows)
        assert all(o.next_attempt_at > time.time() - 1.5 for o in rows)  # backoff is scheduled, persisted
        attempts_before = max(o.attempts for o in rows)
        assert attempts_before <= 8  # bounded by the backoff, not a hot loop (base 0.3 s, max 1 s)
        start()
        assert _wait(lambda: not q.pending(), 15)
        assert len(list(out.iterdir())) == 2
        assert q.journal.get_job(q.job_id).state == "delivered"
        assert any(getattr(r, "event", "") == "delivery_failed" for r in caplog.records)
    finally:
        q.close()


@pytest.mark.integration
@needs_dcmtk
def test_rejected_association_retried_slowly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A peer that rejects every association (A-ASSOCIATE-RJ, calling AE not recognised) and then waits
    # for us to close: dcmtk's `storescp --refuse` drops the connection right after the rejection, and
    # pynetdicom then sometimes sees an abort (transient) instead of the rejection (permanent).
    from pynetdicom import AE, AllStoragePresentationContexts

    out = tmp_path / "received"
    out.mkdir()
    refuser = AE(ae_title="DEST")
    refuser.supported_contexts = AllStoragePresentationContexts
    refuser.require_calling_aet = ["SOMEONE_ELSE"]
    server = refuser.start_server(("127.0.0.1", 0), block=False)
    port = server.server_address[1]
    q = Queue(tmp_path, f"DEST@127.0.0.1:{port}", permanent_retry_s=1.0)
    caplog.set_level(logging.ERROR, logger="dicom_node.delivery.deliver")
    try:
        q.deliverer.start()
        time.sleep(3.5)
        q.deliverer.stop(10)
        rows = q.pending()
        assert len(rows) == 2 and all(o.permanent for o in rows)
        assert all("rejected" in (o.last_error or "") for o in rows)
        # one attempt at t=0 and then about one per permanent_retry_s (0.9-1.0 s): 3-5 in 3.5 s
        assert all(3 <= o.attempts <= 5 for o in rows), [o.attempts for o in rows]
        errors = [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and getattr(r, "event", "") == "delivery_failed"
        ]
        assert errors and all(r.permanent for r in errors)
        assert list(out.iterdir()) == []
    finally:
        q.close()
        server.shutdown()


def _pynetdicom_scp(status: int):
    received: list[str] = []

    def handle(event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return status

    ae = AE(ae_title="DEST")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    return server, received


@pytest.mark.parametrize(("status", "permanent"), [(0xA700, False), (0xC211, True)])
def test_failure_statuses(tmp_path: Path, status: int, permanent: bool) -> None:
    server, received = _pynetdicom_scp(status)
    q = Queue(
        tmp_path,
        f"DEST@127.0.0.1:{server.server_address[1]}",
        retry_base_s=30,
        retry_max_s=60,
        permanent_retry_s=600,
    )
    try:
        t0 = time.time()
        assert q.deliverer.run_once() == 2
        assert set(received) == set(q.uids)  # both were tried over one association
        rows = q.pending()
        assert len(rows) == 2 and all(o.permanent is permanent and o.attempts == 1 for o in rows)
        assert all(f"0x{status:04X}" in (o.last_error or "") for o in rows)
        low, high = (540, 600) if permanent else (15, 30)
        assert all(t0 + low <= o.next_attempt_at <= time.time() + high for o in rows)
        assert q.deliverer.run_once() == 0  # nothing due: no hot loop
    finally:
        q.close()
        server.shutdown()


def test_backoff_survives_restart(tmp_path: Path) -> None:
    port = free_port()  # nothing listens
    q = Queue(tmp_path, f"DEST@127.0.0.1:{port}", retry_base_s=100, retry_max_s=200)
    q.deliverer.run_once()
    due = {o.id: o.next_attempt_at for o in q.pending()}
    q.close()
    journal = Journal(tmp_path / "spool" / "journal.sqlite3")
    rows = journal.outbox(state="pending")
    assert {o.id: o.next_attempt_at for o in rows} == due and all(o.attempts == 1 for o in rows)
    d = Deliverer(q.settings, journal, Spool(tmp_path / "spool"))
    assert d.run_once() == 0  # not due yet after the restart either
    journal.close()


def test_rest_destination_unreachable_is_transient(tmp_path: Path) -> None:
    port = free_port()
    q = Queue(tmp_path, f"http://user:pw@127.0.0.1:{port}")
    try:
        assert q.deliverer.run_once() == 2
        rows = q.pending()
        assert all(not o.permanent and o.attempts == 1 and o.last_error for o in rows)
        assert all("pw" not in (o.destination + (o.last_error or "")) for o in rows)
    finally:
        q.close()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[int]:
    import json
    import shutil

    if not shutil.which("Orthanc"):
        pytest.skip("Orthanc not installed")
    port = free_port()
    db = tmp_path / "orthanc-db"
    cfg = tmp_path / "orthanc.json"
    cfg.write_text(
        json.dumps(
            {
                "Name": "DELIVER-TEST",
                "HttpPort": port,
                "DicomServerEnabled": False,
                "StorageDirectory": str(db),
                "IndexDirectory": str(db),
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": True,
                "RegisteredUsers": {"alice": "s3cret"},
                "Plugins": [],
            }
        )
    )
    proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait(lambda: _port_open(port), 20), "Orthanc did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.integration
def test_rest_delivery_to_real_orthanc(tmp_path: Path, orthanc: int) -> None:
    import httpx

    q = Queue(tmp_path, f"http://alice:s3cret@127.0.0.1:{orthanc}", keep_delivered=True)
    try:
        assert q.deliverer.run_once() == 2
        assert q.pending() == [] and q.journal.get_job(q.job_id).state == "delivered"
        found = set()
        for uid in q.uids:
            r = httpx.post(f"http://127.0.0.1:{orthanc}/tools/lookup", content=uid, auth=("alice", "s3cret"))
            r.raise_for_status()
            found.update(uid for item in r.json() if item["Type"] == "Instance")
        assert found == set(q.uids)
    finally:
        q.close()


@pytest.mark.integration
def test_rest_bad_credentials_is_permanent(tmp_path: Path, orthanc: int) -> None:
    q = Queue(tmp_path, f"http://alice:wrong@127.0.0.1:{orthanc}")
    try:
        assert q.deliverer.run_once() == 2
        rows = q.pending()
        assert all(o.permanent and "HTTP 401" in (o.last_error or "") for o in rows)
        assert all("wrong" not in (o.last_error or "") + o.destination for o in rows)
    finally:
        q.close()


@pytest.mark.integration
@needs_dcmtk
def test_scu_switches_nagle_off(tmp_path: Path, storescp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivery sockets carry TCP_NODELAY: with Nagle on, each C-STORE to Orthanc waited for a
    delayed ACK (26 vs 7.6 ms per instance on loopback, BENCHMARKS.md)."""
    from pynetdicom.association import Association

    port, _out, _, start = storescp
    start()
    seen: list[int] = []
    real = Association.send_c_store

    def spy(self: Association, *args: object, **kwargs: object) -> object:
        seen.append(self.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Association, "send_c_store", spy)
    q = Queue(tmp_path, f"DEST@127.0.0.1:{port}")
    try:
        assert q.deliverer.run_once() == 2
        assert q.pending() == []
    finally:
        q.close()
    assert len(seen) == 2 and all(seen), seen


@pytest.mark.integration
@needs_dcmtk
def test_results_are_recorded_before_the_association_release_finishes(
    tmp_path: Path, storescp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivered rows are committed while the A-RELEASE is still running (on a helper thread),
    and the deliverer's stop waits for that release."""
    import threading

    from pynetdicom.association import Association

    port, _out, _, start = storescp
    start()
    releasing, go_on = threading.Event(), threading.Event()
    states_at_release: list[str] = []
    real = Association.release

    def held_release(self: Association) -> None:
        releasing.set()
        assert go_on.wait(30), "the test never let the release go on"
        real(self)

    monkeypatch.setattr(Association, "release", held_release)
    q = Queue(tmp_path, f"DEST@127.0.0.1:{port}", delivery_idle_release_s=0)  # released after the batch
    try:
        assert q.deliverer.run_once() == 2  # returns while the release is held
        assert releasing.wait(30)
        states_at_release.append(q.journal.get_job(q.job_id).state)
        assert q.pending() == []
        go_on.set()
    finally:
        go_on.set()
        q.close()
    assert states_at_release == ["delivered"]
    assert q.deliverer.dicom._releases._shutdown  # stop() waited for the pending release
