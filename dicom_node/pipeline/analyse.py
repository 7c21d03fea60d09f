"""Analysis worker: feeds received jobs to the inference engine and queues the results.

The worker keeps up to ``2 x batch_size`` instances in flight so that the engine's batching
fills. For each finished instance it builds the result objects (SR, and SC when analysed),
writes them to the spool outbox and, in one journal transaction, queues them for every
destination and marks the job analysed. ``ImageDecodeError`` marks the job failed (one log
line, never a crash); other errors are retried up to ``analysis_max_attempts`` times.

A job that fails for good still leaves a visible status in the study: a short "not evaluated"
SR (``results_sr.build_not_evaluated_sr``: reason category from a fixed vocabulary, no header
text) is queued for delivery in the same transaction that marks the job failed. When not even
the source's header can be read there is nothing to reference: that is logged and skipped.

Every analysis start is counted in the journal before the data set is even read
(``Journal.start_attempt``), so a data set that kills the process (a native crash in a decoder, the
OOM killer) cannot loop: a job started but never finished was in flight when the process died; after
a restart it runs alone (nothing else in flight is charged with the crash), and once it has been
started ``analysis_max_attempts`` times it is set aside as failed. The spool file is read with
``defer_size``: large elements the analysis does not use (a private blob of hundreds of MiB) stay on disk.

The engine hands back the image it decoded (``submit(ds, keep_image=True)``), so the SC overlay
does not decode the source a second time. SR + SC are built in a ``ProcessPoolExecutor``
(``result_workers`` >= 1 processes, spawn context; the one result-building path) so that this
CPU-heavy Python does not compete with the engine's batch thread for the GIL; the worker process
returns the encoded files and this thread writes them to the outbox and marks the job analysed in
one journal transaction. With two or more result processes an analysed image's SR and SC are built
at the same time, one per process (the image's results are stored once both are in): a lone image
waits for the longer of the two builds instead of their sum. A pool process that dies fails
(retries) only the jobs it had; the pool is recreated. Tests inject their own builder
(``build_encoded``: a picklable module-level function, it runs in the pool like the real one, whole).
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

import pydicom
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.node_metrics import NodeMetrics, skip_reason_category
from dicom_node.pipeline.shared_image import SharedImageRef, SharedImages, attached
from dicom_node.results.sr.codes import NotEvaluatedReason
from dicom_node.storage.journal import Job, Journal, ResultFile
from dicom_node.storage.spool import Spool
from models.errors import ImageDecodeError
from models.findings import Findings
from models.imaging.dicom_image import SourceImage

logger = logging.getLogger(__name__)

#: Elements larger than this are read from the spool file only when used (pydicom ``defer_size``).
DEFER_SIZE = 1 << 20


class Analyser(Protocol):
    """What the worker needs from ``models.inference.engine.InferenceEngine``."""

    def submit(self, ds: Dataset) -> Future[Findings]: ...


#: ``(source path, findings as findings_to_dict, decoded image or None) -> encoded results``, run in a
#: pool process: a picklable module-level function (default: ``dicom_node.results.build.build_encoded_results``)
BuildEncoded = Callable[[str, Mapping, object], Sequence[object]]


@dataclass
class _InFlight:
    job: Job
    ds: Dataset
    t0: float
    future: Future[Findings] | None = None


@dataclass
class _Built:
    """A job whose results are being built in the process pool."""

    job: Job
    findings: Findings
    t0: float
    pool: ProcessPoolExecutor
    future: Future | None = None


def default_result_workers() -> int:
    """``min(2, cpu_count)`` result-building processes."""
    return max(1, min(2, os.cpu_count() or 1))


class _KeepRecords(logging.Handler):
    """Collects the log records of one result build in a pool process (sent back to the node)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # make it picklable: message formatted, no args / traceback objects
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        self.records.append(record)


def _build_in_pool(
    build_encoded: BuildEncoded | None,
    source_path: str,
    findings_json: dict,
    image: object,
    log_level: int,
    parts: tuple[str, ...] = ("sr", "sc"),
    sc_encoding: object = None,
) -> tuple[list, list[logging.LogRecord]]:
    """Pool-process job: ``build_encoded`` (None: ``dicom_node.results.build.build_encoded_results``) plus
    the log records it wrote (a spawned process has no log handlers; the node re-emits them so none are lost)."""
    root = logging.getLogger()
    root.setLevel(log_level)
    keep = _KeepRecords()
    root.addHandler(keep)
    try:
        if isinstance(image, SharedImageRef):  # the decoded image, mapped from the node's shared memory
            with attached(image) as shared:
                encoded = _build(build_encoded, source_path, findings_json, shared, parts, sc_encoding)
                del shared  # the last reference to the mapping: it is closed on leaving the block
        else:
            encoded = _build(build_encoded, source_path, findings_json, image, parts, sc_encoding)
    finally:
        root.removeHandler(keep)
    return encoded, keep.records


def _build(
    build_encoded: BuildEncoded | None,
    source_path: str,
    findings_json: dict,
    image: object,
    parts: tuple[str, ...],
    sc_encoding: object,
) -> list:
    from dicom_node.results.build import build_encoded_results

    if build_encoded is None:
        return build_encoded_results(source_path, findings_json, image, parts, sc_encoding)  # type: ignore[arg-type]
    return list(build_encoded(source_path, findings_json, image))  # type: ignore[misc]


def _pool_init(parent_pid: int, memory_keep_mib: int = 0) -> None:
    """Initializer of each pool process: keep highdicom's DEBUG chatter out of the records shipped
    back (see ``logging_setup.quiet_highdicom``), keep freed image buffers for reuse as the node
    does (``memory_keep_mib``: ``dicom_node.memory_reuse``), and exit as soon as the node process is gone.

    A pool process blocks on its job queue, whose write end its siblings also hold, so it would
    outlive a node that was killed (SIGKILL, crash) or exited without ``stop()``.
    """
    from dicom_node.logging_setup import quiet_highdicom
    from dicom_node.memory_reuse import keep_freed_memory

    quiet_highdicom()
    keep_freed_memory(memory_keep_mib)
    # warnings (pydicom quotes header values in them) become log records: shipped back with a build and
    # written by the node's scrubbing formatter, never printed raw to the shared stderr
    logging.captureWarnings(True)
    logging.getLogger().addHandler(logging.NullHandler())

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="cxr-parent-watch", daemon=True).start()


def _pool_warmup() -> int:
    """Runs once in each new pool process: imports the result builders ahead of the first job and
    freezes those start-up objects for the garbage collector (``dicom_node.gc_freeze``)."""
    import dicom_node.results.build  # noqa: F401
    from dicom_node.gc_freeze import freeze_long_lived

    freeze_long_lived()
    return os.getpid()


class AnalysisWorker:
    """Background thread: received jobs -> engine -> result files + outbox rows."""

    def __init__(
        self,
        journal: Journal,
        spool: Spool,
        analyser: Analyser,
        *,
        destinations: Sequence[str],
        batch_size: int = 8,
        max_attempts: int = 3,
        poll_interval_s: float = 0.5,
        build_encoded: BuildEncoded | None = None,
        on_analysed: Callable[[int], None] | None = None,
        metrics: NodeMetrics | None = None,
        result_workers: int | None = None,
        sc_encoding: object = None,
        memory_keep_mib: int = 0,
    ) -> None:
        """``result_workers``: processes building SR + SC (None: :func:`default_result_workers`);
        ``build_encoded``: what they run (None: ``dicom_node.results.build.build_encoded_results``);
        ``sc_encoding``: how the SC is stored (a ``dicom_node.results.sc.encode.ScEncoding``; None: its default);
        ``memory_keep_mib``: freed memory those processes keep for reuse (``dicom_node.memory_reuse``; 0: none)."""
        if batch_size < 1 or max_attempts < 1:
            raise ValueError(
                f"batch_size and max_attempts must be >= 1, got {batch_size!r}, {max_attempts!r}"
            )
        if result_workers is None:
            result_workers = default_result_workers()
        if not isinstance(result_workers, int) or result_workers < 1:
            raise ValueError(f"result_workers must be an int >= 1, got {result_workers!r}")
        self.result_workers = result_workers
        self._pool: ProcessPoolExecutor | None = None
        self._building: dict[int, _Built] = {}
        # the engine can hand back its decoded image (fakes with a plain submit(ds) cannot)
        self._keep_image = _accepts_keep_image(analyser)
        self._build_encoded = build_encoded
        self._sc_encoding = sc_encoding
        self._memory_keep_mib = memory_keep_mib
        self.journal = journal
        self.spool = spool
        self.analyser = analyser
        self.destinations = list(destinations)
        self.max_inflight = 2 * batch_size
        self.max_attempts = max_attempts
        self.poll_interval_s = poll_interval_s
        self.on_analysed = on_analysed
        self.metrics = metrics
        # the SC's decoded image goes to the result processes in shared memory (dicom_node/pipeline/shared_image.py)
        self._shared_images = self._new_shared_images()
        self._events: queue.Queue[_InFlight | _Built | None] = queue.Queue()
        self._inflight: dict[int, _InFlight] = {}
        self._not_before: dict[int, float] = {}
        self._stop = threading.Event()
        self._isolated: int | None = None
        self._drain_deadline = 0.0
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the worker thread (resumes every job still in state ``received``)."""
        if self._thread is not None:
            raise RuntimeError("analysis worker already started")
        self._pool = self._new_pool()
        self._shared_images = self._new_shared_images()
        self._thread = threading.Thread(target=self._run, name="cxr-analyse", daemon=True)
        self._thread.start()

    def wake(self, _job_id: int | None = None) -> None:
        """Tell the worker new jobs are waiting (called by the receiver)."""
        self._events.put(None)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking new jobs, finish the in-flight ones (up to ``timeout``); the rest resume on restart."""
        self._drain_deadline = time.monotonic() + timeout
        self._stop.set()
        self._events.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning(
                    "analysis worker did not stop in time",
                    extra={"inflight": len(self._inflight) + len(self._building)},
                )
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._shared_images.close()  # segments still in use are unlinked when their jobs end
        for job_id in [*self._inflight, *self._building]:  # a graceful stop is not a crash
            try:
                self.journal.undo_start(job_id)
            except Exception:  # pragma: no cover - journal closed: the count stays one too high
                logger.warning("could not take back an analysis start", extra={"job_id": job_id})

    def _new_shared_images(self) -> SharedImages:
        counter = self.metrics.shared_image_fallback if self.metrics is not None else None
        return SharedImages(on_refused=counter)

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.result_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_pool_init,
            initargs=(os.getpid(), self._memory_keep_mib),
        )
        for _ in range(self.result_workers):  # start the processes and import highdicom now
            pool.submit(_pool_warmup)
        return pool

    @property
    def result_pool_pids(self) -> list[int]:
        """PIDs of the result-building processes."""
        procs = getattr(self._pool, "_processes", None) or {}
        return sorted(int(pid) for pid in procs)

    @property
    def inflight(self) -> int:
        return len(self._inflight) + len(self._building)

    # --------------------------------------------------------------------- loop
    def _run(self) -> None:
        while True:
            if self._stop.is_set() and (
                (not self._inflight and not self._building) or time.monotonic() > self._drain_deadline
            ):
                return
            if not self._stop.is_set():
                try:
                    self._fill()
                except Exception:  # pragma: no cover - journal trouble: log and keep going
                    logger.exception("analysis worker could not fetch jobs", extra={"event": "worker_error"})
            try:
                item = self._events.get(timeout=self.poll_interval_s)
            except queue.Empty:
                continue
            while item is not None or not self._events.empty():
                if item is not None:
                    try:
                        if isinstance(item, _Built):
                            self._finish_built(item)
                        else:
                            self._finish(item)
                    except Exception:  # journal/spool trouble: the job stays 'received' and is retried
                        logger.exception(
                            "could not record the analysis result",
                            extra={"event": "worker_error", "job_id": item.job.id},
                        )
                    # Refill after every finished job, not only once the event queue is empty:
                    # building results (SR + SC) takes about as long as inference on a CPU, and
                    # draining a whole batch of results first left the engine idle meanwhile.
                    if not self._stop.is_set():
                        try:
                            self._fill()
                        except Exception:  # pragma: no cover - as above
                            logger.exception(
                                "analysis worker could not fetch jobs", extra={"event": "worker_error"}
                            )
                try:
                    item = self._events.get_nowait()
                except queue.Empty:
                    break

    def _fill(self) -> None:
        if self._isolated is not None and (self._isolated in self._inflight or self._isolated in self._building):
            return  # a suspect runs alone
        self._isolated = None
        room = self.max_inflight - len(self._inflight) - len(self._building)
        if room <= 0:
            return
        now = time.monotonic()
        waiting = {j for j, t in self._not_before.items() if t > now}
        busy = set(self._inflight) | set(self._building)
        for job in self.journal.next_received(room, exclude=busy | waiting):
            self._not_before.pop(job.id, None)
            t0 = time.perf_counter()
            if job.suspect and (self._inflight or self._building):
                break  # let the others finish: a suspect runs alone
            # counted (and committed) before anything risky: a data set that kills the process is set
            # aside after max_attempts starts instead of crashing the node after every restart
            starts = self.journal.start_attempt(job.id)
            if starts > self.max_attempts:
                self._failed(job, RuntimeError(
                    f"set aside: the process died during each of its {starts - 1} analysis attempts"), t0,
                    category=NotEvaluatedReason.ANALYSIS_FAILED, attempts=starts - 1)  # fmt: skip
                continue
            if job.suspect:
                self._isolated = job.id
                logger.warning(
                    "analysing alone a job whose last analysis did not finish (the process died)",
                    extra={"event": "suspect_isolated", "job_id": job.id, "sop_instance_uid": job.sop_instance_uid,
                           "starts": starts},
                )  # fmt: skip
            try:
                # large elements (e.g. a 400 MiB private blob) stay on disk until read: memory per instance
                # is its pixel data plus a small header, whatever else the file carries
                ds = pydicom.dcmread(job.path, defer_size=DEFER_SIZE) if job.path else None
                if ds is None:
                    raise ImageDecodeError(job.sop_instance_uid, "spool file missing from the journal row")
            except ImageDecodeError as exc:  # pragma: no cover - dcmread does not raise it
                self._failed(job, exc, t0)
                continue
            except FileNotFoundError as exc:
                self._failed(job, ImageDecodeError(job.sop_instance_uid, f"spool file missing: {exc}"), t0)
                continue
            except Exception as exc:
                self._failed(job, ImageDecodeError(job.sop_instance_uid, f"unreadable spool file: {exc}"), t0)
                continue
            entry = _InFlight(job=job, ds=ds, t0=t0)
            try:
                entry.future = (
                    self.analyser.submit(ds, keep_image=True)  # type: ignore[call-arg]
                    if self._keep_image
                    else self.analyser.submit(ds)
                )
            except Exception as exc:
                logger.warning(
                    "engine refused the instance: %s",
                    exc,
                    extra={
                        "event": "submit_error",
                        "job_id": job.id,
                        "sop_instance_uid": job.sop_instance_uid,
                    },
                )
                self._retry_or_fail(job, exc, t0)
                continue
            self._inflight[job.id] = entry
            entry.future.add_done_callback(lambda _f, e=entry: self._events.put(e))
            if self._isolated == job.id:
                break

    def _finish(self, entry: _InFlight) -> None:
        job = entry.job
        self._inflight.pop(job.id, None)
        assert entry.future is not None
        try:
            findings = entry.future.result()
        except ImageDecodeError as exc:
            self._failed(job, exc, entry.t0, ds=entry.ds)
            return
        except Exception as exc:
            self._retry_or_fail(job, exc, entry.t0)
            return
        image = _source_image_of(entry.future) if self._keep_image else None
        entry.future = None  # the image is now only referenced here
        self._submit_build(job, findings, image, entry.t0)

    def _submit_build(self, job: Job, findings: Findings, image: object, t0: float) -> None:
        from dicom_node.results.build import findings_to_dict

        assert self._pool is not None
        built = _Built(job=job, findings=findings, t0=t0, pool=self._pool)
        args = (job.path, findings_to_dict(findings))
        level = logging.getLogger().getEffectiveLevel()
        lease = self._shared_images.share(image) if isinstance(image, SourceImage) else None
        sent = lease.ref if lease is not None else image
        try:
            if findings.analysed and self.result_workers >= 2 and self._build_encoded is None:
                # SR and SC at once, in two processes
                sc = self._pool.submit(_build_in_pool, None, *args, sent, level, ("sc",), self._sc_encoding)
                built.future = joined_builds([self._pool.submit(_build_in_pool, None, *args, None, level, ("sr",)), sc])
            else:
                sc = built.future = self._pool.submit(
                    _build_in_pool, self._build_encoded, *args, sent, level, ("sr", "sc"), self._sc_encoding
                )
        except BrokenProcessPool as exc:
            if lease is not None:
                lease.release()
            self._pool_broken(built.pool, exc)
            self._retry_or_fail(job, exc, t0)
            return
        except RuntimeError as exc:  # pool shut down (stopping)
            if lease is not None:
                lease.release()
            self._retry_or_fail(job, exc, t0)
            return
        if lease is not None:  # whatever the outcome: built, failed, cancelled, the pool broken
            sc.add_done_callback(lambda _f, held=lease: held.release())
        self._building[job.id] = built
        built.future.add_done_callback(lambda _f, b=built: self._events.put(b))

    def _pool_broken(self, pool: ProcessPoolExecutor, exc: BaseException) -> None:
        """A result process died: replace the pool once (the jobs it had are retried)."""
        if self._pool is not pool or self._stop.is_set():
            return
        logger.error(
            "result-building process died; recreating the pool: %s",
            exc,
            extra={"event": "result_pool_broken", "result_workers": self.result_workers},
        )
        pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def _finish_built(self, built: _Built) -> None:
        job = built.job
        self._building.pop(job.id, None)
        assert built.future is not None
        try:
            encoded, records = built.future.result()
            for record in records:
                logging.getLogger(record.name).handle(record)
            if not encoded:
                raise ValueError(f"build_results returned no datasets for {job.sop_instance_uid}")
            outbox_ids = self._store_encoded(job, encoded)
        except BrokenProcessPool as exc:
            logger.error(
                "result building failed: its process died",
                extra={
                    "event": "result_worker_died",
                    "job_id": job.id,
                    "sop_instance_uid": job.sop_instance_uid,
                },
            )
            self._pool_broken(built.pool, exc)
            self._retry_or_fail(job, exc, built.t0)
            return
        except Exception as exc:
            self._retry_or_fail(job, exc, built.t0)
            return
        self._analysed(job, built.findings, outbox_ids, built.t0)

    def _store_encoded(self, job: Job, encoded: Sequence[object]) -> list[int]:
        files: list[ResultFile] = []
        for res in encoded:
            uid = str(res.sop_instance_uid)  # type: ignore[attr-defined]
            path = self.spool.store_result_bytes(job.id, uid, res.data)  # type: ignore[attr-defined]
            files.append(
                ResultFile(uid, str(res.sop_class_uid), str(res.transfer_syntax_uid), str(path))  # type: ignore[attr-defined]
            )
        return self.journal.mark_analysed(job.id, files, self.destinations)

    def _analysed(self, job: Job, findings: Findings, outbox_ids: list[int], t0: float) -> None:
        elapsed_s = time.perf_counter() - t0
        ms = elapsed_s * 1000
        if self.metrics is not None:
            if findings.analysed:
                self.metrics.analysed(elapsed_s)
            else:
                self.metrics.skipped(skip_reason_category(findings.not_analysed_reason))
        logger.info(
            "analysed" if findings.analysed else "not analysed: %s",
            *(() if findings.analysed else (findings.not_analysed_reason,)),
            extra={
                "event": "analysed",
                "job_id": job.id,
                "sop_instance_uid": job.sop_instance_uid,
                "sop_class_uid": job.sop_class_uid,
                "calling_aet": job.calling_aet,
                "analysed": findings.analysed,
                "probability": findings.probability,
                "positive": findings.positive,
                "boxes": len(findings.boxes),
                "results": len(outbox_ids),
                "ms": ms,
            },
        )
        if self.on_analysed is not None:
            self.on_analysed(job.id)

    def _failed(
        self,
        job: Job,
        exc: BaseException,
        t0: float,
        *,
        ds: Dataset | None = None,
        category: NotEvaluatedReason = NotEvaluatedReason.PIXEL_DATA_UNDECODABLE,
        attempts: int | None = None,
    ) -> None:
        """Mark the job failed for good and queue its "not evaluated" SR (when its header is readable)."""
        reason = str(exc)
        attempts = attempts if attempts is not None else job.attempts + 1
        outbox_ids = self._queue_not_evaluated(job, reason, ds, category, max(1, attempts))
        if outbox_ids is None:
            self.journal.set_job_state(job.id, "failed", reason)
        if self.metrics is not None:
            self.metrics.failed("analyse")
        logger.error(
            "failed: %s",
            reason,
            extra={
                "event": "failed",
                "stage": "analyse",
                "job_id": job.id,
                "sop_instance_uid": job.sop_instance_uid,
                "sop_class_uid": job.sop_class_uid,
                "calling_aet": job.calling_aet,
                "reason_category": category.value,
                "not_evaluated_sr": outbox_ids is not None,
                "ms": (time.perf_counter() - t0) * 1000,
            },
        )

    def _queue_not_evaluated(
        self, job: Job, reason: str, ds: Dataset | None, category: NotEvaluatedReason, attempts: int
    ) -> list[int] | None:
        """Build the job's "not evaluated" SR, store it and, with the failed state, queue it for delivery.

        Returns the outbox ids, or None when no SR could be built (the header is unreadable, or
        lacks what the SR must reference): then nothing is queued and the caller marks the job failed.
        """
        from dicom_node.results.sr.build import build_not_evaluated_sr

        try:
            header = ds if ds is not None else pydicom.dcmread(job.path, stop_before_pixels=True, defer_size=DEFER_SIZE)
            sr = build_not_evaluated_sr(
                header,
                category,
                models=tuple(getattr(self.analyser, "models", ()) or ()),
                finding=getattr(self.analyser, "finding", None),
                attempts=attempts,
                # the analyser's decision settings: the SR joins the series of this configuration's results
                threshold=getattr(self.analyser, "decision_threshold", None),
                detection_threshold=getattr(self.analyser, "detection_score_threshold", None),
                box_gating=getattr(self.analyser, "box_gating", "positive-only"),
            )
            path = self.spool.store_result(job.id, sr)
        except Exception as exc:  # an unreadable header: nothing to reference (never header text in the log)
            logger.warning(
                "no 'not evaluated' SR for the failed job: %s",
                type(exc).__name__,
                extra={"event": "not_evaluated_skipped", "job_id": job.id, "sop_instance_uid": job.sop_instance_uid},
            )
            return None
        result = ResultFile(str(sr.SOPInstanceUID), str(sr.SOPClassUID), ExplicitVRLittleEndian, str(path))
        return self.journal.mark_failed(job.id, reason, [result], self.destinations)

    def _retry_or_fail(self, job: Job, exc: BaseException, t0: float) -> None:
        error = f"{type(exc).__name__}: {exc}"
        attempts = self.journal.count_attempt(job.id, error)
        if attempts >= self.max_attempts:
            self._failed(job, RuntimeError(f"gave up after {attempts} attempts: {error}"), t0,
                         category=NotEvaluatedReason.ANALYSIS_FAILED, attempts=attempts)  # fmt: skip
            return
        delay = self.poll_interval_s * (2**attempts)
        self._not_before[job.id] = time.monotonic() + delay
        logger.warning(
            "analysis error, will retry: %s",
            error,
            exc_info=exc if not isinstance(exc, (OSError, RuntimeError)) else None,
            extra={
                "event": "analysis_retry",
                "job_id": job.id,
                "sop_instance_uid": job.sop_instance_uid,
                "attempts": attempts,
                "retry_in_s": delay,
            },
        )


def joined_builds(parts: Sequence[Future]) -> Future:
    """One future for several ``_build_in_pool`` jobs of one image: done when all are, its result
    their encoded results and log records concatenated in the order of ``parts`` (SR before SC);
    the first part's exception (or cancellation) otherwise."""
    joined: Future = Future()
    joined.set_running_or_notify_cancel()
    lock = threading.Lock()
    left = [len(parts)]

    def part_done(_f: Future) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        encoded: list = []
        records: list = []
        for f in parts:
            if f.cancelled():
                joined.set_exception(CancelledError(f"result build cancelled ({len(parts)} parts)"))
                return
            exc = f.exception()
            if exc is not None:
                joined.set_exception(exc)
                return
            e, r = f.result()
            encoded += e
            records += r
        joined.set_result((encoded, records))

    for f in parts:
        f.add_done_callback(part_done)
    return joined


def _accepts_keep_image(analyser: object) -> bool:
    try:
        return "keep_image" in inspect.signature(analyser.submit).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False


def _source_image_of(future: Future) -> object | None:
    from models.inference.engine import source_image_of

    return source_image_of(future)
