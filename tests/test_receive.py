"""SCP tests against real peers (dcmtk echoscu/storescu, pynetdicom SCU) on 127.0.0.1."""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
from pathlib import Path

import pydicom
import pytest
from dicom_factory import cxr_like_array, have_dcmtk, make_dataset, transcode_dcmtk, write
from pydicom.uid import JPEG2000, JPEG2000Lossless, generate_uid
from pynetdicom import AE, evt
from service_helpers import _storescu

import dicom_node.storage.spool as spool_mod
from dicom_node.scp.receive import ACCEPTED_TRANSFER_SYNTAXES, Receiver
from dicom_node.settings import NodeSettings
from dicom_node.storage.journal import Journal
from dicom_node.storage.spool import Spool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not have_dcmtk("echoscu", "storescu", "dcmcrle", "dcmcjpls"), reason="dcmtk not installed"
    ),
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class Node:
    """A Receiver on a free port; ``seen`` records, from inside the C-STORE handler (i.e. before the
    response is sent), whether the journal row and the spool file already exist."""

    def __init__(self, tmp_path: Path, **overrides: object) -> None:
        params: dict[str, object] = {
            "port": 0,
            "spool_dir": tmp_path / "spool",
            "disk_reserve_mb": 0,
            "allowed_aets": "STORESCU,PYSCU",
        }
        params.update(overrides)
        self.settings = NodeSettings(**params)
        self.spool = Spool(self.settings.spool_dir, reserve_bytes=int(self.settings.disk_reserve_mb * 2**20))
        self.journal = Journal(self.settings.journal_path)
        self.seen: list[tuple[int, bool, bool]] = []
        self.receiver = Receiver(self.settings, self.spool, self.journal, on_received=self._seen)
        self.port = self.receiver.start()

    def _seen(self, job_id: int) -> None:
        job = self.journal.get_job(job_id)
        self.seen.append((job_id, job.state == "received", Path(job.path or "").is_file()))

    def close(self) -> None:
        self.receiver.stop(5)
        self.journal.close()


@pytest.fixture
def node(tmp_path: Path):
    n = Node(tmp_path)
    yield n
    n.close()


def _cxr(tmp_path: Path, name: str = "cxr.dcm", **attrs: object) -> Path:
    ds = make_dataset(cxr_like_array(), bits_stored=12, **attrs)
    return write(ds, tmp_path / name)


def _pyscu_store(port: int, ds: pydicom.Dataset, aet: str = "PYSCU") -> int:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def test_echo(node: Node) -> None:
    proc = subprocess.run(
        ["echoscu", "-aet", "STORESCU", "-aec", "AINODE", "-to", "10", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


def test_store_persists_before_success(node: Node, tmp_path: Path) -> None:
    src = _cxr(tmp_path, PatientName="Doe^Jane")
    proc = _storescu(node.port, src, check=False)
    assert proc.returncode == 0, proc.stderr
    # checked inside the handler, before the C-STORE response went out
    assert len(node.seen) == 1 and node.seen[0][1:] == (True, True)
    (job,) = node.journal.jobs()
    original = pydicom.dcmread(src)
    stored = pydicom.dcmread(job.path)
    assert job.sop_instance_uid == original.SOPInstanceUID and job.calling_aet == "STORESCU"
    assert stored.PixelData == original.PixelData and stored.PatientName == "Doe^Jane"
    assert stored.file_meta.TransferSyntaxUID == job.transfer_syntax


@pytest.mark.parametrize(
    ("tool", "options", "propose"),
    [
        ("dcmcrle", [], "-xr"),
        ("dcmcjpls", [], "-xt"),
        ("dcmcjpls", ["+en"], "-xu"),
        ("dcmcjpeg", ["+e1"], "-xs"),
        ("dcmcjpeg", ["+ee"], "-xx"),
    ],
)
def test_compressed_stored_without_reencoding(
    node: Node, tmp_path: Path, tool: str, options: list[str], propose: str
) -> None:
    ds = make_dataset(cxr_like_array(), bits_stored=12)
    compressed = transcode_dcmtk(ds, tool, options, tmp_path)
    ts = compressed.file_meta.TransferSyntaxUID
    assert ts in ACCEPTED_TRANSFER_SYNTAXES
    src = write(compressed, tmp_path / "compressed.dcm")
    proc = _storescu(node.port, src, extra=(propose, "-R"), check=False)
    assert proc.returncode == 0, proc.stderr
    (job,) = node.journal.jobs()
    stored = pydicom.dcmread(job.path)
    assert stored.file_meta.TransferSyntaxUID == ts == job.transfer_syntax
    assert stored.PixelData == compressed.PixelData  # the encapsulated stream, byte for byte


@pytest.mark.parametrize("ts", [JPEG2000Lossless, JPEG2000, "process14"])
def test_other_syntaxes_via_pynetdicom(node: Node, tmp_path: Path, ts: str) -> None:
    ds = make_dataset(cxr_like_array(), bits_stored=12)
    if ts == "process14":  # JPEG lossless, non-hierarchical, process 14 (not SV1)
        ds = transcode_dcmtk(ds, "dcmcjpeg", ["+el"], tmp_path)
    elif ts == JPEG2000:
        ds.compress(ts, j2k_cr=[20])
    else:
        ds.compress(ts)
    assert _pyscu_store(node.port, ds) == 0x0000
    (job,) = node.journal.jobs()
    assert pydicom.dcmread(job.path).PixelData == ds.PixelData


def test_unknown_calling_ae_rejected(node: Node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_node.scp.receive")
    proc = _storescu(node.port, _cxr(tmp_path), aet="INTRUDER", check=False)
    assert proc.returncode != 0
    assert "Association Rejected" in proc.stderr or "rejected" in proc.stderr.lower()
    lines = [r for r in caplog.records if getattr(r, "event", None) == "association_rejected"]
    assert len(lines) == 1
    assert "INTRUDER" in lines[0].getMessage() and "127.0.0.1" in lines[0].getMessage()
    assert node.journal.jobs() == []


def test_any_caller_when_allow_list_empty(tmp_path: Path) -> None:
    n = Node(tmp_path, allowed_aets="")
    try:
        assert _storescu(n.port, _cxr(tmp_path), aet="WHOEVER", check=False).returncode == 0
        assert [j.calling_aet for j in n.journal.jobs()] == ["WHOEVER"]
    finally:
        n.close()


@pytest.mark.parametrize("keep", [False, True])
def test_ct_acknowledged_and_skipped(tmp_path: Path, keep: bool) -> None:
    n = Node(tmp_path, keep_skipped=keep)
    try:
        src = _cxr(tmp_path, sop_class_uid=CT_IMAGE_STORAGE, Modality="CT")
        proc = _storescu(n.port, src, check=False)
        assert proc.returncode == 0, proc.stderr
        (job,) = n.journal.jobs()
        assert job.state == "skipped" and "Modality CT" in (job.reason or "")
        assert n.seen == []  # the analysis worker is not woken
        assert Path(job.path or "").is_file() is keep
    finally:
        n.close()


def test_duplicate_sop_instance_persisted_twice(node: Node, tmp_path: Path) -> None:
    src = _cxr(tmp_path)
    assert _storescu(node.port, src, check=False).returncode == 0
    assert _storescu(node.port, src, check=False).returncode == 0
    jobs = node.journal.jobs()
    assert len(jobs) == 2 and jobs[0].sop_instance_uid == jobs[1].sop_instance_uid
    assert jobs[0].path != jobs[1].path and all(Path(j.path or "").is_file() for j in jobs)


def test_reserve_above_free_space_answers_a700(tmp_path: Path) -> None:
    n = Node(tmp_path, disk_reserve_mb=10**12)
    try:
        ds = pydicom.dcmread(_cxr(tmp_path))
        assert _pyscu_store(n.port, ds) == 0xA700
        assert n.journal.jobs() == [] and not any(n.spool.incoming.iterdir())
    finally:
        n.close()


@pytest.mark.parametrize(
    ("err", "status"), [(errno.ENOSPC, 0xA700), (errno.EDQUOT, 0xA700), (errno.EIO, 0xA701)]
)
def test_write_errors_never_answer_success(
    node: Node,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    err: int,
    status: int,
) -> None:
    real = spool_mod.write_atomic

    def failing(path: Path, data: bytes) -> None:
        raise OSError(err, f"simulated {errno.errorcode[err]}", str(path))

    monkeypatch.setattr(spool_mod, "write_atomic", failing)
    ds = pydicom.dcmread(_cxr(tmp_path))
    caplog.set_level(logging.ERROR, logger="dicom_node.scp.receive")
    assert _pyscu_store(node.port, ds) == status
    assert node.journal.jobs() == []
    assert any(
        r.sop_instance_uid == ds.SOPInstanceUID for r in caplog.records if hasattr(r, "sop_instance_uid")
    )
    monkeypatch.setattr(spool_mod, "write_atomic", real)
    assert _pyscu_store(node.port, ds) == 0x0000  # recovers once the disk is fine


def test_journal_disk_full_answers_a700(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    def full(**_: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(node.journal, "add_job", full)
    ds = pydicom.dcmread(_cxr(tmp_path))
    assert _pyscu_store(node.port, ds) == 0xA700
    assert not any(node.spool.incoming.iterdir())  # the unacknowledged file was removed


def test_stop_refuses_new_associations(tmp_path: Path) -> None:
    n = Node(tmp_path)
    port = n.port
    n.close()
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert not assoc.is_established


def test_uid_distinct_instances(node: Node, tmp_path: Path) -> None:
    files = [_cxr(tmp_path, name=f"f{i}.dcm", sop_instance_uid=generate_uid()) for i in range(3)]
    assert _storescu(node.port, *files, check=False).returncode == 0
    assert len({j.sop_instance_uid for j in node.journal.jobs()}) == 3


def test_scp_switches_nagle_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's SCP sockets carry TCP_NODELAY (pynetdicom leaves Nagle on; see dicom_node/tcp_options)."""
    seen: list[int] = []
    real = Receiver._on_store

    def spy(self: Receiver, event: evt.Event) -> object:
        seen.append(event.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return real(self, event)

    monkeypatch.setattr(Receiver, "_on_store", spy)
    n = Node(tmp_path)
    try:
        assert _pyscu_store(n.port, pydicom.dcmread(_cxr(tmp_path))) == 0
    finally:
        n.close()
    assert seen and all(seen), seen


def _deflated_file(tmp_path: Path, inflated_mb: int) -> Path:
    """A Deflated Explicit VR Little Endian CXR followed by a private OB element of zeros, so that
    the data set inflates to about ``inflated_mb`` MiB (zeros deflate ~1000:1)."""
    import io
    import zlib

    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = make_dataset(cxr_like_array(64, 64, bits_stored=12, seed=3), bits_stored=12)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    n = inflated_mb * 2**20
    creator = (
        b"CXRTEST "  # (7FE1,0010) LO private creator, then (7FE1,1010) OB: after Pixel Data in tag order
    )
    tail = b"\xe1\x7f\x10\x00LO" + len(creator).to_bytes(2, "little") + creator
    tail += b"\xe1\x7f\x10\x10OB\x00\x00" + n.to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(buf.getvalue() + tail)]
    zeros = b"\x00" * 2**20
    parts += [deflater.compress(zeros) for _ in range(inflated_mb)]
    parts.append(deflater.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    out.write(b"".join(parts))
    path = tmp_path / f"deflated-{inflated_mb}.dcm"
    path.write_bytes(out.getvalue())
    return path


@pytest.mark.parametrize("chunked", [True, False])
def test_deflate_bomb_is_refused_before_it_is_inflated(
    tmp_path: Path, chunked: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydicom inflates a deflated data set whole before parsing it (1.5 MB -> 3 GB, 19 s): the
    SCP measures it first and answers 0xC000 beyond max_inflated_mb, with one log line."""
    from pynetdicom import _config

    bomb = _deflated_file(tmp_path, 64)
    small = _deflated_file(tmp_path, 1)
    assert bomb.stat().st_size < 200_000
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the deflated bytes as they are
    n = Node(tmp_path, max_inflated_mb=8, chunked_receive=chunked)
    try:
        assert n.receiver.chunked_receive is chunked
        with caplog.at_level(logging.ERROR, logger="dicom_node.scp.receive"):
            assert _pyscu_store_file(n.port, bomb) == 0xC000
        refused = [r for r in caplog.records if "inflates to more than" in r.getMessage()]
        assert len(refused) == 1 and "max_inflated_mb = 8 MiB" in refused[0].getMessage()
        assert n.journal.counts() == {}
        assert not [p for p in n.spool.incoming.iterdir()]  # nothing staged is left behind
        assert _pyscu_store_file(n.port, small) == 0  # under the limit: stored as usual
        assert n.journal.counts() == {"job.received": 1}
    finally:
        n.close()


def _pyscu_store_file(port: int, path: Path) -> int:
    """C-STORE of a file as stored (its own transfer syntax) from a pynetdicom SCU."""
    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()
