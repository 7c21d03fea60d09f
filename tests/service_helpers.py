"""Shared by the NodeService tests (test_service, test_node_health, test_node_tls, test_logging):
a fake engine, a dcmtk storescp destination, settings and small helpers. A helper module rather
than imports from test_service, so that each test module stands on its own."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from dicom_factory import cxr_like_array, make_dataset, write
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from tls_certs import free_port

from dicom_node.scp.receive import Receiver
from dicom_node.service import NodeService
from dicom_node.settings import NodeSettings
from dicom_node.storage.journal import Journal
from dicom_node.storage.spool import Spool
from models.findings import RSNA_CLASSES, Box, FindingCode, Findings, ModelInfo

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


class FakeAnalyser:
    """Stands in for the engine in worker-logic tests: asynchronous futures, results computed from
    the pixels (so equal inputs give equal findings), optional gate to hold results, optional
    scripted failures."""

    models = (ModelInfo("fake_classification", "0.0.1"), ModelInfo("fake_detection", "0.0.1"))

    def __init__(
        self,
        gate: threading.Event | None = None,
        fail: Callable[[Dataset, int], BaseException | None] | None = None,
    ):
        self.gate = gate
        self.fail = fail
        self.submitted = 0
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=16)

    def submit(self, ds: Dataset) -> Future[Findings]:
        with self._lock:
            self.submitted += 1
            n = self.submitted
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        return self._pool.submit(self._run, ds, n)

    def _run(self, ds: Dataset, n: int) -> Findings:
        try:
            if self.gate is not None:
                self.gate.wait(60)
            exc = self.fail(ds, n) if self.fail else None
            if exc is not None:
                raise exc
            px = np.asarray(ds.pixel_array, dtype=np.float64)
            p = float(px.mean() / max(px.max(), 1.0))
            return Findings(
                sop_instance_uid=str(ds.SOPInstanceUID),
                analysed=True,
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                class_probabilities={RSNA_CLASSES[0]: 1 - p, RSNA_CLASSES[1]: 0.0, RSNA_CLASSES[2]: p},
                probability=p,
                finding=FindingCode("112001", "DCM", "Opacity"),
                threshold=0.5,
                boxes=(Box(4.0, 5.0, ds.Columns / 3, ds.Rows / 4, round(p, 3)),),
                detection_threshold=0.0,
                box_gating="all",  # a box whatever p is: the worker tests need results with boxes
                models=self.models,
            )
        finally:
            with self._lock:
                self.inflight -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _wait(pred: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class StoreSCP:
    """A dcmtk storescp destination; start() may be called late (destination down at first)."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.out = tmp_path / "destination"
        self.out.mkdir()
        self.proc: subprocess.Popen | None = None

    def start(self) -> StoreSCP:
        self.proc = subprocess.Popen(
            ["storescp", "-aet", "DEST", "-od", str(self.out), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert _wait(lambda: _port_open(self.port), 10)
        return self

    def files(self) -> list[Dataset]:
        return [pydicom.dcmread(f) for f in sorted(self.out.iterdir())]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def destination(self) -> str:
        return f"DEST@127.0.0.1:{self.port}"


def delivery_settings(tmp_path: Path, dest: str, **overrides: object) -> NodeSettings:
    """Settings of a spool + journal + Deliverer under ``tmp_path`` delivering to ``dest``, with short
    retries and polls (the delivery tests' common base)."""
    params: dict[str, object] = {
        "spool_dir": tmp_path / "spool",
        "destinations": dest,
        "retry_base_s": 0.3,
        "retry_max_s": 1.0,
        "permanent_retry_s": 1.0,
        "poll_interval_s": 0.05,
        "network_timeout_s": 5,
        "ae_title": "AINODE",
    }
    params.update(overrides)
    return NodeSettings(**params)  # type: ignore[arg-type]


def _settings(tmp_path: Path, dest: StoreSCP, **overrides: object) -> NodeSettings:
    params: dict[str, object] = {
        "port": 0,
        "http_port": 0,  # several nodes run at once in the suite: no fixed health port
        "spool_dir": tmp_path / "spool",
        "disk_reserve_mb": 0,
        "allowed_aets": "STORESCU",
        "destinations": dest.destination,
        "batch_size": 2,
        "poll_interval_s": 0.05,
        "retry_base_s": 0.2,
        "retry_max_s": 0.5,
        "network_timeout_s": 5,
    }
    params.update(overrides)
    return NodeSettings(**params)


def _storescu(
    port: int, *files: Path, aet: str = "STORESCU", extra: tuple[str, ...] = (), check: bool = True
) -> subprocess.CompletedProcess:
    """dcmtk storescu of ``files`` to AINODE@127.0.0.1:``port``; with ``check`` it must succeed."""
    cmd = [
        "storescu",
        "-aet",
        aet,
        "-aec",
        "AINODE",
        "-to",
        "10",
        "-ta",
        "10",
        "-td",
        "10",
        *extra,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _cxr(tmp_path: Path, i: int, **attrs: object) -> Path:
    ds = make_dataset(
        cxr_like_array(128, 112, seed=i), bits_stored=12, sop_instance_uid=generate_uid(), **attrs
    )
    return write(ds, tmp_path / f"cxr{i}.dcm")


def _delivered(svc: NodeService, n: int) -> Callable[[], bool]:
    return lambda: svc.journal.counts().get("job.delivered", 0) >= n  # type: ignore[union-attr]


@contextmanager
def running_receiver(spool_dir: Path, **overrides: object) -> Iterator[tuple[Receiver, NodeSettings]]:
    """The node's SCP alone (``Receiver``, no worker) on a free loopback port, stopped on exit."""
    settings = NodeSettings(spool_dir=spool_dir, destinations=[], port=0, bind="127.0.0.1", **overrides)
    journal = Journal(settings.journal_path)
    receiver = Receiver(settings, Spool(settings.spool_dir), journal)
    receiver.start()
    try:
        yield receiver, settings
    finally:
        receiver.stop(5)
        journal.close()


@contextmanager
def verification_association(receiver: Receiver, settings: NodeSettings) -> Iterator[Association]:
    """An established association with ``receiver`` proposing Verification only, released on exit."""
    scu = AE(ae_title="SCU")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", receiver.port, ae_title=settings.ae_title)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()
