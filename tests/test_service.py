"""NodeService end to end: dcmtk storescu -> node -> dcmtk storescp, restart/resume, worker logic,
and one run of the real ``cxr-node serve`` with the shipped bundles."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicom_factory import cxr_like_array, have_dcmtk, make_dataset, write
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from service_helpers import (
    CT_IMAGE_STORAGE,
    SC_STORAGE,
    SR_3D,
    FakeAnalyser,
    StoreSCP,
    _cxr,
    _delivered,
    _settings,
    _storescu,
    _wait,
)
from tls_certs import free_port

from dicom_node.service import NodeService
from models.errors import ImageDecodeError

REPO = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not have_dcmtk("storescu", "storescp", "echoscu"), reason="dcmtk not installed"),
]


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[StoreSCP]:
    d = StoreSCP(tmp_path)
    yield d
    d.stop()


# ------------------------------------------------------------------------------- tests
def test_pipeline_with_real_results_writers(tmp_path: Path, dest: StoreSCP) -> None:
    dest.start()
    fake = FakeAnalyser()
    src = [_cxr(tmp_path, i) for i in range(2)]
    ct = _cxr(tmp_path, 9, sop_class_uid=CT_IMAGE_STORAGE, Modality="CT")
    with NodeService(_settings(tmp_path, dest), analyser=fake) as svc:
        assert svc.ready
        _storescu(svc.port, *src, ct)
        assert _wait(_delivered(svc, 2), 30)
        counts = svc.journal.counts()
        assert counts == {"job.delivered": 2, "job.skipped": 1, "outbox.delivered": 4}
        # delivered -> spool files removed (keep_delivered=False), right after the journal commit
        assert _wait(lambda: not any(svc.spool.incoming.iterdir()) and not any(svc.spool.outbox.iterdir()), 5)
    assert fake.submitted == 2  # the CT was not analysed
    results = dest.files()
    assert sorted(str(r.SOPClassUID) for r in results) == [SC_STORAGE, SC_STORAGE, SR_3D, SR_3D]
    studies = {str(pydicom.dcmread(f).StudyInstanceUID) for f in src}
    assert {str(r.StudyInstanceUID) for r in results} == studies
    assert all(r.Manufacturer == "cxr-ai-node" for r in results)


def test_result_workers_and_chunked_receive_settings_are_used(tmp_path: Path, dest: StoreSCP) -> None:
    """CXR_NODE_RESULT_WORKERS=3 / CXR_NODE_CHUNKED_RECEIVE=false reach the worker and the receiver,
    and the node still delivers with both."""
    dest.start()
    src = [_cxr(tmp_path, i) for i in range(2)]
    settings = _settings(tmp_path, dest, result_workers=3, chunked_receive=False)
    with NodeService(settings, analyser=FakeAnalyser()) as svc:
        assert svc.worker is not None and svc.worker.result_workers == 3
        assert svc.receiver is not None and svc.receiver.chunked_receive is False
        _storescu(svc.port, *src)
        assert _wait(_delivered(svc, 2), 30)
    with NodeService(_settings(tmp_path / "b", dest, result_workers=1), analyser=FakeAnalyser()) as svc:
        assert svc.worker is not None and len(svc.worker.result_pool_pids) == 1
        assert svc.receiver is not None and svc.receiver.chunked_receive is True


def test_duplicate_receive_gives_same_results(tmp_path: Path, dest: StoreSCP) -> None:
    dest.start()
    src = _cxr(tmp_path, 1)
    with NodeService(_settings(tmp_path, dest), analyser=FakeAnalyser()) as svc:
        _storescu(svc.port, src)
        assert _wait(_delivered(svc, 1), 30)
        _storescu(svc.port, src)
        assert _wait(_delivered(svc, 2), 30)
        jobs = svc.journal.jobs()
        uids = [sorted(o.sop_instance_uid for o in svc.journal.outbox(job_id=j.id)) for j in jobs]
    assert len(jobs) == 2 and jobs[0].sop_instance_uid == jobs[1].sop_instance_uid
    assert uids[0] == uids[1] and len(uids[0]) == 2


def test_restart_resumes_unanalysed_and_undelivered(tmp_path: Path, dest: StoreSCP) -> None:
    settings = _settings(tmp_path, dest)
    src = [_cxr(tmp_path, i) for i in range(2)]
    # 1) received, analysis never completes before the stop
    gate = threading.Event()
    held = FakeAnalyser(gate=gate)
    svc = NodeService(settings, analyser=held).start()
    _storescu(svc.port, *src)
    assert _wait(lambda: held.submitted == 2, 10)
    svc.stop(timeout=0.5)
    gate.set()
    held.close()
    # 2) analysed, destination still down
    svc = NodeService(settings, analyser=FakeAnalyser()).start()
    assert _wait(lambda: svc.journal.counts().get("job.analysed") == 2, 20)
    assert _wait(lambda: all(o.attempts >= 1 for o in svc.journal.outbox()), 10)
    svc.stop()
    assert dest.files() == []
    # 3) destination up: a fresh service on the same spool delivers everything
    dest.start()
    with NodeService(settings, analyser=FakeAnalyser()) as svc:
        assert _wait(_delivered(svc, 2), 30)
    assert len(dest.files()) == 4


def test_inflight_window_is_twice_the_batch(tmp_path: Path, dest: StoreSCP) -> None:
    dest.start()
    gate = threading.Event()
    fake = FakeAnalyser(gate=gate)
    files = [_cxr(tmp_path, i) for i in range(7)]
    with NodeService(_settings(tmp_path, dest, batch_size=2), analyser=fake) as svc:
        _storescu(svc.port, *files)
        assert _wait(lambda: fake.submitted == 4, 10)
        time.sleep(0.5)
        assert fake.submitted == 4 and fake.max_inflight == 4
        gate.set()
        assert _wait(_delivered(svc, 7), 30)
    assert fake.max_inflight <= 4


def test_decode_error_fails_job_and_retries_bounded(tmp_path: Path, dest: StoreSCP) -> None:
    dest.start()
    bad_uid, flaky_uid, broken_uid = generate_uid(), generate_uid(), generate_uid()
    calls: dict[str, int] = {}

    def fail(ds: Dataset, _n: int) -> BaseException | None:
        uid = str(ds.SOPInstanceUID)
        calls[uid] = calls.get(uid, 0) + 1
        if uid == bad_uid:
            return ImageDecodeError(uid, "corrupt JPEG stream")
        if uid == flaky_uid and calls[uid] < 3:
            return RuntimeError("CUDA hiccup")
        if uid == broken_uid:
            return RuntimeError("always broken")
        return None

    files = [
        write(make_dataset(cxr_like_array(64, 64, seed=i), sop_instance_uid=u), tmp_path / f"f{i}.dcm")
        for i, u in enumerate((bad_uid, flaky_uid, broken_uid))
    ]
    with NodeService(
        _settings(tmp_path, dest, analysis_max_attempts=3), analyser=FakeAnalyser(fail=fail)
    ) as svc:
        _storescu(svc.port, *files)
        j = svc.journal
        assert _wait(lambda: j.counts().get("job.failed") == 2 and j.counts().get("job.delivered") == 1, 30)
        by_uid = {x.sop_instance_uid: x for x in j.jobs()}
        # each job that failed for good queued one "not evaluated" SR (its reason category as code)
        status = {u: j.outbox(job_id=by_uid[u].id) for u in (bad_uid, broken_uid)}
    assert calls[bad_uid] == 1 and "corrupt JPEG stream" in (by_uid[bad_uid].reason or "")
    assert calls[flaky_uid] == 3 and by_uid[flaky_uid].state == "delivered"
    assert calls[broken_uid] == 3 and "gave up after 3 attempts" in (by_uid[broken_uid].reason or "")
    for uid, code in ((bad_uid, "NE-UNDECODABLE"), (broken_uid, "NE-FAILED")):
        (row,) = status[uid]
        assert row.sop_class_uid == SR_3D and row.destination == dest.destination
        sr = pydicom.dcmread(row.path)
        assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[
            0].ReferencedSOPInstanceUID == uid  # fmt: skip
        assert code in str(sr.ContentSequence)


# --------------------------------------------------------------- real engine, real CLI
@pytest.mark.slow
def test_cxr_node_serve_with_real_engine(tmp_path: Path, dest: StoreSCP) -> None:
    """``cxr-node serve`` as a process with the shipped bundles on CPU: echo, store a CXR with a
    distinctive patient name/ID and a corrupt one, SR+SC arrive at storescp, the corrupt one is
    failed, SIGTERM stops it cleanly, and the JSON log never contains the patient name/ID."""
    dest.start()
    port = free_port()
    good = make_dataset(
        cxr_like_array(384, 320, seed=3),
        bits_stored=12,
        PatientName="Zyxwv^Qtrsp",
        PatientID="PID-987654321",
        sop_instance_uid=generate_uid(),
    )
    bad = make_dataset(cxr_like_array(384, 320, seed=4), bits_stored=12, sop_instance_uid=generate_uid())
    bad.PixelData = bad.PixelData[:1000]
    files = [write(good, tmp_path / "good.dcm"), write(bad, tmp_path / "bad.dcm")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    env.update(
        {
            "CXR_NODE_PORT": str(port),
            "CXR_NODE_SPOOL_DIR": str(tmp_path / "spool"),
            "CXR_NODE_DISK_RESERVE_MB": "0",
            "CXR_NODE_DESTINATIONS": dest.destination,
            "CXR_NODE_ALLOWED_AETS": "STORESCU,ECHOSCU",
            "CXR_NODE_BUNDLES_DIR": str(REPO / "monai_bundles"),
            "CXR_NODE_DEVICE": "cpu",
            "CXR_NODE_BATCH_SIZE": "2",
            "CXR_NODE_LOG_FORMAT": "json",
            "CXR_NODE_LOG_LEVEL": "DEBUG",
            "CXR_NODE_POLL_INTERVAL_S": "0.1",
            "OMP_NUM_THREADS": "2",
            "PYTHONPATH": str(REPO),
        }
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "serve"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def events() -> list[dict]:
            out = []
            for line in log_path.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
            return out

        assert _wait(
            lambda: any(e.get("event") == "ready" for e in events()) or proc.poll() is not None, 240, 0.5
        ), log_path.read_text()[-3000:]
        assert proc.poll() is None, log_path.read_text()[-3000:]
        echo = subprocess.run(
            ["echoscu", "-aet", "ECHOSCU", "-aec", "AINODE", "-to", "10", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert echo.returncode == 0, echo.stderr
        _storescu(port, *files)
        assert _wait(
            lambda: (
                len(list(dest.out.iterdir())) >= 2
                and any(
                    e.get("event") == "failed" and e.get("sop_instance_uid") == bad.SOPInstanceUID
                    for e in events()
                )
            ),
            180,
            0.5,
        ), log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    results = dest.files()
    assert sorted(str(r.SOPClassUID) for r in results) == [SC_STORAGE, SR_3D, SR_3D]
    # the corrupt CXR leaves a visible status: its "not evaluated" SR, in its study
    (status,) = [r for r in results if r.StudyInstanceUID == bad.StudyInstanceUID]
    assert str(status.SOPClassUID) == SR_3D and status.SOPInstanceUID != bad.SOPInstanceUID
    assert "NE-UNDECODABLE" in str(status.ContentSequence)  # reason category "image could not be decoded"
    good_results = [r for r in results if r.StudyInstanceUID == good.StudyInstanceUID]
    assert len(good_results) == 2
    assert all(
        str(r.PatientID) == "PID-987654321" for r in good_results
    )  # results carry the patient, the log must not
    text = log_path.read_text()
    assert "Zyxwv" not in text and "Qtrsp" not in text and "987654321" not in text
    evs = events()
    names = {e.get("event") for e in evs}
    assert {"starting", "ready", "received", "analysed", "delivered", "failed", "stopped"} <= names
    analysed = [e for e in evs if e.get("event") == "analysed"]
    assert (
        analysed[0]["sop_instance_uid"] == good.SOPInstanceUID
        and 0.0 <= analysed[0]["probability"] <= 1
    )
    assert all("ms" in e for e in evs if e.get("event") in ("received", "analysed", "delivered"))


_CRASHY_NODE = """
import sys, threading, time
sys.path.insert(0, {tests!r})
from service_helpers import FakeAnalyser
from dicom_node.service import NodeService
from dicom_node.settings import NodeSettings
settings = NodeSettings(port=0, spool_dir={spool!r}, disk_reserve_mb=0, allowed_aets="STORESCU",
                        destinations={dest!r}, poll_interval_s=0.05)
svc = NodeService(settings, analyser=FakeAnalyser(gate=threading.Event())).start()  # analysis never finishes
print(svc.port, flush=True)
time.sleep(120)
"""


def test_acknowledged_instances_survive_sigkill(tmp_path: Path, dest: StoreSCP) -> None:
    """storescu gets success, the node process is SIGKILLed before analysing, a new node on the
    same spool analyses and delivers everything."""
    spool = tmp_path / "spool"
    code = _CRASHY_NODE.format(tests=str(Path(__file__).parent), spool=str(spool), dest=dest.destination)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        files = [_cxr(tmp_path, i) for i in range(3)]
        _storescu(port, *files)  # all acknowledged
    finally:
        proc.kill()  # SIGKILL: no graceful anything
        proc.wait(10)
    dest.start()
    with NodeService(_settings(tmp_path, dest), analyser=FakeAnalyser()) as svc:
        assert _wait(_delivered(svc, 3), 30)
    delivered_sources = {str(r.StudyInstanceUID) for r in dest.files()}
    assert delivered_sources == {str(pydicom.dcmread(f).StudyInstanceUID) for f in files}
    assert len(dest.files()) == 6


def test_start_failure_releases_everything(tmp_path: Path, dest: StoreSCP) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        svc = NodeService(_settings(tmp_path, dest, port=port), analyser=FakeAnalyser())
        with pytest.raises(OSError):
            svc.start()
        assert not svc.ready
    # the journal was closed and nothing keeps running: a new service can use the same spool
    with NodeService(_settings(tmp_path, dest), analyser=FakeAnalyser()) as again:
        assert again.ready
