"""Analysis worker: feeds received jobs to the inference engine and queues the results.

The worker keeps up to ``2 x batch_size`` instances in flight so that the engine's batching
fills. For each finished instance it builds the result objects (SR, and SC when analysed),
writes them to the spool outbox and, in one journal transaction, queues them for every
destination and marks the job analysed. ``ImageDecodeError`` marks the job failed (one log
line, never a crash); other errors are retried up to ``analysis_max_attempts`` times.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import pydicom
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.journal import Job, Journal, ResultFile
from dicom_node.node_metrics import NodeMetrics, skip_reason_category
from dicom_node.spool import Spool
from models.errors import ImageDecodeError
from models.findings import Findings

logger = logging.getLogger(__name__)


class Analyser(Protocol):
    """What the worker needs from ``models.engine.InferenceEngine``."""

    def submit(self, ds: Dataset) -> Future[Findings]: ...


BuildResults = Callable[..., Sequence[Dataset]]


def default_build_results() -> BuildResults:
    """``dicom_node.results.build_results`` (imported lazily)."""
    from dicom_node.results import build_results

    return build_results


@dataclass
class _InFlight:
    job: Job
    ds: Dataset
    t0: float
    future: Future[Findings] | None = None


class AnalysisWorker:
    """Background thread: received jobs -> engine -> result files + outbox rows."""

    def __init__(
        self,
        journal: Journal,
        spool: Spool,
        analyser: Analyser,
        *,
        destinations: Sequence[str],
        threshold: float,
        batch_size: int = 8,
        max_attempts: int = 3,
        poll_interval_s: float = 0.5,
        build_results: BuildResults | None = None,
        on_analysed: Callable[[int], None] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        if batch_size < 1 or max_attempts < 1:
            raise ValueError(
                f"batch_size and max_attempts must be >= 1, got {batch_size!r}, {max_attempts!r}"
            )
        self.journal = journal
        self.spool = spool
        self.analyser = analyser
        self.destinations = list(destinations)
        self.threshold = float(threshold)
        self.max_inflight = 2 * batch_size
        self.max_attempts = max_attempts
        self.poll_interval_s = poll_interval_s
        self._build_results = build_results
        self.on_analysed = on_analysed
        self.metrics = metrics
        self._events: queue.Queue[_InFlight | None] = queue.Queue()
        self._inflight: dict[int, _InFlight] = {}
        self._not_before: dict[int, float] = {}
        self._stop = threading.Event()
        self._drain_deadline = 0.0
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the worker thread (resumes every job still in state ``received``)."""
        if self._thread is not None:
            raise RuntimeError("analysis worker already started")
        if self._build_results is None:
            self._build_results = default_build_results()
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
                    "analysis worker did not stop in time", extra={"inflight": len(self._inflight)}
                )

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # --------------------------------------------------------------------- loop
    def _run(self) -> None:
        while True:
            if self._stop.is_set() and (not self._inflight or time.monotonic() > self._drain_deadline):
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
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        now = time.monotonic()
        waiting = {j for j, t in self._not_before.items() if t > now}
        for job in self.journal.next_received(room, exclude=set(self._inflight) | waiting):
            self._not_before.pop(job.id, None)
            t0 = time.perf_counter()
            try:
                ds = pydicom.dcmread(job.path) if job.path else None
                if ds is None:
                    raise ImageDecodeError(job.sop_instance_uid, "spool file missing from the journal row")
            except ImageDecodeError as exc:
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
                entry.future = self.analyser.submit(ds)
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

    def _finish(self, entry: _InFlight) -> None:
        job = entry.job
        self._inflight.pop(job.id, None)
        assert entry.future is not None
        try:
            findings = entry.future.result()
        except ImageDecodeError as exc:
            self._failed(job, exc, entry.t0)
            return
        except Exception as exc:
            self._retry_or_fail(job, exc, entry.t0)
            return
        try:
            outbox_ids = self._store_results(job, entry.ds, findings)
        except Exception as exc:
            self._retry_or_fail(job, exc, entry.t0)
            return
        elapsed_s = time.perf_counter() - entry.t0
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
                "pneumonia_probability": findings.pneumonia_probability,
                "boxes": len(findings.boxes),
                "results": len(outbox_ids),
                "ms": ms,
            },
        )
        if self.on_analysed is not None:
            self.on_analysed(job.id)

    def _store_results(self, job: Job, ds: Dataset, findings: Findings) -> list[int]:
        assert self._build_results is not None
        datasets = list(self._build_results(ds, findings, threshold=self.threshold))
        if not datasets:
            raise ValueError(f"build_results returned no datasets for {job.sop_instance_uid}")
        files: list[ResultFile] = []
        for res in datasets:
            meta = getattr(res, "file_meta", None)
            ts = (
                str(getattr(meta, "TransferSyntaxUID", "") or ExplicitVRLittleEndian)
                if meta
                else ExplicitVRLittleEndian
            )
            path = self.spool.store_result(job.id, res)
            files.append(ResultFile(str(res.SOPInstanceUID), str(res.SOPClassUID), ts, str(path)))
        return self.journal.mark_analysed(job.id, files, self.destinations)

    def _failed(self, job: Job, exc: BaseException, t0: float) -> None:
        reason = str(exc)
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
                "ms": (time.perf_counter() - t0) * 1000,
            },
        )

    def _retry_or_fail(self, job: Job, exc: BaseException, t0: float) -> None:
        error = f"{type(exc).__name__}: {exc}"
        attempts = self.journal.count_attempt(job.id, error)
        if attempts >= self.max_attempts:
            self._failed(job, RuntimeError(f"gave up after {attempts} attempts: {error}"), t0)
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
