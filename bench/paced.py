"""Paced pushes into a running ``cxr-node serve``: per-image latency and the node's memory over time.

One modality (this process, pynetdicom, ``TCP_NODELAY``) sends one image every ``1 / rate`` seconds
on a fixed schedule (a late send does not shift the next ones), each over its own association as
Orthanc forwards a study (an association kept open would also keep pynetdicom's 1-ms DUL polling
busy in the node for the whole run). For each image the clock starts just before its association
is requested (the start of the C-STORE exchange) and stops at the node's
``job_delivered`` log line for that instance: Orthanc has answered success for both the SR and
the SC, so both are stored there. Log lines carry millisecond UTC timestamps of the same host
clock. Meanwhile the resident memory of the node and of its child processes (the result-building
pool) is sampled every ``rss_interval_s``.

Used by ``bench/end_to_end.py --paced RATE`` (latency) and ``bench/soak_memory.py`` (memory).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from common import child_pids, cpu_seconds, minor_faults, pause_for_certain, percentile, rss_bytes


@dataclass
class RssSampler:
    """Samples the RSS of ``pid`` and of its children every ``interval_s`` in a thread.

    ``samples`` holds ``(seconds since start, node RSS bytes, children RSS bytes, images sent)``;
    ``faults`` ``(images sent, minor page faults of the node and its children so far, their CPU seconds so
    far)`` at the same times."""

    pid: int
    interval_s: float
    sent: Callable[[], int]
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    faults: list[tuple[int, int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s!r}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def _sample(self) -> None:
        try:
            node = rss_bytes(self.pid)
            faults, cpu = minor_faults(self.pid), cpu_seconds(self.pid)
        except (OSError, KeyError, ValueError):
            return
        kids = 0
        for child in child_pids(self.pid):
            try:
                kids += rss_bytes(child)
                faults += minor_faults(child)
                cpu += cpu_seconds(child)
            except (OSError, KeyError, ValueError):
                pass
        sent = self.sent()
        self.samples.append((time.perf_counter() - self._t0, node, kids, sent))
        self.faults.append((sent, faults, cpu))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._t0 = time.perf_counter()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sample()


def log_epoch(record: dict[str, Any]) -> float:
    """Epoch seconds of a JSON log record's ``ts`` (ISO 8601, UTC, milliseconds)."""
    return dt.datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()


@dataclass
class PacedPush:
    """Sends ``files`` (or ``count`` data sets made by ``make(i)``) to ``host:port`` at ``rate``
    images/s over one association; ``sent`` counts."""

    files: Sequence[Path]
    port: int
    rate: float
    calling: str
    called: str
    host: str = "127.0.0.1"
    make: Callable[[int], pydicom.Dataset] | None = None
    count: int = 0
    #: as Orthanc forwards a study: associate, C-STORE, release for each image (False: one association)
    one_association_per_image: bool = True
    started: dict[str, float] = field(default_factory=dict)  # SOP Instance UID -> epoch s at C-STORE start
    acked_ms: list[float] = field(
        default_factory=list
    )  # association request -> C-STORE response (+ release), ms
    sent: int = 0

    def run(self) -> None:
        """Push every image on schedule; RuntimeError when an association fails or a status is not success."""
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0 images/s, got {self.rate!r}")
        if self.make is None:
            files = [
                pydicom.dcmread(f) for f in self.files
            ]  # read ahead: the schedule times only the C-STORE
            self.make, self.count = files.__getitem__, len(files)
        assoc = None
        try:
            t0 = time.perf_counter()
            for i in range(self.count):
                ds = self.make(i)
                delay = t0 + i / self.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                self.started[str(ds.SOPInstanceUID)] = time.time()
                c0 = time.perf_counter()
                if assoc is None or not assoc.is_established:
                    assoc = self._associate(ds)
                pause_for_certain(assoc)
                status = assoc.send_c_store(ds)
                if self.one_association_per_image:
                    assoc.release()
                self.acked_ms.append((time.perf_counter() - c0) * 1000)
                if "Status" not in status or int(status.Status) != 0:
                    raise RuntimeError(f"C-STORE {i} answered {status!r}")
                self.sent += 1
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()

    def _associate(self, ds: pydicom.Dataset) -> Any:
        from pynetdicom import AE

        from dicom_node.transport.tcp_options import NODELAY_HANDLERS

        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        assoc = ae.associate(self.host, self.port, ae_title=self.called, evt_handlers=NODELAY_HANDLERS)
        if not assoc.is_established:
            raise RuntimeError(f"no association with {self.called}@{self.host}:{self.port}")
        return assoc


def latencies_s(push: PacedPush, records: Sequence[dict[str, Any]]) -> list[float]:
    """Seconds from each image's C-STORE start to its ``job_delivered`` log line (images of ``push`` only)."""
    done = {
        r.get("sop_instance_uid"): log_epoch(r)
        for r in records
        if r.get("event") == "job_delivered" and r.get("sop_instance_uid") in push.started
    }
    missing = set(push.started) - set(done)
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(push.started)} images have no job_delivered line")
    return [done[uid] - t for uid, t in push.started.items()]


def latency_summary(values_s: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max of latencies in seconds."""
    return {
        "p50_s": percentile(values_s, 50),
        "p95_s": percentile(values_s, 95),
        "p99_s": percentile(values_s, 99),
        "max_s": max(values_s),
    }


def per_image_after_warmup(
    faults: Sequence[tuple[int, int, float]], *, skip_fraction: float = 0.1
) -> tuple[float, float]:
    """(minor page faults, CPU ms) per image sent, node + children, after the first ``skip_fraction`` of
    the images, from :class:`RssSampler`'s ``faults`` (the last sample is taken once all are delivered)."""
    total = faults[-1][0] if faults else 0
    window = [f for f in faults if f[0] >= skip_fraction * total]
    if len(window) < 2 or window[-1][0] == window[0][0]:
        raise ValueError(f"too few samples to compare: {list(faults)[-3:]!r}")
    images = window[-1][0] - window[0][0]
    return (window[-1][1] - window[0][1]) / images, (window[-1][2] - window[0][2]) * 1000.0 / images


def rss_summary(
    samples: Sequence[tuple[float, int, int, int]], *, skip_fraction: float = 0.1
) -> dict[str, Any]:
    """Memory over a run: first/last/min/max of node + children RSS after the first ``skip_fraction``
    of the images (start-up and warm-up growth), and the spread (max - min) / first of that window."""
    if not samples:
        raise ValueError("no RSS samples")
    total = samples[-1][3] or 1
    window = [s for s in samples if s[3] >= skip_fraction * total] or list(samples)
    both = [(s[1] + s[2]) / 2**20 for s in window]
    return {
        "rss_first_mb": both[0],
        "rss_last_mb": both[-1],
        "rss_min_mb": min(both),
        "rss_max_mb": max(both),
        "rss_spread": (max(both) - min(both)) / both[0],
        "rss_drift": (both[-1] - both[0]) / both[0],
        "samples": len(window),
    }
