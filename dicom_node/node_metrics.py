"""Prometheus metrics of the node (``NodeMetrics``), on a private ``CollectorRegistry``.

Every metric is named ``cxr_node_*``. Label values are low-cardinality categories only
(a skip reason category, a processing stage, a destination AE title): never patient names,
patient IDs, accession numbers or UIDs. :func:`label_value` normalises what callers pass and
:class:`NodeMetrics` caps the number of distinct values per label (:data:`MAX_LABEL_VALUES`;
further values are counted as ``other``), so a bug in a caller cannot blow up the series count.

The queue-depth and GPU-memory gauges are evaluated at scrape time (callables), so the
metrics object holds no reference to the journal or to torch.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

NAMESPACE = "cxr_node"
#: Distinct values kept per label name before new values are folded into ``other``.
MAX_LABEL_VALUES = 32
#: Longest label value kept (longer values are cut).
MAX_LABEL_LENGTH = 64
OTHER = "other"
#: Inference latency buckets (seconds): a batch on a GPU takes tens of ms, on a CPU seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: ``Content-Type`` of :meth:`NodeMetrics.render`.
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.:@/-]+")

#: Skip-reason categories recognised by :func:`skip_reason_category` (keyword -> category).
_SKIP_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("structured report", "structured_report"),
    ("created by this node", "own_result"),
    ("sop class", "sop_class"),
    ("modality", "modality"),
    ("bodypartexamined", "body_part"),
    ("viewposition", "view_position"),
)


def label_value(value: object) -> str:
    """``value`` as a safe Prometheus label value: ``[A-Za-z0-9_.:@/-]`` only, at most 64 characters.

    Other characters become ``_``; an empty result becomes ``unknown``.
    """
    text = _LABEL_BAD.sub("_", str(value).strip()).strip("_")[:MAX_LABEL_LENGTH]
    return text or "unknown"


def skip_reason_category(reason: str | None) -> str:
    """Map a routing skip reason (free text, e.g. ``"Modality MR is not routed for analysis"``) to a
    fixed category (``modality``, ``body_part``, ``view_position``, ``sop_class``, ``structured_report``,
    ``own_result``, ``other``) so that data-set values never become label values."""
    text = (reason or "").lower()
    for keyword, category in _SKIP_CATEGORIES:
        if keyword in text:
            return category
    return OTHER


def cuda_memory_allocated() -> float:
    """Bytes allocated by torch on all CUDA devices; 0 when torch is not loaded or has no CUDA.

    Does not import torch: if the process has not imported it (no engine yet), the answer is 0.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return 0.0
    try:
        if not torch.cuda.is_available():
            return 0.0
        return float(sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())))
    except Exception:  # a scrape must never fail because of the GPU query
        logger.debug("CUDA memory query failed", exc_info=True)
        return 0.0


class _LabelGuard:
    """Thread-safe cap on the distinct values of one label."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, value: object) -> str:
        v = label_value(value)
        with self._lock:
            if v in self._seen:
                return v
            if len(self._seen) < self.limit:
                self._seen.add(v)
                return v
            if not self._warned:
                self._warned = True
                logger.warning(
                    "too many distinct metric label values; counting further ones as %r", OTHER,
                    extra={"event": "metrics_label_cap", "label": self.name, "limit": self.limit},
                )
        return OTHER


class NodeMetrics:
    """Counters, gauges and the latency histogram of one node, on their own registry.

    ``queue_depth`` is called at scrape time (e.g. the number of journal jobs waiting for analysis);
    ``gpu_memory`` defaults to :func:`cuda_memory_allocated`. Both may be set later with
    :meth:`set_queue_depth_source`. All recording methods are thread-safe and never raise on label values.
    """

    def __init__(
        self,
        *,
        queue_depth: Callable[[], float] | None = None,
        gpu_memory: Callable[[], float] | None = cuda_memory_allocated,
        registry: CollectorRegistry | None = None,
        max_label_values: int = MAX_LABEL_VALUES,
    ) -> None:
        if max_label_values < 1:
            raise ValueError(f"max_label_values must be >= 1, got {max_label_values!r}")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._received = Counter("received", "Instances received and persisted (C-STORE success)",
                                 namespace=NAMESPACE, registry=r)  # fmt: skip
        self._skipped = Counter("skipped", "Instances received but not analysed, by reason category",
                                ["reason"], namespace=NAMESPACE, registry=r)  # fmt: skip
        self._analysed = Counter("analysed", "Instances analysed by the models", namespace=NAMESPACE, registry=r)
        self._delivered = Counter("delivered", "Result objects delivered, by destination",
                                  ["destination"], namespace=NAMESPACE, registry=r)  # fmt: skip
        self._failed = Counter("failed", "Failures, by stage (receive, analyse, deliver, ...)",
                               ["stage"], namespace=NAMESPACE, registry=r)  # fmt: skip
        self._shm_fallbacks = Counter("shared_image_fallbacks", "Decoded images sent to the result processes "
                                      "through the pipe, no shared-memory segment to be had (e.g. /dev/shm full)",
                                      namespace=NAMESPACE, registry=r)  # fmt: skip
        self._latency = Histogram("inference_latency_seconds", "Inference latency per instance (seconds)",
                                  namespace=NAMESPACE, registry=r, buckets=LATENCY_BUCKETS)  # fmt: skip
        self._queue = Gauge("queue_depth", "Instances waiting for analysis", namespace=NAMESPACE, registry=r)
        self._undelivered = Gauge("undelivered", "Acknowledged instances whose results are not all delivered "
                                  "(received or analysed; a replica is drained when this is 0)",
                                  namespace=NAMESPACE, registry=r)  # fmt: skip
        self._gpu = Gauge("gpu_memory_bytes", "GPU memory allocated by torch (0 without CUDA)",
                          namespace=NAMESPACE, registry=r)  # fmt: skip
        self._models = Gauge("model_info", "Loaded model bundles (value 1)", ["name", "version"],
                             namespace=NAMESPACE, registry=r)  # fmt: skip
        self._guards = {name: _LabelGuard(name, max_label_values)
                        for name in ("reason", "destination", "stage", "model")}  # fmt: skip
        self._queue_source: Callable[[], float] | None = None
        self.set_queue_depth_source(queue_depth)
        self._undelivered_source: Callable[[], float] | None = None
        self.set_undelivered_source(None)
        self._gpu_source = gpu_memory
        self._gpu.set_function(self._gpu_value)

    # ------------------------------------------------------------------ recording
    def received(self) -> None:
        """One instance was received and persisted."""
        self._received.inc()

    def skipped(self, reason: str) -> None:
        """One received instance is not analysed; ``reason`` is a category (see :func:`skip_reason_category`)."""
        self._skipped.labels(reason=self._guards["reason"](reason)).inc()

    def analysed(self, latency_s: float) -> None:
        """One instance was analysed in ``latency_s`` seconds (negative or NaN values are recorded as 0)."""
        value = float(latency_s)
        if not value >= 0.0:  # also catches NaN
            value = 0.0
        self._analysed.inc()
        self._latency.observe(value)

    def delivered(self, destination: str) -> None:
        """One result object reached ``destination`` (its AE title, or the destination key without secrets)."""
        self._delivered.labels(destination=self._guards["destination"](destination)).inc()

    def failed(self, stage: str) -> None:
        """A failure in ``stage`` (``receive``, ``analyse``, ``deliver``, ...)."""
        self._failed.labels(stage=self._guards["stage"](stage)).inc()

    def shared_image_fallback(self) -> None:
        """One decoded image went to its result process through the pipe (no shared memory for it)."""
        self._shm_fallbacks.inc()

    def models_loaded(self, models: Iterable[tuple[str, str]]) -> None:
        """Publish the loaded bundles as ``cxr_node_model_info{name=..., version=...} 1``."""
        self._models.clear()
        for name, version in models:
            self._models.labels(name=self._guards["model"](name), version=label_value(version)).set(1)

    def set_queue_depth_source(self, source: Callable[[], float] | None) -> None:
        """Use ``source()`` (called at scrape time) for the queue-depth gauge; ``None`` reports 0."""
        if source is not None and not callable(source):
            raise ValueError(f"queue depth source must be callable, got {source!r}")
        self._queue_source = source
        self._queue.set_function(self._queue_value)

    def set_undelivered_source(self, source: Callable[[], float] | None) -> None:
        """Use ``source()`` (called at scrape time) for the undelivered gauge; ``None`` reports 0."""
        if source is not None and not callable(source):
            raise ValueError(f"undelivered source must be callable, got {source!r}")
        self._undelivered_source = source
        self._undelivered.set_function(lambda: _call_gauge(self._undelivered_source, "undelivered"))

    # ------------------------------------------------------------------ output
    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def _queue_value(self) -> float:
        return _call_gauge(self._queue_source, "queue_depth")

    def _gpu_value(self) -> float:
        return _call_gauge(self._gpu_source, "gpu_memory_bytes")


def _call_gauge(source: Callable[[], float] | None, name: str) -> float:
    if source is None:
        return 0.0
    try:
        return float(source())
    except Exception:  # a scrape must never fail because one gauge's source does
        logger.warning("metric source failed", exc_info=True, extra={"event": "metrics_source_failed", "metric": name})
        return float("nan")
