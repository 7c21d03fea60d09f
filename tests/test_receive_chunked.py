"""Chunked C-STORE receive (issue 6): data sets are received straight into a spool file.

Real peers on 127.0.0.1 (dcmtk storescu, pynetdicom SCU); out-of-space on a real tmpfs.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import cxr_like_array, have_dcmtk, make_dataset, transcode_dcmtk, write
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt

from dicom_node.scp.receive import Receiver
from dicom_node.settings import NodeSettings
from dicom_node.storage.journal import Journal
from dicom_node.storage.spool import Spool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not have_dcmtk("storescu", "dcmcjpls"), reason="dcmtk not installed"),
]


class Node:
    def __init__(self, spool_dir: Path, **overrides: object) -> None:
        chunked = bool(overrides.pop("chunked_receive", True))
        params: dict[str, object] = {"port": 0, "spool_dir": spool_dir, "disk_reserve_mb": 0, "http_port": 0}
        params.update(overrides)
        self.settings = NodeSettings(**params)
        self.spool = Spool(self.settings.spool_dir, reserve_bytes=int(self.settings.disk_reserve_mb * 2**20))
        self.journal = Journal(self.settings.journal_path)
        self.receiver = Receiver(self.settings, self.spool, self.journal, chunked_receive=chunked)
        self.port = self.receiver.start()

    def incoming(self) -> list[str]:
        return sorted(p.name for p in self.spool.incoming.iterdir())

    def close(self) -> None:
        self.receiver.stop(5)
        self.journal.close()


def _dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its file meta (group length read from the file)."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    tag, vr, length = struct.unpack("<I2sH", raw[132:140])
    assert tag == 0x00000002 and vr == b"UL" and length == 4  # (0002,0000) group length first
    (group_len,) = struct.unpack("<I", raw[140:144])
    return raw[144 + group_len :]


def _pyscu(port: int, ds_or_path: pydicom.Dataset | Path, sop_class: str, ts: str) -> int:
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds_or_path)
        return int(status.Status)
    finally:
        assoc.release()


@pytest.mark.parametrize("chunked", [True, False])
def test_spool_file_is_byte_identical_to_the_senders_encoding(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, chunked: bool
) -> None:
    ds = make_dataset(cxr_like_array(rows=512, columns=400), bits_stored=12)
    src = write(transcode_dcmtk(ds, "dcmcjpls", [], tmp_path), tmp_path / "jls.dcm")
    node = Node(tmp_path / "spool", chunked_receive=chunked)
    try:
        with caplog.at_level(logging.INFO, logger="dicom_node.scp.receive"):
            proc = subprocess.run(
                ["storescu", "-aet", "STORESCU", "-aec", "AINODE", "-xt", "-R", "-to", "10", "-td", "10",
                 "127.0.0.1", str(node.port), str(src)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (job,) = node.journal.jobs()
        stored = Path(job.path or "")
        assert _dataset_bytes(stored) == _dataset_bytes(src)  # every byte of the data set as sent
        meta = pydicom.dcmread(stored, stop_before_pixels=True).file_meta
        assert (
            meta.TransferSyntaxUID == pydicom.dcmread(src).file_meta.TransferSyntaxUID == job.transfer_syntax
        )
        assert meta.MediaStorageSOPInstanceUID == job.sop_instance_uid
        assert node.incoming() == [stored.name]  # no staged .tmp left behind
        (rec,) = [r for r in caplog.records if getattr(r, "event", None) == "received"]
        assert rec.chunked is chunked
        assert rec.bytes == stored.stat().st_size
    finally:
        node.close()


def test_other_scps_in_the_process_keep_in_memory_receive(tmp_path: Path) -> None:
    """pynetdicom's chunked flag is global; the node switches it on for its own associations only."""
    node = Node(tmp_path / "spool")
    seen: list[int] = []

    def handle(event: evt.Event) -> int:
        seen.append(len(event.encoded_dataset(include_meta=False)))
        return 0x0000

    other = AE(ae_title="OTHER")
    for cx in AllStoragePresentationContexts:
        other.add_supported_context(cx.abstract_syntax, ExplicitVRLittleEndian)
    server = other.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        ds = make_dataset(cxr_like_array(), bits_stored=12)
        assert _pyscu(server.server_address[1], ds, ds.SOPClassUID, ExplicitVRLittleEndian) == 0
        assert _pyscu(node.port, ds, ds.SOPClassUID, ExplicitVRLittleEndian) == 0
        assert seen and seen[0] > ds.Rows * ds.Columns * 2  # the whole data set arrived in memory
        assert node.journal.jobs()[0].state == "received"
    finally:
        server.shutdown()
        node.close()


def test_undecodable_header_refused_c000_without_leftovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ViewPosition with an unknown VR ('XX'): the header cannot be read for routing, so it is refused
    with 0xC000 and one ERROR line; the staged file is deleted, nothing is journalled, and the node
    keeps receiving."""
    ds = make_dataset(cxr_like_array(), bits_stored=12)
    ds.ViewPosition = "PA"
    good = write(ds, tmp_path / "good.dcm")
    raw = good.read_bytes()
    view = b"\x18\x00\x01\x51CS"  # (0018,5101) CS, explicit VR little endian
    assert raw.count(view) == 1
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(raw.replace(view, b"\x18\x00\x01\x51XX"))
    node = Node(tmp_path / "spool")
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the bytes as they are
    try:
        with caplog.at_level(logging.INFO, logger="dicom_node.scp.receive"):
            status = _pyscu(node.port, bad, ds.SOPClassUID, ExplicitVRLittleEndian)
        assert status == 0xC000
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].status == "0xC000", [r.getMessage() for r in errors]
        assert node.journal.jobs() == [] and node.incoming() == []
        assert _pyscu(node.port, good, ds.SOPClassUID, ExplicitVRLittleEndian) == 0
        assert len(node.journal.jobs()) == 1
    finally:
        node.close()


def test_connection_lost_mid_transfer_leaves_no_partial_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer's connection drops while the data set is being received (after ~3 MB of 8 MiB):
    the staged file is deleted on EVT_CONN_CLOSE and nothing is journalled."""
    node = Node(tmp_path / "spool")
    rng = np.random.default_rng(0)
    ds = make_dataset(rng.integers(0, 4096, size=(2048, 2048), dtype=np.uint16), bits_stored=12)  # 8 MiB
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AINODE")
    assert assoc.is_established
    sock = assoc.dul.socket
    raw = sock.socket
    real_send = sock.send
    sent = 0

    def cut_send(data: bytes) -> None:  # the network goes away after ~3 MB (whatever the PDU size: scp_max_pdu)
        nonlocal sent
        before, sent = sent, sent + len(data)
        if before < 3 * 2**20 <= sent:
            raw.shutdown(socket.SHUT_RDWR)
        real_send(data)

    sock.send = cut_send  # type: ignore[method-assign]
    sender = threading.Thread(target=lambda: assoc.send_c_store(ds), daemon=True)
    try:
        with caplog.at_level(logging.INFO, logger="dicom_node.scp.receive"):
            sender.start()
            sender.join(30)
            deadline = time.monotonic() + 10
            while not any(getattr(r, "event", None) == "partial_removed" for r in caplog.records):
                assert time.monotonic() < deadline, "the partial transfer was never cleaned up"
                time.sleep(0.05)
        assert sent >= 3 * 2**20
        assert node.incoming() == [] and node.journal.jobs() == []
    finally:
        assoc.abort()
        node.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_out_of_space_during_chunked_write_answers_a700(
    small_tmpfs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ENOSPC in the middle of writing the received fragments: 0xA700, no orphan, then recovery."""
    node = Node(small_tmpfs / "spool")
    big = make_dataset(cxr_like_array(rows=1600, columns=1600), bits_stored=12)  # ~5 MB > 4 MiB tmpfs
    big.SOPInstanceUID = big.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    small = make_dataset(cxr_like_array(), bits_stored=12)
    try:
        with caplog.at_level(logging.ERROR, logger="dicom_node.scp.receive"):
            assert _pyscu(node.port, big, big.SOPClassUID, ExplicitVRLittleEndian) == 0xA700
        assert any("out of disk space" in r.getMessage() for r in caplog.records)
        assert node.journal.jobs() == [] and node.incoming() == []
        # the partial file was removed at once, so the space is back for the next instance
        assert _pyscu(node.port, small, small.SOPClassUID, ExplicitVRLittleEndian) == 0
        (job,) = node.journal.jobs()
        assert pydicom.dcmread(job.path).PixelData == small.PixelData
    finally:
        node.close()
