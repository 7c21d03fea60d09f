"""The decoded image handed to the result processes in shared memory (dicom_node/pipeline/shared_image.py)."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _results_data import findings_for, three_boxes
from test_result_pool import _outbox_contents, _run_worker, _spool_jobs

from dicom_node.node_metrics import NodeMetrics
from dicom_node.pipeline import shared_image
from dicom_node.pipeline.analyse import AnalysisWorker
from dicom_node.pipeline.shared_image import SharedImageRef, SharedImages, attached
from models.findings import Findings
from models.imaging.dicom_image import SourceImage, load_source_image
from models.inference.engine import _IMAGE_ATTR

SHM = Path("/dev/shm")


def _image(rows: int = 300, columns: int = 200, seed: int = 0) -> SourceImage:
    pixels = np.random.default_rng(seed).random((rows, columns), dtype=np.float32)
    return SourceImage(pixels=pixels, rows=rows, columns=columns, sop_instance_uid="1.2.3.4",
                       pixel_spacing_mm=(0.14, 0.15), spacing_source="PixelSpacing")  # fmt: skip


def _segment_exists(name: str) -> bool:
    return (SHM / name).exists()


def _read_in_child(ref: SharedImageRef) -> tuple[float, bool, tuple, str, tuple | None]:
    """In a result process: what the mapped image holds, and whether it can be written."""
    with attached(ref) as image:
        total = float(image.pixels.astype(np.float64).sum())
        try:
            image.pixels[0, 0] = 0.0
            writable = True
        except ValueError:
            writable = False
        return total, writable, image.pixels.shape, image.sop_instance_uid, image.pixel_spacing_mm


def test_a_result_process_maps_the_image_read_only_without_copying_it() -> None:
    images = SharedImages()
    image = _image()
    lease = images.share(image)
    assert lease is not None and _segment_exists(lease.ref.name)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        total, writable, shape, uid, spacing = pool.submit(_read_in_child, lease.ref).result(timeout=60)
    assert total == pytest.approx(float(image.pixels.astype(np.float64).sum()), rel=0, abs=0)
    assert not writable and shape == (300, 200) and uid == "1.2.3.4" and spacing == (0.14, 0.15)
    lease.release()
    lease.release()  # idempotent
    images.close()
    assert not _segment_exists(lease.ref.name)


def test_segments_are_reused_bounded_and_unlinked_at_close() -> None:
    images = SharedImages(keep_bytes=4 << 20)
    first = images.share(_image(512, 512))  # 1 MiB: one granule
    assert first is not None
    name = first.ref.name
    first.release()
    assert _segment_exists(name)  # kept for the next image
    again = images.share(_image(400, 400, seed=1))  # fits the kept segment
    assert again is not None and again.ref.name == name
    big = images.share(_image(1500, 1500))  # 8.6 MiB: more than keep_bytes, a fresh segment
    assert big is not None and big.ref.name != name
    big.release()
    assert not _segment_exists(big.ref.name)  # over keep_bytes: unlinked at once
    again.release()
    images.close()
    assert not _segment_exists(name)
    late = SharedImages(keep_bytes=64 << 20)
    lease = late.share(_image())
    assert lease is not None
    late.close()
    lease.release()  # released after close: unlinked, not kept
    assert not _segment_exists(lease.ref.name)


def test_no_shared_memory_means_the_pipe_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full /dev/shm must never SIGBUS the node: the pages are reserved before the copy, and a refusal
    sends the image through the pipe."""
    created: list[str] = []
    real = shared_image.shared_memory.SharedMemory

    def tracking(*args: object, **kwargs: object) -> object:
        segment = real(*args, **kwargs)
        created.append(segment.name)
        return segment

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shared_image.shared_memory, "SharedMemory", tracking)
    monkeypatch.setattr(shared_image.os, "posix_fallocate", no_space)
    caplog.set_level(logging.WARNING, logger="dicom_node.pipeline.shared_image")
    counted: list[int] = []
    images = SharedImages(on_refused=lambda: counted.append(1))
    assert images.share(_image()) is None and images.share(_image()) is None
    assert images.refused == 2 and images.shared == 0 and len(counted) == 2  # each one counted
    assert [r.event for r in caplog.records] == ["shared_image_unavailable"]  # once, not per image
    assert created and not any(_segment_exists(n) for n in created)  # the refused segments were unlinked


def test_ref_validation() -> None:
    ref = SharedImageRef.of("psm_x", _image(3, 5))
    assert ref.shape == (3, 5) and ref.nbytes == 60
    assert dict(ref.attributes)["pixel_spacing_mm"] == (0.14, 0.15)
    for bad in ("", "a/b"):
        with pytest.raises(ValueError, match="name"):
            SharedImageRef(bad, ref.attributes)
    with pytest.raises(ValueError, match=r"rows and columns >= 1, got 0 x 5"):
        SharedImageRef("psm_x", (("rows", 0), ("columns", 5)))
    with pytest.raises(ValueError, match=r"got None x None"):
        SharedImageRef("psm_x", ())
    with pytest.raises(ValueError, match="keep_bytes"):
        SharedImages(keep_bytes=-1)


class KeepImageAnalyser:
    """Answers like the engine with ``keep_image=True``: findings plus the decoded image on the future."""

    def submit(self, ds: pydicom.Dataset, keep_image: bool = False) -> Future[Findings]:
        f: Future[Findings] = Future()
        if keep_image:
            setattr(f, _IMAGE_ATTR, load_source_image(ds))
        f.set_result(findings_for(ds, three_boxes(int(ds.Rows), int(ds.Columns))))
        return f


def _our_segments(before: set[str]) -> set[str]:
    return {p.name for p in SHM.glob("psm_*")} - before


@pytest.mark.parametrize("workers", [1, 2])
def test_the_worker_hands_the_image_over_in_shared_memory_and_leaves_nothing(
    tmp_path: Path, workers: int
) -> None:
    """Same SC as from a pickled image (the fallback), the segments gone after stop."""
    n = 3
    before = {p.name for p in SHM.glob("psm_*")}
    outputs = []
    for mode in ("shared", "pipe"):
        spool, journal = _spool_jobs(tmp_path / mode, n, 256)
        worker = AnalysisWorker(journal, spool, KeepImageAnalyser(), destinations=["pacs"], batch_size=2,
                                poll_interval_s=0.05, result_workers=workers)  # fmt: skip
        if mode == "pipe":  # as where /dev/shm cannot be had
            worker.start = _start_without_sharing(worker)  # type: ignore[method-assign]
        _run_worker(worker, journal, n)
        if mode == "shared":
            assert worker._shared_images.shared == n and worker._shared_images.refused == 0
        outputs.append(_outbox_contents(journal))
        journal.close()
    deadline = time.monotonic() + 10  # the last releases run on the pool's callback thread
    while time.monotonic() < deadline and _our_segments(before):
        time.sleep(0.05)
    assert not _our_segments(before)
    shared, piped = outputs
    assert set(shared) == set(piped) and len(shared) == 2 * n
    for uid, ds in shared.items():
        assert ds == piped[uid], uid
        if "PixelData" in ds:
            np.testing.assert_array_equal(ds.pixel_array, piped[uid].pixel_array)


def test_images_left_to_the_pipe_are_counted_on_the_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/shm full: every result still built and queued, and ``cxr_node_shared_image_fallbacks_total``
    says how many images went through the pipe (the log line comes once per process)."""

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shared_image.os, "posix_fallocate", no_space)
    n = 3
    metrics = NodeMetrics(gpu_memory=None)
    spool, journal = _spool_jobs(tmp_path, n, 256)
    worker = AnalysisWorker(journal, spool, KeepImageAnalyser(), destinations=["pacs"], batch_size=2,
                            poll_interval_s=0.05, result_workers=1, metrics=metrics)  # fmt: skip
    with pytest.raises(ValueError, match="on_refused must be callable"):
        SharedImages(on_refused=3)  # type: ignore[arg-type]
    _run_worker(worker, journal, n)
    try:
        assert len(_outbox_contents(journal)) == 2 * n  # SR + SC of each image, through the pipe
        assert worker._shared_images.refused == n
        assert b"cxr_node_shared_image_fallbacks_total 3.0" in metrics.render()
    finally:
        journal.close()


def _start_without_sharing(worker: AnalysisWorker):  # noqa: ANN202
    start = worker.start

    def run() -> None:
        start()
        worker._shared_images.share = lambda image: None  # type: ignore[method-assign]

    return run


def test_segments_of_a_killed_result_process_go_back(tmp_path: Path) -> None:
    n = 6
    before = {p.name for p in SHM.glob("psm_*")}
    spool, journal = _spool_jobs(tmp_path, n, 1024)
    worker = AnalysisWorker(journal, spool, KeepImageAnalyser(), destinations=[], batch_size=2,
                            max_attempts=3, poll_interval_s=0.05, result_workers=1)  # fmt: skip
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not worker._shared_images.shared:
            time.sleep(0.005)
        assert worker._shared_images.shared, "no image reached the result pool"
        for pid in worker.result_pool_pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(journal.jobs(state="analysed")) < n:
            time.sleep(0.05)
    finally:
        worker.stop(10)
    jobs = journal.jobs()
    journal.close()
    assert [j.state for j in jobs] == ["analysed"] * n, [(j.state, j.reason) for j in jobs]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _our_segments(before):
        time.sleep(0.05)
    assert not _our_segments(before)


def test_the_handoff_benchmark_runs() -> None:
    """bench/handoff_ab.py (BENCHMARKS.md section 1, "Seventh pass"), one job per size and way."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "bench" / "handoff_ab.py"), "--rounds", "1", "--jobs", "1",
                           "--reply-kb", "1"], capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert (
        "| float32 image 1024 x 1024 (4.0 MiB) |" in out and "| float32 image 3000 x 2500 (28.6 MiB) |" in out
    )
    assert "round 1 pipe" in out and "round 1 shared" in out
