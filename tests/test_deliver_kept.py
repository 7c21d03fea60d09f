"""Delivery over kept associations (delivery_idle_release_s), files sent as stored, the JPEG-refused
fallback, and the reactor pause that keeps pynetdicom's reactor off the C-STORE responses; against
real dcmtk storescp peers and a real Orthanc (dicom_node/testing/local_orthanc.py)."""

from __future__ import annotations

import io
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import cxr_like_array, have_dcmtk, make_dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid
from service_helpers import _port_open, _wait, delivery_settings
from tls_certs import free_port

from dicom_node.delivery import kept as kept_mod
from dicom_node.delivery.deliver import Deliverer
from dicom_node.storage.journal import Journal, ResultFile
from dicom_node.storage.spool import Spool
from dicom_node.transport.reactor_checkpoint import ReactorCheckpoint

needs_dcmtk = pytest.mark.skipif(not have_dcmtk("storescp"), reason="dcmtk storescp not installed")


# ---------------------------------------------------------------------- helpers
def jpeg_sc(seed: int) -> pydicom.Dataset:
    """An RGB Secondary Capture in JPEG Baseline (as branch sc's overlay is stored)."""
    from PIL import Image

    grey = cxr_like_array(96, 128, bits_stored=8, seed=seed).astype(np.uint8)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=2)
    ds = make_dataset(
        rgb, photometric="RGB", sop_class_uid=SecondaryCaptureImageStorage, sop_instance_uid=generate_uid()
    )
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


class Node:
    """Spool + journal + Deliverer; :meth:`add_job` queues one analysed job with two results."""

    def __init__(self, tmp_path: Path, dest: str, **overrides: object) -> None:
        overrides = {"network_timeout_s": 10, "keep_delivered": True, **overrides}
        self.settings = delivery_settings(tmp_path, dest, **overrides)
        self.spool = Spool(self.settings.spool_dir)
        self.journal = Journal(self.settings.journal_path)
        self.deliverer = Deliverer(self.settings, self.journal, self.spool)
        self.uids: list[str] = []

    def add_job(self, *, jpeg: bool = False) -> int:
        uid = generate_uid()
        src = self.spool.store_incoming(uid, b"source bytes")
        job = self.journal.add_job(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                                   transfer_syntax="1.2.840.10008.1.2.1", calling_aet="X", path=str(src))  # fmt: skip
        files = []
        for i in range(2):
            if jpeg and i == 1:
                ds = jpeg_sc(len(self.uids))
            else:
                ds = make_dataset(cxr_like_array(64, 48, seed=len(self.uids)),
                                  sop_class_uid=SecondaryCaptureImageStorage, sop_instance_uid=generate_uid())  # fmt: skip
            path = self.spool.store_result(job, ds)
            self.uids.append(str(ds.SOPInstanceUID))
            files.append(ResultFile(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), str(path)))  # fmt: skip
        self.journal.mark_analysed(job, files, [d.key for d in self.settings.destinations])
        return job

    def deliver_all(self, timeout: float = 30.0) -> None:
        """Run the deliverer until nothing is pending (bounded)."""
        deadline = time.monotonic() + timeout
        while self.journal.outbox(state="pending"):
            assert time.monotonic() < deadline, self.journal.outbox(state="pending")
            if not self.deliverer.run_once():
                time.sleep(0.05)

    def close(self) -> None:
        self.deliverer.stop(10)
        self.journal.close()


class LoggedStoreSCP:
    """dcmtk storescp (``-v``: one "Association Acknowledged" line per association, "Association
    Release" / "Association Aborted" when it ends; ``+uf``: a duplicate would be a second file)."""

    def __init__(self, tmp_path: Path, *options: str) -> None:
        self.port = free_port()
        self.out = tmp_path / "received"
        self.out.mkdir(exist_ok=True)
        self.log = tmp_path / "storescp.log"
        self.options = options
        self.proc: subprocess.Popen | None = None

    def start(self) -> LoggedStoreSCP:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["storescp", "-v", "+uf", "-aet", "DEST", *self.options, "-od", str(self.out),
                                          str(self.port)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        assert _wait(lambda: _port_open(self.port), 10), "storescp did not start"
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text)

    def received(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(p) for p in sorted(self.out.iterdir()) if p.is_file()]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., LoggedStoreSCP]]:
    made: list[LoggedStoreSCP] = []

    def start(*options: str) -> LoggedStoreSCP:
        made.append(LoggedStoreSCP(tmp_path, *options).start())
        return made[-1]

    yield start
    for s in made:
        s.stop()


# ----------------------------------------------------------------- integration
@pytest.mark.integration
@needs_dcmtk
def test_consecutive_images_share_one_association_released_on_shutdown(tmp_path: Path, storescp) -> None:
    dest = storescp()
    node = Node(tmp_path, f"DEST@127.0.0.1:{dest.port}")
    try:
        for _ in range(3):  # one image's results per batch, as they come at a low rate
            node.add_job()
            node.deliver_all()
        assert node.deliverer.dicom.opened == 1
        assert dest.count("Association Acknowledged") == 1
        assert len(node.deliverer.dicom.kept) == 1
    finally:
        node.close()
    assert _wait(lambda: dest.count("Association Release") == 1, 10), dest.log.read_text()
    assert sorted(str(d.SOPInstanceUID) for d in dest.received()) == sorted(node.uids)


@pytest.mark.integration
@needs_dcmtk
def test_idle_association_is_released_after_the_idle_time(tmp_path: Path, storescp) -> None:
    dest = storescp()
    node = Node(tmp_path, f"DEST@127.0.0.1:{dest.port}", delivery_idle_release_s=0.3)
    try:
        node.add_job()
        node.deliver_all()
        assert _wait(lambda: dest.count("Association Release") == 1, 10), dest.log.read_text()
        assert len(node.deliverer.dicom.kept) == 0
        node.add_job()  # after the release: a new association
        node.deliver_all()
        assert node.deliverer.dicom.opened == 2 and dest.count("Association Acknowledged") == 2
    finally:
        node.close()
    assert len(dest.received()) == 4


@pytest.mark.integration
@needs_dcmtk
def test_zero_idle_time_is_one_association_per_batch(tmp_path: Path, storescp) -> None:
    dest = storescp()
    node = Node(tmp_path, f"DEST@127.0.0.1:{dest.port}", delivery_idle_release_s=0)
    try:
        for _ in range(2):
            node.add_job()
            node.deliver_all()
        assert node.deliverer.dicom.opened == 2 and len(node.deliverer.dicom.kept) == 0
    finally:
        node.close()
    assert _wait(lambda: dest.count("Association Release") == 2, 10), dest.log.read_text()


def _outbox_attempts(node: Node) -> list[int]:
    return [o.attempts for o in node.journal.outbox()]


@pytest.mark.integration
@needs_dcmtk
def test_peer_restarted_while_idle_loses_and_duplicates_nothing(tmp_path: Path, storescp) -> None:
    """storescp killed (the kept association's connection drops) and started again on the same port:
    the next image goes out on a new association at the first attempt."""
    dest = storescp()
    node = Node(tmp_path, f"DEST@127.0.0.1:{dest.port}")
    try:
        node.add_job()
        node.deliver_all()
        dest.kill()
        dest.start()
        node.add_job()
        node.deliver_all()
        assert node.deliverer.dicom.opened == 2
        assert _outbox_attempts(node) == [1, 1, 1, 1]  # each delivered at its first attempt
    finally:
        node.close()
    got = [str(d.SOPInstanceUID) for d in dest.received()]
    assert sorted(got) == sorted(node.uids)  # each once (+uf: a second copy would be another file)


@pytest.mark.integration
@needs_dcmtk
def test_kept_association_dead_at_the_moment_of_sending_is_retried_on_a_new_one(
    tmp_path: Path, storescp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer goes away so close to the send that the idle check still sees a live association
    (simulated: the check is skipped): the C-STORE fails at once, and the results go out on a fresh
    association in the same attempt, without a failed attempt counted."""
    dest = storescp()
    node = Node(tmp_path, f"DEST@127.0.0.1:{dest.port}")
    try:
        node.add_job()
        node.deliver_all()
        monkeypatch.setattr(kept_mod, "is_usable", lambda assoc: True)
        dest.kill()
        dest.start()
        node.add_job()
        with caplog.at_level(logging.INFO, logger="dicom_node.delivery"):
            assert node.deliverer.run_once() == 2
        assert [r.event for r in caplog.records if getattr(r, "event", "") == "kept_association_lost"] == [
            "kept_association_lost"
        ]
        assert node.journal.outbox(state="pending") == []
        assert node.deliverer.dicom.opened == 2
        assert _outbox_attempts(node) == [1, 1, 1, 1]
    finally:
        node.close()
    assert sorted(str(d.SOPInstanceUID) for d in dest.received()) == sorted(node.uids)


@pytest.mark.integration
@needs_dcmtk
def test_jpeg_refused_is_sent_uncompressed(tmp_path: Path, storescp) -> None:
    """storescp's default accepts uncompressed transfer syntaxes only: the JPEG Baseline SC arrives
    decompressed (Explicit VR Little Endian, RGB), same SOP Instance UID, at the first attempt."""
    dest = storescp()  # default +x=: uncompressed only
    node = Node(tmp_path, f"DEST@127.0.0.1:{dest.port}")
    try:
        node.add_job(jpeg=True)
        node.deliver_all()
        assert _outbox_attempts(node) == [1, 1]
        sent = pydicom.dcmread(node.journal.outbox()[1].path)
    finally:
        node.close()
    by_uid = {str(d.SOPInstanceUID): d for d in dest.received()}
    assert sorted(by_uid) == sorted(node.uids)
    got = by_uid[str(sent.SOPInstanceUID)]
    assert str(got.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1"
    assert got.PhotometricInterpretation == "RGB" and got.SamplesPerPixel == 3
    expected = sent.pixel_array  # pydicom converts the YBR JPEG to RGB
    assert got.pixel_array.shape == expected.shape
    assert np.abs(got.pixel_array.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.integration
@needs_dcmtk
def test_jpeg_accepted_is_sent_as_stored(tmp_path: Path, storescp) -> None:
    dest = storescp("+xa")
    node = Node(tmp_path, f"DEST@127.0.0.1:{dest.port}")
    try:
        node.add_job(jpeg=True)
        node.deliver_all()
        stored = Path(node.journal.outbox()[1].path).read_bytes()
    finally:
        node.close()
    jpeg = [d for d in dest.received() if str(d.file_meta.TransferSyntaxUID) == JPEGBaseline8Bit]
    assert len(jpeg) == 1
    assert jpeg[0].PixelData == pydicom.dcmread(io.BytesIO(stored)).PixelData  # the bytes stored, unchanged


@pytest.mark.integration
@needs_dcmtk
def test_spool_files_are_sent_without_decoding_them(
    tmp_path: Path, storescp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom reads only the file meta and streams the data set (before: a full pydicom decode and
    re-encode of every result, ~13 ms of CPU for a 3.9 MB SC)."""
    import pynetdicom.association as pa

    def no_decode(*args: object, **kwargs: object) -> object:
        raise AssertionError("the sender decoded a spool file")

    monkeypatch.setattr(pa, "dcmread", no_decode)
    dest = storescp()
    node = Node(tmp_path, f"DEST@127.0.0.1:{dest.port}")
    try:
        node.add_job()
        node.deliver_all()
    finally:
        node.close()
    assert len(dest.received()) == 2


@pytest.mark.integration
def test_orthanc_restart_between_images_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Real Orthanc with the shipped configuration: results of consecutive images share one
    association; Orthanc restarted while the association is kept: the next image's results arrive
    on a new one at the first attempt; every result is stored exactly once."""
    from dicom_node.testing.local_orthanc import LocalOrthanc, orthanc_binary

    if orthanc_binary() is None or not Path("/usr/share/orthanc/plugins/libOrthancPython.so").exists():
        pytest.skip("Orthanc with its Python plug-in is not installed")
    orthanc = LocalOrthanc(workdir=tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port(),
                           node_port=free_port(), auto_forward=False)  # fmt: skip
    orthanc.start()
    node = Node(tmp_path, f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}")
    try:
        for _ in range(2):
            node.add_job(jpeg=True)
            node.deliver_all()
        assert node.deliverer.dicom.opened == 1
        orthanc.stop()
        orthanc.start()
        node.add_job(jpeg=True)
        node.deliver_all()
        assert node.deliverer.dicom.opened == 2
        assert _outbox_attempts(node) == [1] * 6
        stored = sorted(
            str(orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]) for i in orthanc.instances()
        )
        assert stored == sorted(node.uids)
        jpeg_ts = {
            orthanc.get_bytes(f"/instances/{i}/metadata/TransferSyntax").text for i in orthanc.instances()
        }
        assert JPEGBaseline8Bit in jpeg_ts  # Orthanc accepts JPEG: sent as stored
    finally:
        node.close()
        orthanc.stop()


# ------------------------------------------------------------------------ unit
def _fake_reactor(checkpoint: threading.Event, queue: list[str], stolen: list[str], stop: threading.Event,
                  preempted: threading.Event) -> None:  # fmt: skip
    """pynetdicom's association reactor loop (association.py ``_run_reactor``), with the preemption
    that loses a response made certain: after ``wait()`` returns it stalls before it takes a message."""
    state = {"paused": False}
    checkpoint.is_paused = lambda: state["paused"]  # type: ignore[attr-defined]
    while not stop.is_set():
        time.sleep(0.001)
        state["paused"] = True
        checkpoint.wait()
        if not preempted.is_set():
            preempted.set()
            time.sleep(0.05)  # descheduled here: still "paused" as far as the sender can tell
        state["paused"] = False
        if queue:
            stolen.append(queue.pop(0))


@pytest.mark.parametrize("certain", [False, True], ids=["pynetdicom-pause", "ReactorCheckpoint"])
def test_reactor_pause_keeps_the_reactor_off_the_response(certain: bool) -> None:
    """pynetdicom's pause (clear, then spin until ``_is_paused``) lets a reactor that was just woken
    take the C-STORE response; :class:`ReactorCheckpoint` does not."""
    checkpoint: threading.Event = ReactorCheckpoint() if certain else threading.Event()
    checkpoint.clear()
    queue: list[str] = []
    stolen: list[str] = []
    stop, preempted = threading.Event(), threading.Event()
    reactor = threading.Thread(
        target=_fake_reactor, args=(checkpoint, queue, stolen, stop, preempted), daemon=True
    )
    reactor.start()
    try:
        assert _wait(lambda: getattr(checkpoint, "is_paused", lambda: False)(), 5)
        checkpoint.set()  # the previous send_c_store ends: the reactor wakes ...
        time.sleep(0.01)
        assert preempted.wait(5)  # ... and is stalled right after wait() returned
        if certain:  # the sender pauses the reactor before its next send
            assert checkpoint.pause(reactor.is_alive)
        else:
            checkpoint.clear()
            assert _wait(lambda: checkpoint.is_paused(), 5)  # type: ignore[attr-defined]
        queue.append("C-STORE-RSP")  # the response arrives while the sender waits for it
        time.sleep(0.15)
        if certain:
            assert queue == ["C-STORE-RSP"] and stolen == []
        else:
            assert stolen == ["C-STORE-RSP"]  # what made the sender wait the whole DIMSE timeout
    finally:
        stop.set()
        checkpoint.set()
        reactor.join(5)


def test_dul_clock_wakes_a_parked_dul_at_once() -> None:
    """A parked DUL thread sleeps long (few idle turns) but is woken as soon as its association is
    taken again."""
    from dicom_node.delivery.kept import DulClock

    clock = DulClock()
    t2_done = threading.Event()
    ident: list[int] = []
    ready = threading.Event()

    def parked_dul_2() -> None:
        ident.append(threading.get_ident())
        ready.wait(5)
        clock.sleep(60.0)
        t2_done.set()

    t2 = threading.Thread(target=parked_dul_2, daemon=True)
    t2.start()
    assert _wait(lambda: bool(ident), 5)
    clock.park(ident[0])
    ready.set()
    time.sleep(0.1)
    assert not t2_done.is_set()  # parked: still asleep
    clock.unpark(ident[0])
    assert t2_done.wait(5)  # woken at once, not after 60 s
    assert clock.monotonic() > 0  # the rest of the time module passes through
