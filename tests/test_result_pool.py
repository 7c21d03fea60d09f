"""Result building off the engine's GIL: engine-decoded image reuse, process pool vs thread path, pool crash."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import CancelledError, Future
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _results_data import findings_for, rsna_source, three_boxes

from dicom_node.pipeline.analyse import AnalysisWorker, _build_in_pool, joined_builds
from dicom_node.results.build import (
    EncodedResult,
    build_encoded_results,
    build_results,
    findings_from_json,
    findings_to_dict,
)
from dicom_node.results.sc.build import build_sc
from dicom_node.storage.journal import Journal
from dicom_node.storage.spool import Spool
from models.findings import Findings
from models.imaging.dicom_image import load_source_image

BUNDLES = Path(__file__).resolve().parent.parent / "monai_bundles"
#: set by highdicom from the clock at build time; may differ between two builds
_CLOCK_KEYWORDS = ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
                   "DateOfSecondaryCapture", "TimeOfSecondaryCapture", "ContributionDateTime")  # fmt: skip


def _drop_clock(ds: pydicom.Dataset) -> None:
    for kw in _CLOCK_KEYWORDS:
        if kw in ds:
            del ds[kw]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _drop_clock(item)


class FakeAnalyser:
    """Answers every submit at once with analysed findings (three boxes) for the instance."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted = 0

    def submit(self, ds: pydicom.Dataset) -> Future[Findings]:
        with self.lock:
            self.submitted += 1
        f: Future[Findings] = Future()
        f.set_result(findings_for(ds, three_boxes(int(ds.Rows), int(ds.Columns))))
        return f


def _spool_jobs(tmp_path: Path, n: int, size: int) -> tuple[Spool, Journal]:
    spool = Spool(tmp_path / "spool")
    journal = Journal(tmp_path / "spool" / "journal.sqlite3")
    for i in range(n):
        ds = rsna_source(size, seed=100 + i)
        path = spool.incoming / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        journal.add_job(sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                        transfer_syntax=str(ds.file_meta.TransferSyntaxUID), calling_aet="T", path=str(path))  # fmt: skip
    return spool, journal


def _run_worker(worker: AnalysisWorker, journal: Journal, n: int, timeout: float = 120.0) -> None:
    worker.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(journal.jobs(state="analysed")) < n:
            time.sleep(0.05)
    finally:
        worker.stop(10)
    assert len(journal.jobs(state="analysed")) == n, journal.counts()


def _outbox_contents(journal: Journal) -> dict[str, bytes]:
    """SOP Instance UID -> encoded dataset without the clock-dependent attributes."""
    out = {}
    for item in journal.outbox():
        ds = pydicom.dcmread(item.path)
        _drop_clock(ds)
        out[str(ds.SOPInstanceUID)] = ds
    return out


def test_findings_dict_round_trip_is_exact() -> None:
    src = rsna_source(256, seed=3)
    f = findings_for(src, three_boxes(256, 256))
    assert findings_from_json(findings_to_dict(f)) == f
    # Findings.to_json (rounded) is accepted too
    g = findings_from_json(f.to_json())
    assert g.sop_instance_uid == f.sop_instance_uid and len(g.boxes) == len(f.boxes)
    assert g.boxes[0].x == pytest.approx(f.boxes[0].x, abs=1e-3)
    with pytest.raises(TypeError, match="list"):
        findings_from_json([])  # type: ignore[arg-type]


def test_sc_from_engine_image_equals_sc_from_redecode(tmp_path: Path) -> None:
    from models.inference.engine import InferenceEngine, source_image_of

    src = rsna_source(256, seed=11)
    with InferenceEngine(BUNDLES, device="cpu", max_batch_size=2, max_wait_ms=5.0, num_threads=2) as eng:
        plain = eng.submit(src)
        kept = eng.submit(src, keep_image=True)
        findings = kept.result(timeout=120)
        plain.result(timeout=120)
    assert source_image_of(plain) is None  # nothing kept unless asked
    image = source_image_of(kept)
    assert image is not None and image.sop_instance_uid == src.SOPInstanceUID
    redecoded = load_source_image(src)
    np.testing.assert_array_equal(image.pixels, redecoded.pixels)
    sc_engine = build_sc(src, findings, image=image)
    sc_decode = build_sc(src, findings)
    np.testing.assert_array_equal(sc_engine.pixel_array, sc_decode.pixel_array)
    assert sc_engine.SOPInstanceUID == sc_decode.SOPInstanceUID


def test_build_encoded_results_matches_build_results(tmp_path: Path) -> None:
    src = rsna_source(256, seed=12)
    path = tmp_path / "src.dcm"
    src.save_as(path, enforce_file_format=True)
    f = findings_for(src, three_boxes(256, 256))
    encoded = build_encoded_results(str(path), findings_to_dict(f), load_source_image(src))
    direct = build_results(src, f)
    assert [e.sop_instance_uid for e in encoded] == [str(d.SOPInstanceUID) for d in direct]
    sc = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encoded[1].data))
    np.testing.assert_array_equal(sc.pixel_array, direct[1].pixel_array)


def _comparable(data: bytes) -> dict:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    timestamps = ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime")
    for kw in (*timestamps, "DateOfSecondaryCapture", "TimeOfSecondaryCapture"):
        if kw in ds:
            delattr(ds, kw)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    return ds.to_json_dict()


def test_header_only_source_read_gives_the_same_results(tmp_path: Path) -> None:
    """With the engine's image, the pool reads the source without pixels: the SR and SC must be
    exactly those built from the full source (dates and times aside)."""
    src = rsna_source(256, seed=13)
    path = tmp_path / "src.dcm"
    src.save_as(path, enforce_file_format=True)
    f = findings_for(src, three_boxes(256, 256))
    header_only = build_encoded_results(str(path), findings_to_dict(f), load_source_image(src))
    full = build_encoded_results(str(path), findings_to_dict(f), None)
    assert len(header_only) == len(full) == 2
    for a, b in zip(header_only, full, strict=True):
        assert _comparable(a.data) == _comparable(b.data)


def test_pool_results_do_not_depend_on_the_pool_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    n = 4
    contents = []
    for mode, workers in (("one", 1), ("two", 2)):
        spool, journal = _spool_jobs(tmp_path / mode, n, 256)
        worker = AnalysisWorker(journal, spool, FakeAnalyser(), destinations=["pacs"],
                                batch_size=2, poll_interval_s=0.05, result_workers=workers)  # fmt: skip
        assert worker.result_workers == workers
        _run_worker(worker, journal, n)
        contents.append(_outbox_contents(journal))
        assert len(journal.outbox(state="pending")) == 2 * n  # SR + SC queued for the destination
        journal.close()
    # the SC builder's log lines written in the pool processes reach the node's handlers
    from_pool = [
        r for r in caplog.records if r.getMessage() == "built SC overlay" and r.process != os.getpid()
    ]
    assert len(from_pool) == 2 * n
    one, two = contents
    assert set(one) == set(two) and len(one) == 2 * n
    for uid, ds in one.items():
        other = two[uid]
        assert ds == other, uid  # every element equal, pixel data and SR content tree included
        if "PixelData" in ds:
            np.testing.assert_array_equal(ds.pixel_array, other.pixel_array)


def one_marker_result(source_path: str, findings_json: dict, image: object) -> list[EncodedResult]:
    """An injected builder (runs in the pool process): one small result per source."""
    src = pydicom.dcmread(source_path, stop_before_pixels=True)
    return [EncodedResult(f"{src.SOPInstanceUID}.9", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.1.2.1",
                          f"built in {os.getpid()}".encode())]  # fmt: skip


def test_one_result_path_validation_and_injected_builder(tmp_path: Path) -> None:
    spool, journal = _spool_jobs(tmp_path, 2, 64)
    for bad in (0, -1):  # no thread mode: the pool is the one result-building path
        with pytest.raises(ValueError, match="result_workers"):
            AnalysisWorker(journal, spool, FakeAnalyser(), destinations=[], result_workers=bad)
    worker = AnalysisWorker(journal, spool, FakeAnalyser(), destinations=["pacs"], batch_size=2,
                            poll_interval_s=0.05, build_encoded=one_marker_result, result_workers=1)  # fmt: skip
    _run_worker(worker, journal, 2)
    rows = journal.outbox(state="pending")
    journal.close()
    assert len(rows) == 2
    data = {Path(r.path).read_bytes() for r in rows}
    assert len(data) == 1 and data != {f"built in {os.getpid()}".encode()}  # built in the pool process


def test_killed_pool_process_retries_its_job_and_node_keeps_going(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 6
    spool, journal = _spool_jobs(tmp_path, n, 1024)  # 1024² sources: each build takes a while
    worker = AnalysisWorker(journal, spool, FakeAnalyser(), destinations=[], batch_size=2,
                            max_attempts=3, poll_interval_s=0.05, result_workers=1)  # fmt: skip
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not worker._building:
            time.sleep(0.005)
        assert worker._building, "no job reached the result pool"
        old_pids = worker.result_pool_pids
        assert old_pids
        for pid in old_pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(journal.jobs(state="analysed")) < n:
            time.sleep(0.05)
        new_pids = worker.result_pool_pids
    finally:
        worker.stop(10)
    jobs = journal.jobs()
    journal.close()
    assert [j.state for j in jobs] == ["analysed"] * n, [(j.state, j.reason) for j in jobs]
    assert new_pids and not set(new_pids) & set(old_pids)  # the pool was recreated
    assert sum(j.attempts for j in jobs) >= 1  # the killed job was retried, not lost
    assert any(getattr(r, "event", None) == "result_pool_broken" for r in caplog.records)


def test_pool_processes_exit_when_the_node_process_dies(tmp_path: Path) -> None:
    """A SIGKILLed node must not leave its result-building processes behind."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from dicom_node.pipeline.analyse import AnalysisWorker\n"
        "from dicom_node.storage.journal import Journal\n"
        "from dicom_node.storage.spool import Spool\n"
        "class A:\n"
        "    def submit(self, ds): raise RuntimeError('unused')\n"
        "if __name__ == '__main__':\n"
        "    root = Path(sys.argv[1])\n"
        "    w = AnalysisWorker(Journal(root / 'j.sqlite3'), Spool(root / 'spool'), A(), destinations=[],\n"
        "                       result_workers=2)\n"
        "    w.start()\n"
        "    deadline = time.monotonic() + 60\n"
        "    while len(w.result_pool_pids) < 2 and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    print(' '.join(map(str, w.result_pool_pids)), flush=True)\n"
        "    time.sleep(120)\n"
    )
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})  # fmt: skip
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, 0)  # alive
    finally:
        proc.kill()
        proc.wait(10)

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split()[2] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), f"pool processes {pids} outlived the node"


def test_sr_and_sc_of_an_image_are_two_pool_jobs_stored_together(tmp_path: Path) -> None:
    """With two result processes an analysed image's SR and SC are submitted as two jobs (built at
    the same time); the job is marked analysed once, with its SR queued before its SC."""
    spool, journal = _spool_jobs(tmp_path, 2, 128)
    worker = AnalysisWorker(journal, spool, FakeAnalyser(), destinations=["pacs"], batch_size=2,
                            poll_interval_s=0.05, result_workers=2)  # fmt: skip
    submitted: list[tuple[str, ...]] = []
    real_new_pool = worker._new_pool

    def spied_pool() -> object:
        pool = real_new_pool()
        real_submit = pool.submit

        def submit(fn: object, *args: object) -> object:
            if fn is _build_in_pool:
                submitted.append(tuple(args[5]) if len(args) > 5 else ("sr", "sc"))  # (build_encoded, path, findings, image, level, parts)
            return real_submit(fn, *args)

        pool.submit = submit  # type: ignore[method-assign]
        return pool

    worker._new_pool = spied_pool  # type: ignore[method-assign]
    _run_worker(worker, journal, 2)
    assert sorted(submitted) == [("sc",), ("sc",), ("sr",), ("sr",)]
    for job in journal.jobs(state="analysed"):
        rows = sorted(journal.outbox(job_id=job.id), key=lambda o: o.id)
        assert [str(pydicom.dcmread(o.path, stop_before_pixels=True).Modality) for o in rows] == ["SR", "OT"]
    journal.close()


def test_joined_builds_keeps_order_and_fails_with_the_first_failing_part() -> None:
    a, b = Future(), Future()
    joined = joined_builds([a, b])
    b.set_result((["sc"], ["log sc"]))
    assert not joined.done()  # waits for every part
    a.set_result((["sr"], ["log sr"]))
    assert joined.result(timeout=1) == (["sr", "sc"], ["log sr", "log sc"])
    c, d = Future(), Future()
    failed = joined_builds([c, d])
    d.set_exception(ValueError("sc broke"))
    c.set_result((["sr"], []))
    with pytest.raises(ValueError, match="sc broke"):
        failed.result(timeout=1)
    e, f = Future(), Future()
    cancelled = joined_builds([e, f])
    e.cancel()
    f.set_result(([], []))
    with pytest.raises(CancelledError):
        cancelled.result(timeout=1)
