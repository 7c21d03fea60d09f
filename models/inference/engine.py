"""The batched, thread-safe inference engine.

``InferenceEngine`` loads the classification and the detection bundle **once** and then
serves :meth:`InferenceEngine.submit` calls from any thread::

    submit(ds) ──▶ decode pool (view gate, load_source_image, prepare per image_size)
                    ──▶ queue ──▶ ONE batch thread (up to max_batch_size items, waits at most
                                  max_wait_ms) ──▶ classifier + detector on the batch
                                  ──▶ Findings ──▶ future.set_result

When the batch thread was idle until an image arrived, it waits for a batch to fill only while
more submitted instances are still being decoded: when the last of them reaches the queue (or
fails), the decode side posts a flush marker and the batch runs at once. A lone image therefore
never waits ``max_wait_ms``. When an image was already waiting as the previous batch ended (the
engine is busy), it waits up to ``max_wait_ms`` for the batch to fill, as before: under load the
models keep their batch sizes.

Lateral / non-chest instances never reach the models (``Findings(analysed=False)``).
Decode problems fail that instance's future with :class:`~models.errors.ImageDecodeError`.
An exception while running a batch fails only the futures of that batch (each item is
retried alone first, so one poisonous image cannot take its neighbours down); the batch
thread itself never dies.

Each bundle gets its input through its own preprocessing (``models.imaging.preprocess``; the
classifier's centre crop and the detector's letterbox), prepared once per distinct spec.
The image-level decision (``probability >= decision_threshold``) is taken here, once, and
the detector's boxes are reported only on positive images (``box_gating="positive-only"``,
the default; ``"all"`` reports them regardless), so that every consumer (SR, SC,
``cxr-node infer --json``) shows the same, consistent result. Positive images also get a
Grad-CAM heatmap of the classifier (``models.inference.heatmap``) when the bundle names a layer.

On CUDA the models run under ``torch.autocast(float16)`` with ``cudnn.benchmark``, from
pinned host memory with ``non_blocking`` copies; everything runs under
``torch.inference_mode()`` except the classifier's tail when a heatmap is computed.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch

from models.errors import ImageDecodeError, InferenceCoreError, sop_uid_of
from models.findings import BOX_GATING_RULES, Box, FindingCode, Findings, Heatmap, ModelInfo
from models.inference.bundle_loader import (
    LoadedBundle,
    detector_box_to_xyxy,
    load_bundle,
    monai_box_to_xyxy,
    xyxy_to_monai_box,
)
from models.inference.heatmap import ActivationCapture, grad_cam

logger = logging.getLogger(__name__)

__all__ = [
    "InferenceEngine",
    "boxes_to_source",
    "default_bundles_dir",
    "monai_box_to_xyxy",
    "resolve_device",
    "source_image_of",
    "xyxy_to_monai_box",
]

DEFAULT_CLASSIFICATION_BUNDLE = "cxr_classification"
DEFAULT_DETECTION_BUNDLE = "cxr_opacity_detection"
#: Boxes smaller than this (source pixels) after clipping to the image are dropped.
_MIN_BOX_SIDE = 1e-3


@dataclass
class _Item:
    """One instance on its way through the engine."""

    future: Future
    sop_instance_uid: str
    rows: int
    columns: int
    t_submit: float
    #: (image_size, Preprocessing) -> (1×H×W float32 array, its geometry)
    prepared: dict[tuple[Any, Any], tuple[np.ndarray, Any]] = field(default_factory=dict)
    decode_ms: float = 0.0
    t_enqueued: float = 0.0


_STOP = object()
#: posted by the decode side when no submitted instance is left on its way to the queue
_FLUSH = object()
#: attribute of a ``submit(..., keep_image=True)`` future that holds the decoded SourceImage
_IMAGE_ATTR = "_cxr_source_image"


def source_image_of(future: Future) -> Any | None:
    """The decoded :class:`~models.imaging.dicom_image.SourceImage` attached to a ``submit(ds, keep_image=True)``
    future, or None (not asked for, not analysed by the models, or decoding failed)."""
    return getattr(future, _IMAGE_ATTR, None)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → cuda if available else cpu; ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` as given.

    Raises:
        ValueError: an unknown device string, or cuda asked for where it is not available.
    """
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


class InferenceEngine:
    """Batched inference over the classification and detection bundles (thread-safe).

    Args:
        bundles_dir: folder holding both bundle folders.
        device: ``"auto"`` (cuda if available), ``"cpu"`` or ``"cuda"``.
        max_batch_size: most items run together.
        max_wait_ms: longest the batch thread waits for a batch to fill after its first item.
        decode_workers: threads decoding DICOM pixel data and preprocessing.
        detection_score_threshold: report boxes scoring at least this; default: the bundle's.
        decision_threshold: image-level decision threshold; default: the classification bundle's.
        box_gating: "positive-only" (boxes only on positive images) or "all".
        heatmaps: compute the classifier's Grad-CAM for positive images (when the bundle names a layer).
        classification_bundle, detection_bundle: folder names inside ``bundles_dir``.
        num_threads: ``torch.set_num_threads`` for CPU inference (process-wide); None leaves it.
        warmup: run one dummy batch at construction (first real request is then not slower).
    """

    def __init__(
        self,
        bundles_dir: Path | str,
        *,
        device: str | torch.device = "auto",
        max_batch_size: int = 8,
        max_wait_ms: float = 20.0,
        decode_workers: int = 2,
        detection_score_threshold: float | None = None,
        decision_threshold: float | None = None,
        box_gating: str = "positive-only",
        heatmaps: bool = True,
        classification_bundle: str = DEFAULT_CLASSIFICATION_BUNDLE,
        detection_bundle: str = DEFAULT_DETECTION_BUNDLE,
        num_threads: int | None = None,
        warmup: bool = False,
    ) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        if not isinstance(decode_workers, int) or decode_workers < 1:
            raise ValueError(f"decode_workers must be an int >= 1, got {decode_workers!r}")
        if detection_score_threshold is not None and not 0.0 <= detection_score_threshold <= 1.0:
            raise ValueError(
                f"detection_score_threshold must be in [0, 1], got {detection_score_threshold!r}"
            )
        if decision_threshold is not None and not 0.0 < decision_threshold < 1.0:
            raise ValueError(f"decision_threshold must be in (0, 1), got {decision_threshold!r}")
        if box_gating not in BOX_GATING_RULES:
            raise ValueError(f"box_gating must be one of {BOX_GATING_RULES}, got {box_gating!r}")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")

        # Imported here so that a missing H2 module fails at construction with a clear trace.
        from models.imaging import dicom_image, preprocess
        from models.inference import view_gate

        self._load_source_image = dicom_image.load_source_image
        self._prepare = preprocess.prepare
        self._not_analysable_reason = view_gate.not_analysable_reason

        self._device = resolve_device(device)
        if self._device.type == "cpu" and num_threads is not None:
            torch.set_num_threads(num_threads)
        if self._device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        bundles_dir = Path(bundles_dir)
        self._classifier: LoadedBundle = load_bundle(bundles_dir / classification_bundle, device=self._device)
        self._detector: LoadedBundle = load_bundle(bundles_dir / detection_bundle, device=self._device)
        if self._classifier.kind != "classification":
            raise ValueError(
                f"{self._classifier.path} is a {self._classifier.kind} bundle, expected classification"
            )
        if self._detector.kind != "detection":
            raise ValueError(f"{self._detector.path} is a {self._detector.kind} bundle, expected detection")
        self._score_threshold = (
            float(detection_score_threshold)
            if detection_score_threshold is not None
            else float(self._detector.score_threshold)  # type: ignore[arg-type]
        )
        self._decision_threshold = (
            float(decision_threshold)
            if decision_threshold is not None
            else float(self._classifier.decision_threshold)  # type: ignore[arg-type]
        )
        self._box_gating = box_gating
        self._cls_input = (self._classifier.image_size, self._classifier.preprocessing)
        self._det_input = (self._detector.image_size, self._detector.preprocessing)
        self._inputs: tuple[tuple[Any, Any], ...] = tuple(dict.fromkeys((self._cls_input, self._det_input)))
        self._positive_index = self._classifier.positive_index
        self._capture: ActivationCapture | None = None
        if heatmaps and self._classifier.heatmap_layer is not None:
            self._capture = ActivationCapture(self._classifier.network, self._classifier.heatmap_layer)
        self._models = (self._classifier.model_info, self._detector.model_info)
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0

        self._lock = threading.Lock()
        self._closed = False
        self._upstream = 0  # submitted, not yet queued or failed (guarded by _lock)
        self._stats_lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._batch_sizes: collections.Counter[int] = collections.Counter()

        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(4 * max_batch_size, 32))
        self._decode_pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="cxr-decode")
        if warmup:
            self._warmup()
        self._batch_thread = threading.Thread(target=self._batch_loop, name="cxr-batch", daemon=True)
        self._batch_thread.start()
        logger.info(
            "inference engine ready",
            extra={
                "device": str(self._device),
                "models": [f"{m.name}@{m.version}" for m in self._models],
                "max_batch_size": max_batch_size,
                "max_wait_ms": max_wait_ms,
                "decode_workers": decode_workers,
            },
        )

    # ------------------------------------------------------------------ public API
    @property
    def ready(self) -> bool:
        """True while the engine accepts work (bundles loaded, batch thread alive, not closed)."""
        return not self._closed and self._batch_thread.is_alive()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def models(self) -> tuple[ModelInfo, ...]:
        """``ModelInfo`` of the classification and the detection bundle, in that order."""
        return self._models

    @property
    def finding(self) -> FindingCode:
        """What the classifier measures (its bundle's ``finding``): named by a "not evaluated" SR too."""
        return self._classifier.finding

    @property
    def detection_score_threshold(self) -> float:
        return self._score_threshold

    @property
    def decision_threshold(self) -> float:
        """The image-level decision threshold applied to P(positive class)."""
        return self._decision_threshold

    @property
    def box_gating(self) -> str:
        return self._box_gating

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classifier's classes, in output order."""
        return self._classifier.class_names

    @property
    def bundles(self) -> tuple[LoadedBundle, LoadedBundle]:
        """The loaded (classification, detection) bundles."""
        return (self._classifier, self._detector)

    def submit(self, ds: pydicom.Dataset, *, keep_image: bool = False) -> Future[Findings]:
        """Queue one instance; the future gives its :class:`Findings` (or raises ImageDecodeError).

        ``keep_image=True`` attaches the decoded :class:`~models.imaging.dicom_image.SourceImage` to the
        returned future (read it with :func:`source_image_of` once the future is done), so the
        caller can build its overlay without decoding the pixels a second time. The engine keeps
        no reference of its own: the image lives exactly as long as the caller holds the future.
        """
        return self._enqueue(self._decode_task, ds, keep_image)

    def submit_array(self, image: Any) -> Future[Findings]:
        """Queue an already decoded :class:`~models.imaging.dicom_image.SourceImage` (no view gate)."""
        return self._enqueue(self._prepare_task, image, 0.0)

    def _enqueue(self, task: Any, item: Any, extra: Any) -> Future[Findings]:
        """Run ``task(item, future, t0, extra)`` in the decode pool; the future gives the Findings."""
        future: Future[Findings] = Future()
        t0 = time.perf_counter()
        with self._lock:
            if self._closed:
                raise RuntimeError("InferenceEngine is closed")
            self._count("submitted")
            self._upstream += 1
            self._decode_pool.submit(self._tracked, task, item, future, t0, extra)
        return future

    def analyse(self, ds: pydicom.Dataset, timeout: float | None = None) -> Findings:
        """``submit(ds).result()``."""
        return self.submit(ds).result(timeout=timeout)

    def analyse_many(
        self, datasets: Iterable[pydicom.Dataset], timeout: float | None = None
    ) -> list[Findings]:
        """Submit all, then wait for all (so they are batched); raises the first error met, in order."""
        futures = [self.submit(ds) for ds in datasets]
        return [f.result(timeout=timeout) for f in futures]

    def stats(self) -> dict[str, Any]:
        """Counters (submitted, analysed, not_analysed, decode_errors, batch_errors, batches) and
        ``batch_sizes``: histogram {batch size: number of batches run}."""
        with self._stats_lock:
            out: dict[str, Any] = {
                k: self._counts.get(k, 0)
                for k in ("submitted", "analysed", "not_analysed", "decode_errors", "batch_errors", "batches")
            }
            out["batch_sizes"] = dict(sorted(self._batch_sizes.items()))
        out["max_batch_size_seen"] = max(out["batch_sizes"], default=0)
        out["device"] = str(self._device)
        return out

    def close(self, timeout: float | None = None) -> None:
        """Finish all submitted work, then stop the threads. Idempotent.

        Called from an engine thread (e.g. in a future's done-callback) it only starts the
        shutdown; any later ``close()`` from another thread waits for it to finish.
        """
        current = threading.current_thread()
        on_engine_thread = current is self._batch_thread or current.name.startswith("cxr-decode")
        with self._lock:
            already = self._closed
            self._closed = True
        if already:
            if not on_engine_thread and self._batch_thread.is_alive():
                self._batch_thread.join(timeout)
            return
        if on_engine_thread:
            # Called from a future's callback on an engine thread: it cannot wait for itself,
            # so the draining happens on a helper thread.
            threading.Thread(
                target=self._drain_and_stop, args=(timeout,), name="cxr-close", daemon=True
            ).start()
            return
        self._drain_and_stop(timeout)

    def _drain_and_stop(self, timeout: float | None) -> None:
        self._decode_pool.shutdown(wait=True)  # every decode has queued its item (or failed)
        self._queue.put(_STOP)
        self._batch_thread.join(timeout)
        logger.info("inference engine closed", extra={"stats": self.stats()})

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ decode side
    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._counts[key] += n

    def _fail(self, future: Future, exc: BaseException, counter: str) -> None:
        self._count(counter)
        if not future.done():
            future.set_exception(exc)

    def _decode_task(self, ds: pydicom.Dataset, future: Future, t0: float, keep_image: bool = False) -> None:
        if not future.set_running_or_notify_cancel():
            return
        uid = sop_uid_of(ds)
        try:
            reason = self._not_analysable_reason(ds)
            if reason is not None:
                rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
                findings = Findings(
                    sop_instance_uid=uid,
                    analysed=False,
                    rows=rows if rows > 0 else 1,
                    columns=columns if columns > 0 else 1,
                    not_analysed_reason=reason,
                    finding=self._classifier.finding,  # what was not evaluated (named by the SR)
                    # the decision settings too: a "not evaluated" SR goes to the configuration's series
                    threshold=self._decision_threshold,
                    detection_threshold=self._score_threshold,
                    box_gating=self._box_gating,
                    models=self._models,
                    timing_ms={"total": (time.perf_counter() - t0) * 1000.0},
                )
                self._count("not_analysed")
                logger.info("not analysed", extra={"sop_instance_uid": uid, "reason": reason})
                future.set_result(findings)
                return
            t_dec = time.perf_counter()
            image = self._load_source_image(ds)
            decode_ms = (time.perf_counter() - t_dec) * 1000.0
        except ImageDecodeError as exc:
            logger.warning("decode failed", extra={"sop_instance_uid": uid, "error": str(exc)})
            self._fail(future, exc, "decode_errors")
            return
        except BaseException as exc:  # anything unexpected while decoding still names the instance
            # BaseException too: a Rust decoder's panic (pyo3 PanicException) is not an Exception,
            # and an escaped one would leave this future unresolved for ever
            logger.warning("decode failed", extra={"sop_instance_uid": uid, "error": repr(exc)})
            err = ImageDecodeError(uid, f"{type(exc).__name__}: {exc}")
            err.__cause__ = exc
            self._fail(future, err, "decode_errors")
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        if keep_image:
            setattr(future, _IMAGE_ATTR, image)  # set before the result, so a done future has it
        self._prepare_task(image, future, t0, decode_ms, running=True)

    def _prepare_task(
        self, image: Any, future: Future, t0: float, decode_ms: float, running: bool = False
    ) -> None:
        if not running and not future.set_running_or_notify_cancel():
            return
        uid = str(getattr(image, "sop_instance_uid", "") or "<unknown>")
        try:
            t_prep = time.perf_counter()
            item = _Item(future, uid, int(image.rows), int(image.columns), t0)
            for key in self._inputs:  # decode shared, prepare once per distinct input spec
                size, preprocessing = key
                arr, geom = self._prepare(image, size, preprocessing)
                arr = np.ascontiguousarray(arr, dtype=np.float32)
                if arr.shape != (1, size[0], size[1]):
                    raise ValueError(f"prepare returned shape {arr.shape}, expected {(1, *size)}")
                item.prepared[key] = (arr, geom)
            item.decode_ms = decode_ms + (time.perf_counter() - t_prep) * 1000.0
        except BaseException as exc:  # see _decode_task: never leave the future unresolved
            err = (
                exc
                if isinstance(exc, ImageDecodeError)
                else ImageDecodeError(uid, f"{type(exc).__name__}: {exc}")
            )
            if err is not exc:
                err.__cause__ = exc
            logger.warning("preprocess failed", extra={"sop_instance_uid": uid, "error": str(err)})
            self._fail(future, err, "decode_errors")
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        item.t_enqueued = time.perf_counter()
        self._queue.put(item)

    def _tracked(self, task: Any, *args: Any) -> None:
        """Run a decode-side ``task``; when it was the last submitted instance on its way, wake the
        batch thread (``_FLUSH``) so that it runs what is queued instead of waiting for more."""
        try:
            task(*args)
        finally:
            with self._lock:
                self._upstream -= 1
                idle = self._upstream == 0
            if idle:
                self._queue.put(_FLUSH)

    # ------------------------------------------------------------------ batch side
    def _batch_loop(self) -> None:
        stop = False
        while not stop:
            try:  # an item already waiting: the engine is busy, fill batches as before
                first, busy = self._queue.get_nowait(), True
            except queue.Empty:  # idle until this item came: run it as soon as nothing else is on its way
                first, busy = self._queue.get(), False
            if first is _STOP:
                break
            if first is _FLUSH:
                continue
            batch = [first]
            deadline = time.perf_counter() + self._max_wait_s
            while len(batch) < self._max_batch_size:
                if not busy and self._upstream == 0 and self._queue.empty():
                    break  # nothing else submitted: waiting could not fill the batch
                remaining = deadline - time.perf_counter()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                if nxt is _FLUSH:
                    # nothing else on its way: waiting could not fill the batch, busy or not (a lone
                    # image queued while the previous batch was still finishing looked "busy" and
                    # waited max_wait_ms: two tests timed out so in full-suite runs, 2026-11-27)
                    if self._upstream == 0:
                        break
                    continue  # more were submitted since: keep filling
                batch.append(nxt)
            self._run_batch_safely(batch)

    def _run_batch_safely(self, batch: list[_Item]) -> None:
        try:
            self._run_batch(batch)
        except BaseException as exc:  # never let the batch thread die
            if len(batch) > 1:
                logger.warning(
                    "batch failed, retrying its items one by one",
                    extra={"batch_size": len(batch), "error": repr(exc)},
                )
                for item in batch:
                    self._run_batch_safely([item])
                return
            item = batch[0]
            logger.error(
                "inference failed", extra={"sop_instance_uid": item.sop_instance_uid, "error": repr(exc)}
            )
            err = (
                exc
                if isinstance(exc, InferenceCoreError)
                else RuntimeError(
                    f"inference failed for SOP Instance {item.sop_instance_uid}: {type(exc).__name__}: {exc}"
                )
            )
            if err is not exc:
                err.__cause__ = exc
            self._fail(item.future, err, "batch_errors")

    def _to_device(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        host = torch.from_numpy(np.stack(arrays, axis=0))
        if self._device.type == "cuda":
            return host.pin_memory().to(self._device, non_blocking=True)
        return host

    def _autocast(self) -> Any:
        if self._device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()

    def _classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Classifier logits (float32) and, when heatmaps are on, the captured layer activations."""
        network = self._classifier.network
        x = self._classifier.preprocessing.network_input(x)
        if self._capture is None:
            with torch.inference_mode(), self._autocast():
                logits = network(x)
            return _first(logits).float(), None
        # No inference_mode: the capture hook starts an autograd graph at the heatmap layer, so
        # that Grad-CAM only back-propagates through the network's tail (weights need no grads).
        with torch.enable_grad(), self._capture, self._autocast():
            logits = network(x)
        return _first(logits).float(), self._capture.activations

    def _run_batch(self, batch: list[_Item]) -> None:
        t_start = time.perf_counter()
        logits, activations = self._classify(
            self._to_device([it.prepared[self._cls_input][0] for it in batch])
        )
        probs = torch.softmax(logits.detach(), dim=1).cpu().numpy()
        n_classes = len(self._classifier.class_names)
        if probs.shape != (len(batch), n_classes):
            raise RuntimeError(f"classifier output shape {probs.shape}, expected {(len(batch), n_classes)}")
        positive = probs[:, self._positive_index] >= self._decision_threshold
        cams: dict[int, np.ndarray] = {}
        if activations is not None and positive.any():
            rows = [int(i) for i in np.flatnonzero(positive)]
            cams = dict(zip(rows, grad_cam(logits, activations, self._positive_index, rows), strict=True))
        t_cls = time.perf_counter()
        with torch.inference_mode():
            x = self._to_device([it.prepared[self._det_input][0] for it in batch])
            x = self._detector.preprocessing.network_input(x)
            with self._autocast():
                detections = self._detector.detector(x)  # type: ignore[misc]
            dets = [
                (d["boxes"].float().cpu().numpy(), d["labels_scores"].float().cpu().numpy())
                for d in detections
            ]
        t_det = time.perf_counter()
        if len(dets) != len(batch):
            raise RuntimeError(f"detector returned {len(dets)} results for a batch of {len(batch)}")
        classify_ms = (t_cls - t_start) * 1000.0
        detect_ms = (t_det - t_cls) * 1000.0
        with self._stats_lock:
            self._counts["batches"] += 1
            self._batch_sizes[len(batch)] += 1
        logger.debug(
            "batch done",
            extra={
                "batch_size": len(batch),
                "classify_ms": round(classify_ms, 1),
                "detect_ms": round(detect_ms, 1),
                "heatmaps": len(cams),
            },
        )
        # Build every result before resolving any future, so a failure here retries cleanly.
        results: list[Findings] = []
        for i, item in enumerate(batch):
            reported = bool(positive[i]) or self._box_gating == "all"
            boxes = self._boxes_for(item, *dets[i]) if reported else ()
            p = {name: float(v) for name, v in zip(self._classifier.class_names, probs[i], strict=True)}
            t_done = time.perf_counter()
            results.append(
                Findings(
                    sop_instance_uid=item.sop_instance_uid,
                    analysed=True,
                    rows=item.rows,
                    columns=item.columns,
                    class_probabilities=p,
                    probability=float(probs[i][self._positive_index]),
                    finding=self._classifier.finding,
                    threshold=self._decision_threshold,
                    boxes=boxes,
                    detection_threshold=self._score_threshold,
                    box_gating=self._box_gating,
                    heatmap=self._heatmap_for(item, cams.get(i)),
                    classifier_region=self._classifier_region(item),
                    models=self._models,
                    timing_ms={
                        "decode": item.decode_ms,
                        "queue": (t_start - item.t_enqueued) * 1000.0,
                        "classify": classify_ms,
                        "detect": detect_ms,
                        "total": (t_done - item.t_submit) * 1000.0,
                    },
                )
            )
        for item, findings in zip(batch, results, strict=True):
            self._count("analysed")
            if not item.future.done():
                item.future.set_result(findings)

    def _classifier_region(self, item: _Item) -> tuple[float, float, float, float]:
        """The source pixels the classifier saw: its centre crop, or (letterbox) the whole image."""
        geometry = item.prepared[self._cls_input][1]
        if hasattr(geometry, "region"):
            return geometry.region()  # type: ignore[no-any-return]
        return 0.0, 0.0, float(item.columns), float(item.rows)

    def _heatmap_for(self, item: _Item, cam: np.ndarray | None) -> Heatmap | None:
        """The heatmap of one image, placed over the source pixels its classifier input shows."""
        if cam is None:
            return None
        geometry = item.prepared[self._cls_input][1]
        if hasattr(geometry, "region"):  # centre crop: the square the classifier saw
            x, y, w, h = geometry.region()
        else:  # letterbox: the whole model input, padding included, in source pixels
            x, y, w, h = geometry.box_to_source(0.0, 0.0, float(geometry.model_width), float(geometry.model_height))
        return Heatmap(cam, x, y, w, h)

    def _boxes_for(self, item: _Item, boxes: np.ndarray, scores: np.ndarray) -> tuple[Box, ...]:
        geom = item.prepared[self._det_input][1]
        return boxes_to_source(
            boxes, scores, geom, box_format=self._detector.box_format, score_threshold=self._score_threshold
        )

    def _warmup(self) -> None:
        """Run one dummy batch of zeros through both models (cudnn autotune, lazy init)."""
        with torch.inference_mode():
            for bundle in (self._classifier, self._detector):
                h, w = bundle.image_size
                x = self._to_device([np.zeros((1, h, w), dtype=np.float32)])
                with self._autocast():
                    (bundle.detector or bundle.network)(x)


def _first(output: Any) -> torch.Tensor:
    """A network's output tensor (some networks return a tuple whose first item is the logits)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def boxes_to_source(
    boxes: np.ndarray,
    scores: np.ndarray,
    geometry: Any,
    *,
    box_format: str,
    score_threshold: float,
) -> tuple[Box, ...]:
    """Detector output → reported :class:`Box` es in source pixels, highest score first.

    ``boxes`` (k×4, model-input pixels, in ``box_format``) are mapped back with the
    :class:`~models.imaging.geometry.ResizeGeometry` of that image, clipped to the source image
    (``[0, columns] × [0, rows]``) and given millimetres when the image has a spacing. Boxes
    scoring below ``score_threshold``, non-finite ones and ones empty after clipping are dropped.
    """
    out: list[Box] = []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"got {len(boxes)} boxes but {len(scores)} scores")
    for j in np.argsort(-scores, kind="stable"):
        if not np.isfinite(scores[j]) or scores[j] < score_threshold:
            continue
        score = float(np.clip(scores[j], 0.0, 1.0))
        x1, y1, x2, y2 = detector_box_to_xyxy(boxes[j], box_format)
        if not all(np.isfinite((x1, y1, x2, y2))) or x2 <= x1 or y2 <= y1:
            continue
        clipped = geometry.xyxy_model_to_source(x1, y1, x2, y2)  # source pixels, clipped to the image
        if clipped is None or clipped[2] < _MIN_BOX_SIDE or clipped[3] < _MIN_BOX_SIDE:
            continue
        bx, by, bw, bh = clipped
        out.append(Box(bx, by, bw, bh, score=score, mm=geometry.box_to_mm(bx, by, bw, bh)))
    return tuple(out)


def default_bundles_dir() -> Path:
    """``$CXR_NODE_BUNDLES_DIR`` if set, else ``monai_bundles/`` next to the ``models`` package."""
    env = os.environ.get("CXR_NODE_BUNDLES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "monai_bundles"
