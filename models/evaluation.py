"""Evaluate the two bundles through the real inference path and write a report.

:func:`evaluate` runs :class:`models.engine.InferenceEngine` (the same code the DICOM
node uses) on one split of an RSNA-layout data set — or on a PneumoniaMNIST ``.npz``
split, submitting decoded arrays with ``InferenceEngine.submit_array`` — and writes to
the report folder:

* ``predictions.csv`` – one row per image: truth, status, class probabilities, boxes
  (every box the engine returned at the evaluation floor ``box_floor``);
* ``report.json`` – every figure, computed by :func:`compute_report` from the rows
  *read back* from ``predictions.csv`` (so the file and the report always agree);
* ``report.md`` – the same as tables, next to the figures published on the real RSNA
  data by the seed reports (clearly labelled as not comparable);
* PNG plots (see :mod:`models.evaluation_plots`).

Conventions: the pneumonia score is ``Findings.pneumonia_probability`` (= P(Lung
Opacity)); ``score >= threshold`` is a positive call. Images the engine does not
analyse (view gate) or cannot decode are counted and left out of the metrics. The RSNA
challenge metric and the detection recall use the boxes at or above the detection
bundle's reporting threshold (what the node would report); mAP@0.5 ranks every box at
or above ``box_floor``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics
from models.findings import RSNA_CLASSES
from models.split import SPLIT_NAMES, read_split, split_patients, validate_fractions

logger = logging.getLogger(__name__)

Box4 = tuple[float, float, float, float]
PredBox = tuple[float, float, float, float, float]

STATUSES: tuple[str, str, str] = ("analysed", "not_analysed", "failed")
#: Fixed thresholds on the pneumonia probability reported besides the Youden-optimal one.
FIXED_THRESHOLDS: tuple[float, ...] = (0.5, 0.25)
#: Box score thresholds of the RSNA-metric sweep in the report.
RSNA_SWEEP_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Figures published on the real RSNA Pneumonia Detection Challenge data (seed reports).
PUBLISHED_RSNA_REFERENCE: tuple[dict[str, Any], ...] = (
    {
        "model": "DenseNet-121 (CheXNet-style)",
        "task": "classification",
        "auc": 0.895,
        "f1": 0.63,
        "precision": 0.72,
        "recall": 0.55,
    },
    {
        "model": "ResNet-18",
        "task": "classification",
        "threshold": 0.5,
        "accuracy": 0.85,
        "precision": 0.73,
        "recall": 0.52,
    },
    {"model": "Faster R-CNN ResNet-50", "task": "detection", "map": 0.383},
)
REFERENCE_CAVEAT = (
    "Published on the real RSNA Pneumonia Detection Challenge data by the seed reports; "
    "NOT comparable with results on synthetic phantoms (or with other splits / metric definitions)."
)
_CSV_COLUMNS = (
    "patient_id",
    "sop_instance_uid",
    "image",
    "target",
    "class",
    "status",
    "reason",
    "rows",
    "columns",
    "p_normal",
    "p_not_normal",
    "p_lung_opacity",
    "pneumonia_probability",
    "gt_boxes",
    "pred_boxes",
)
PLOT_FILES: dict[str, str] = {
    "roc": "roc.png",
    "pr": "precision_recall.png",
    "confusion_0.5": "confusion_t0.50.png",
    "confusion_0.25": "confusion_t0.25.png",
    "confusion_3class": "confusion_3class.png",
    "calibration": "calibration.png",
    "samples": "samples.png",
}


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class ImagePrediction:
    """Truth and engine output for one image (one row of ``predictions.csv``)."""

    patient_id: str
    sop_instance_uid: str
    #: DICOM path, or ``npz:<file>:<split>:<index>`` for PneumoniaMNIST.
    image: str
    target: int
    klass: str | None
    status: str
    reason: str | None = None
    rows: int = 0
    columns: int = 0
    #: Probabilities in ``RSNA_CLASSES`` order (analysed only).
    class_probabilities: tuple[float, float, float] | None = None
    pneumonia_probability: float | None = None
    gt_boxes: tuple[Box4, ...] = ()
    pred_boxes: tuple[PredBox, ...] = ()

    def __post_init__(self) -> None:
        if not self.patient_id:
            raise ValueError("ImagePrediction needs a patient_id")
        if self.target not in (0, 1):
            raise ValueError(f"target must be 0 or 1, got {self.target!r} (patient {self.patient_id})")
        if self.klass is not None and self.klass not in RSNA_CLASSES:
            raise ValueError(f"class must be one of {RSNA_CLASSES} or None, got {self.klass!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        object.__setattr__(self, "gt_boxes", tuple(tuple(float(v) for v in b) for b in self.gt_boxes))
        object.__setattr__(self, "pred_boxes", tuple(tuple(float(v) for v in b) for b in self.pred_boxes))
        if self.status == "analysed":
            if self.pneumonia_probability is None or self.class_probabilities is None:
                raise ValueError(f"an analysed prediction needs probabilities (patient {self.patient_id})")
            probs = tuple(float(p) for p in self.class_probabilities)
            if len(probs) != len(RSNA_CLASSES) or not all(0.0 <= p <= 1.0 for p in probs):
                raise ValueError(
                    f"class_probabilities must be {len(RSNA_CLASSES)} values in [0, 1], got {probs!r}"
                )
            object.__setattr__(self, "class_probabilities", probs)
            if not 0.0 <= float(self.pneumonia_probability) <= 1.0:
                raise ValueError(
                    f"pneumonia_probability must be in [0, 1], got {self.pneumonia_probability!r}"
                )
        else:
            if not self.reason:
                raise ValueError(f"a {self.status} prediction must say why (patient {self.patient_id})")
            if self.pneumonia_probability is not None or self.pred_boxes:
                raise ValueError(
                    f"a {self.status} prediction cannot carry scores (patient {self.patient_id})"
                )


@dataclass(frozen=True)
class EvaluationConfig:
    """What ``cxr-node evaluate`` was asked to do."""

    out_dir: Path
    bundles_dir: Path
    data_dir: Path | None = None
    split: str = "test"
    split_file: Path | None = None
    #: None: the seed recorded in the classification bundle's metadata, else 0.
    seed: int | None = None
    fractions: tuple[float, float, float] | None = None
    npz: Path | None = None
    npz_split: str = "test"
    device: str = "auto"
    max_images: int | None = None
    #: The engine reports boxes at or above this (mAP ranks all of them).
    box_floor: float = 0.05
    n_boot: int = 2000
    bootstrap_seed: int = 0
    calibration_bins: int = 10
    num_threads: int | None = None
    max_batch_size: int = 8
    in_flight: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "bundles_dir", Path(self.bundles_dir))
        for name in ("data_dir", "split_file", "npz"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, Path(v))
        if (self.data_dir is None) == (self.npz is None):
            raise ValueError(f"give exactly one of data_dir and npz, got {self.data_dir!r} and {self.npz!r}")
        if self.split not in (*SPLIT_NAMES, "all"):
            raise ValueError(f"split must be train, val, test or all, got {self.split!r}")
        if self.npz_split not in SPLIT_NAMES:
            raise ValueError(f"npz_split must be train, val or test, got {self.npz_split!r}")
        if self.fractions is not None:
            object.__setattr__(self, "fractions", validate_fractions(self.fractions))
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 1):
            raise ValueError(f"max_images must be a positive int, got {self.max_images!r}")
        if not 0.0 <= self.box_floor <= 1.0:
            raise ValueError(f"box_floor must be in [0, 1], got {self.box_floor!r}")
        if not isinstance(self.n_boot, int) or self.n_boot < 1:
            raise ValueError(f"n_boot must be a positive int, got {self.n_boot!r}")
        if not isinstance(self.in_flight, int) or self.in_flight < 1:
            raise ValueError(f"in_flight must be a positive int, got {self.in_flight!r}")


# --------------------------------------------------------------------------- split selection


def bundle_split_file(bundles_dir: Path, bundle: str = "cxr_classification") -> Path | None:
    """``split.json`` that ``cxr-node train`` left in the bundle folder, or None."""
    path = Path(bundles_dir) / bundle / "split.json"
    return path if path.is_file() else None


def training_split_from_metadata(bundles_dir: Path, bundle: str = "cxr_classification") -> dict[str, Any]:
    """Split seed/fractions that training recorded in the bundle's ``configs/metadata.json``.

    Read from ``cxr_node.training.split`` (``seed``, ``fractions``; written by
    ``models.training``), with ``n_patients`` from ``cxr_node.training.data``. Returns ``{}``
    when nothing is recorded (e.g. placeholder weights).
    """
    path = Path(bundles_dir) / bundle / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    node = meta.get("cxr_node") if isinstance(meta, dict) else None
    training = node.get("training") if isinstance(node, dict) else None
    split = training.get("split") if isinstance(training, dict) else None
    if not isinstance(split, dict):
        return {}
    out: dict[str, Any] = {"bundle": bundle}
    seed = split.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        out["seed"] = seed
    if isinstance(split.get("fractions"), (list, tuple)):
        try:
            out["fractions"] = validate_fractions(split["fractions"])
        except ValueError:
            logger.warning(
                "ignoring bad split fractions in bundle metadata", extra={"value": split["fractions"]}
            )
    data = training.get("data") if isinstance(training, dict) else None  # type: ignore[union-attr]
    if isinstance(data, dict) and isinstance(data.get("n_patients"), int):
        out["n_patients"] = data["n_patients"]
    return out


def select_patients(
    labels: Mapping[str, Any],
    *,
    split: str,
    split_file: Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    max_images: int | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Patient ids of ``split`` (sorted; the first ``max_images`` of them when given) and a description."""
    info: dict[str, Any] = {"name": split}
    if split == "all":
        pids = sorted(labels)
        info["source"] = "all patients"
    else:
        if split_file is not None:
            chosen = read_split(split_file)
            info.update(source="split_file", split_file=str(split_file))
        else:
            chosen = split_patients(labels, seed=seed, fractions=fractions)
            info.update(source="split_patients", seed=int(seed), fractions=list(fractions))
        pids = sorted(chosen[split])
        missing = [p for p in pids if p not in labels]
        if missing:
            logger.warning(
                "split lists patients absent from the data",
                extra={"n_missing": len(missing), "split": split},
            )
            pids = [p for p in pids if p in labels]
            info["n_missing_from_data"] = len(missing)
        info["sizes"] = {k: len(v) for k, v in chosen.items()}
    if not pids:
        raise ValueError(f"split {split!r} selects no patient of the data ({len(labels)} patients)")
    if max_images is not None:
        pids = pids[:max_images]
        info["max_images"] = int(max_images)
    info["n_selected"] = len(pids)
    return pids, info


# --------------------------------------------------------------------------- running the engine


def _from_findings(base: dict[str, Any], findings: Any) -> ImagePrediction:
    if not findings.analysed:
        return ImagePrediction(
            **base,
            status="not_analysed",
            reason=findings.not_analysed_reason,
            rows=findings.rows,
            columns=findings.columns,
        )
    probs = tuple(float(findings.class_probabilities[c]) for c in RSNA_CLASSES)
    boxes = tuple((b.x, b.y, b.width, b.height, b.score) for b in findings.boxes)
    return ImagePrediction(
        **{**base, "sop_instance_uid": findings.sop_instance_uid},
        status="analysed",
        rows=findings.rows,
        columns=findings.columns,
        class_probabilities=probs,  # type: ignore[arg-type]
        pneumonia_probability=float(findings.pneumonia_probability),
        pred_boxes=boxes,
    )


def _drain(pending: list[tuple[dict[str, Any], Any]], out: list[ImagePrediction], keep: int) -> None:
    while len(pending) > keep:
        base, fut = pending.pop(0)
        try:
            findings = fut.result()
        except Exception as exc:  # decode errors, a failed batch: counted, not fatal
            logger.warning("image failed", extra={"image": base["image"], "error": str(exc)})
            out.append(ImagePrediction(**base, status="failed", reason=f"{type(exc).__name__}: {exc}"))
            continue
        out.append(_from_findings(base, findings))


def predict_rsna(engine: Any, labels: Sequence[Any], *, in_flight: int = 16) -> list[ImagePrediction]:
    """Run ``engine.submit`` on each patient's DICOM (at most ``in_flight`` pending); input order kept."""
    import pydicom

    out: list[ImagePrediction] = []
    pending: list[tuple[dict[str, Any], Any]] = []
    for lab in labels:
        base = {
            "patient_id": lab.patient_id,
            "sop_instance_uid": "",
            "image": str(lab.image_path),
            "target": int(lab.target),
            "klass": lab.klass,
            "gt_boxes": tuple(lab.boxes),
        }
        try:
            ds = pydicom.dcmread(lab.image_path)
            base["sop_instance_uid"] = str(ds.get("SOPInstanceUID", "") or "")
            fut = engine.submit(ds)
        except Exception as exc:
            _drain(pending, out, 0)
            logger.warning("cannot read image", extra={"image": str(lab.image_path), "error": str(exc)})
            out.append(ImagePrediction(**base, status="failed", reason=f"{type(exc).__name__}: {exc}"))
            continue
        pending.append((base, fut))
        _drain(pending, out, in_flight)
    _drain(pending, out, 0)
    return out


def load_npz_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 N×H×W, labels int N)`` of one split of a PneumoniaMNIST-layout ``.npz``."""
    with np.load(path) as data:
        key_i, key_l = f"{split}_images", f"{split}_labels"
        if key_i not in data or key_l not in data:
            raise ValueError(f"{path} has no {key_i}/{key_l}, keys are {sorted(data.keys())}")
        images = np.asarray(data[key_i])
        labels = np.asarray(data[key_l]).reshape(-1).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{path}: {key_i} must be N×H×W matching {key_l}, got {images.shape} and {labels.shape}"
        )
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        raise ValueError(f"{path}: {key_l} must be 0/1, got {sorted(set(labels.tolist()))}")
    return images, labels


def npz_source_image(image: np.ndarray, uid: str) -> Any:
    """A ``SourceImage`` from one 8-bit greyscale array (0 = black); the engine resizes it."""
    from models.dicom_image import SourceImage

    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    scale = 255.0 if arr.dtype == np.uint8 or arr.max() > 1.0 else 1.0
    pixels = np.ascontiguousarray(arr.astype(np.float32) / np.float32(scale))
    return SourceImage(pixels=pixels, rows=arr.shape[0], columns=arr.shape[1], sop_instance_uid=uid)


def predict_npz(
    engine: Any, path: Path, split: str, *, max_images: int | None = None, in_flight: int = 16
) -> list[ImagePrediction]:
    """Run ``engine.submit_array`` on a PneumoniaMNIST split (label 1 = pneumonia = positive)."""
    images, labels = load_npz_split(path, split)
    n = len(labels) if max_images is None else min(len(labels), max_images)
    out: list[ImagePrediction] = []
    pending: list[tuple[dict[str, Any], Any]] = []
    for i in range(n):
        uid = f"npz-{split}-{i:05d}"
        base = {
            "patient_id": f"{split}-{i:05d}",
            "sop_instance_uid": uid,
            "image": f"npz:{Path(path).name}:{split}:{i}",
            "target": int(labels[i]),
            "klass": None,
            "gt_boxes": (),
        }
        pending.append((base, engine.submit_array(npz_source_image(images[i], uid))))
        _drain(pending, out, in_flight)
    _drain(pending, out, 0)
    return out


# --------------------------------------------------------------------------- predictions.csv


def _fmt(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def write_predictions_csv(path: Path, predictions: Iterable[ImagePrediction]) -> Path:
    """Write one row per image; floats are written with ``repr`` (exact round trip)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(_CSV_COLUMNS)
        for p in predictions:
            probs = p.class_probabilities or (None, None, None)
            w.writerow(
                [
                    p.patient_id,
                    p.sop_instance_uid,
                    p.image,
                    p.target,
                    p.klass or "",
                    p.status,
                    p.reason or "",
                    p.rows,
                    p.columns,
                    *(_fmt(v) for v in probs),
                    _fmt(p.pneumonia_probability),
                    json.dumps([list(b) for b in p.gt_boxes]),
                    json.dumps([list(b) for b in p.pred_boxes]),
                ]
            )
    os.replace(tmp, path)
    return path


def read_predictions_csv(path: Path) -> list[ImagePrediction]:
    """Read ``predictions.csv`` back into :class:`ImagePrediction` rows."""
    out: list[ImagePrediction] = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != _CSV_COLUMNS:
            raise ValueError(
                f"{path}: unexpected header {reader.fieldnames!r}, expected {list(_CSV_COLUMNS)}"
            )
        for row in reader:

            def num(key: str, row: dict[str, str] = row) -> float | None:
                return float(row[key]) if row[key] != "" else None

            probs = (num("p_normal"), num("p_not_normal"), num("p_lung_opacity"))
            out.append(
                ImagePrediction(
                    patient_id=row["patient_id"],
                    sop_instance_uid=row["sop_instance_uid"],
                    image=row["image"],
                    target=int(row["target"]),
                    klass=row["class"] or None,
                    status=row["status"],
                    reason=row["reason"] or None,
                    rows=int(row["rows"]),
                    columns=int(row["columns"]),
                    class_probabilities=None if probs[0] is None else probs,  # type: ignore[arg-type]
                    pneumonia_probability=num("pneumonia_probability"),
                    gt_boxes=tuple(tuple(b) for b in json.loads(row["gt_boxes"])),
                    pred_boxes=tuple(tuple(b) for b in json.loads(row["pred_boxes"])),
                )
            )
    return out


# --------------------------------------------------------------------------- metrics


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def classification_section(
    analysed: Sequence[ImagePrediction], *, n_boot: int, bootstrap_seed: int, calibration_bins: int
) -> dict[str, Any]:
    """Binary (pneumonia) and, when every image has its RSNA class, 3-class figures."""
    y = np.array([p.target for p in analysed], dtype=np.int64)
    s = np.array([p.pneumonia_probability for p in analysed], dtype=np.float64)
    n_pos = int(y.sum())
    sec: dict[str, Any] = {"n": int(y.size), "n_positive": n_pos, "n_negative": int(y.size - n_pos)}
    if y.size == 0 or n_pos in (0, y.size):
        sec["available"] = False
        sec["reason"] = f"needs both classes, got {n_pos} positives of {y.size}"
        return sec
    sec["available"] = True
    sec["roc_auc"] = metrics.roc_auc(y, s)
    lo, hi = metrics.bootstrap_auc_ci(y, s, n_boot=n_boot, seed=bootstrap_seed, alpha=0.05)
    sec["roc_auc_ci95"] = [lo, hi]
    sec["bootstrap"] = {
        "method": "stratified percentile bootstrap (positives and negatives resampled separately)",
        "n_boot": n_boot,
        "seed": bootstrap_seed,
    }
    sec["average_precision"] = metrics.average_precision(y, s)
    sec["brier_score"] = metrics.brier_score(y, s)
    frac, mean, count = metrics.calibration_curve(y, s, calibration_bins)
    sec["calibration"] = {
        "n_bins": calibration_bins,
        "fraction_positive": frac.tolist(),
        "mean_predicted": mean.tolist(),
        "count": count.tolist(),
    }
    youden = metrics.youden_threshold(y, s)
    sec["youden_threshold"] = youden
    sec["at_threshold"] = {f"{t:g}": metrics.binary_report(y, s, t) for t in FIXED_THRESHOLDS}
    sec["at_threshold"]["youden"] = metrics.binary_report(y, s, youden)
    sec["youden_note"] = (
        "chosen on this evaluation set itself: optimistic; fix thresholds on a validation split"
    )
    if all(p.klass is not None for p in analysed):
        y3 = np.array([RSNA_CLASSES.index(p.klass) for p in analysed], dtype=np.int64)  # type: ignore[arg-type]
        probs = np.array([p.class_probabilities for p in analysed], dtype=np.float64)
        sec["multiclass"] = metrics.multiclass_report(y3, probs, RSNA_CLASSES)
    else:
        sec["multiclass"] = None
    return sec


def detection_pairs(
    analysed: Sequence[ImagePrediction], score_threshold: float = 0.0
) -> list[tuple[tuple[Box4, ...], list[PredBox]]]:
    """``(gt_boxes, predicted boxes with score >= score_threshold)`` per analysed image."""
    return [(p.gt_boxes, [b for b in p.pred_boxes if b[4] >= score_threshold]) for p in analysed]


def detection_section(analysed: Sequence[ImagePrediction], *, operating_threshold: float) -> dict[str, Any]:
    """RSNA challenge metric, mAP@0.5 and recall at IoU 0.4."""
    at_op = detection_pairs(analysed, operating_threshold)
    all_boxes = detection_pairs(analysed, 0.0)
    image_scores = [metrics.rsna_image_score(g, p) for g, p in at_op]
    scored = [v for v in image_scores if v is not None]
    pos = [v for (g, _), v in zip(at_op, image_scores, strict=True) if g and v is not None]
    return {
        "n_images": len(analysed),
        "n_images_with_boxes": sum(1 for p in analysed if p.gt_boxes),
        "n_gt_boxes": sum(len(p.gt_boxes) for p in analysed),
        "n_pred_boxes_at_operating_threshold": sum(len(p) for _, p in at_op),
        "n_pred_boxes_all": sum(len(p) for _, p in all_boxes),
        "operating_threshold": operating_threshold,
        "rsna_iou_thresholds": list(metrics.RSNA_IOU_THRESHOLDS),
        "rsna_map": metrics.rsna_map(at_op),
        "rsna_n_images_scored": len(scored),
        "rsna_map_images_with_truth": float(np.mean(pos)) if pos else float("nan"),
        "rsna_map_by_score_threshold": {
            f"{t:g}": metrics.rsna_map(detection_pairs(analysed, t)) for t in RSNA_SWEEP_THRESHOLDS
        },
        "map_at_iou_0.5": metrics.map_at_iou(all_boxes, iou=0.5),
        "recall_at_iou_0.4": metrics.detection_recall(
            all_boxes, iou=0.4, score_threshold=operating_threshold
        ),
    }


def compute_report(
    predictions: Sequence[ImagePrediction],
    *,
    operating_threshold: float | None,
    n_boot: int = 2000,
    bootstrap_seed: int = 0,
    calibration_bins: int = 10,
    detection: bool = True,
) -> dict[str, Any]:
    """Every figure of the report, from the per-image predictions (pure; no I/O)."""
    analysed = [p for p in predictions if p.status == "analysed"]
    counts = {s: sum(1 for p in predictions if p.status == s) for s in STATUSES}
    report: dict[str, Any] = {
        "n_images": len(predictions),
        "n_analysed": counts["analysed"],
        "n_not_analysed": counts["not_analysed"],
        "n_failed": counts["failed"],
        "classification": classification_section(
            analysed, n_boot=n_boot, bootstrap_seed=bootstrap_seed, calibration_bins=calibration_bins
        ),
        "detection": None,
    }
    if detection:
        if operating_threshold is None:
            raise ValueError("detection metrics need the operating (reporting) threshold, got None")
        report["detection"] = detection_section(analysed, operating_threshold=float(operating_threshold))
    return report


# --------------------------------------------------------------------------- markdown


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the report as tables."""
    lines: list[str] = ["# cxr-ai-node evaluation report", ""]
    data = report.get("data", {})
    models_text = ", ".join(f"{m['name']} {m['version']}" for m in report.get("models", [])) or "–"
    lines += [
        f"- created: {report.get('created_utc', '–')}",
        f"- data: `{data.get('source', '–')}` ({data.get('kind', '–')}"
        + (", **synthetic phantoms**" if data.get("synthetic") else "")
        + ")",
        f"- split: {json.dumps(report.get('split', {}))}",
        f"- models: {models_text}",
        f"- device: {report.get('device', '–')}",
        f"- images: {report['n_images']} (analysed {report['n_analysed']}, not analysed "
        f"{report['n_not_analysed']}, failed {report['n_failed']})",
        "",
        *(
            [f"**Warning:** {report['split']['warning']}", ""]
            if report.get("split", {}).get("warning")
            else []
        ),
        "Positive class: pneumonia = RSNA `Lung Opacity` (score = P(Lung Opacity)); a score ≥ threshold is positive.",
        "",
        "## Classification (pneumonia)",
        "",
    ]
    cls = report["classification"]
    if not cls.get("available"):
        lines += [f"Not available: {cls.get('reason')}.", ""]
    else:
        lo, hi = cls["roc_auc_ci95"]
        lines += [
            "| metric | value |",
            "|---|---|",
            f"| images (positive / negative) | {cls['n']} ({cls['n_positive']} / {cls['n_negative']}) |",
            f"| ROC AUC (95% CI) | {_f(cls['roc_auc'])} ({_f(lo)}–{_f(hi)}) |",
            f"| average precision | {_f(cls['average_precision'])} |",
            f"| Brier score | {_f(cls['brier_score'])} |",
            "",
            f"CI: {cls['bootstrap']['method']}, {cls['bootstrap']['n_boot']} replicates, "
            f"seed {cls['bootstrap']['seed']}.",
            "",
            "| threshold | precision | recall (sensitivity) | specificity | F1 | accuracy | TP | FP | TN | FN |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, r in cls["at_threshold"].items():
            name = f"Youden {_f(r['threshold'])}" if key == "youden" else key
            lines.append(
                f"| {name} | {_f(r['precision'])} | {_f(r['recall'])} | {_f(r['specificity'])} | {_f(r['f1'])} "
                f"| {_f(r['accuracy'])} | {r['tp']} | {r['fp']} | {r['tn']} | {r['fn']} |"
            )
        lines += ["", f"Youden threshold: {cls['youden_note']}.", ""]
        mc = cls.get("multiclass")
        if mc:
            lines += [
                "### 3-class report (argmax)",
                "",
                "| class | precision | recall | F1 | support | one-vs-rest AUC |",
                "|---|---|---|---|---|---|",
            ]
            for name, pc in mc["per_class"].items():
                lines.append(
                    f"| {name} | {_f(pc['precision'])} | {_f(pc['recall'])} | {_f(pc['f1'])} | {pc['support']} "
                    f"| {_f(pc['auc_ovr'])} |"
                )
            lines += [
                f"| **accuracy** | | | | {mc['n']} | {_f(mc['accuracy'])} |",
                "",
                "Confusion matrix (rows = truth, columns = prediction):",
                "",
                "| truth \\ predicted | " + " | ".join(mc["class_names"]) + " |",
                "|---" * (len(mc["class_names"]) + 1) + "|",
            ]
            for name, row in zip(mc["class_names"], mc["confusion_matrix"], strict=True):
                lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
            lines.append("")
    det = report.get("detection")
    lines += ["## Detection (lung opacity boxes)", ""]
    if not det:
        lines += ["Not evaluated (no box labels in this data).", ""]
    else:
        lines += [
            "| metric | value |",
            "|---|---|",
            f"| images (with boxes) | {det['n_images']} ({det['n_images_with_boxes']}) |",
            f"| truth boxes | {det['n_gt_boxes']} |",
            f"| predicted boxes ≥ operating threshold {_f(det['operating_threshold'], 2)} "
            f"| {det['n_pred_boxes_at_operating_threshold']} |",
            f"| RSNA challenge metric (mean over IoU 0.40–0.75) | {_f(det['rsna_map'])} "
            f"({det['rsna_n_images_scored']} images scored) |",
            f"| RSNA metric, images with truth boxes only | {_f(det['rsna_map_images_with_truth'])} |",
            f"| mAP@0.5 (all boxes ≥ floor, all-point interpolation) | {_f(det['map_at_iou_0.5'])} |",
            f"| recall at IoU > 0.4 (boxes ≥ operating threshold) | {_f(det['recall_at_iou_0.4'])} |",
            "",
            "RSNA metric by box score threshold: "
            + ", ".join(f"{k}: {_f(v)}" for k, v in det["rsna_map_by_score_threshold"].items()),
            "",
        ]
    lines += _reference_table(report)
    plots = report.get("files", {}).get("plots", {})
    if plots:
        lines += ["## Plots", ""]
        for key, name in plots.items():
            lines.append(f"![{key}]({name})")
        lines.append("")
    return "\n".join(lines) + "\n"


def _reference_table(report: Mapping[str, Any]) -> list[str]:
    cls = report["classification"]
    det = report.get("detection") or {}
    at5 = cls.get("at_threshold", {}).get("0.5", {}) if cls.get("available") else {}
    dn, rn, fr = PUBLISHED_RSNA_REFERENCE
    ours = "this evaluation" + (" (synthetic phantoms)" if report.get("data", {}).get("synthetic") else "")
    rows = [
        ("ROC AUC", cls.get("roc_auc"), dn.get("auc"), None, None),
        ("F1 @ 0.5", at5.get("f1"), dn.get("f1"), None, None),
        ("precision @ 0.5", at5.get("precision"), dn.get("precision"), rn.get("precision"), None),
        ("recall @ 0.5", at5.get("recall"), dn.get("recall"), rn.get("recall"), None),
        ("accuracy @ 0.5", at5.get("accuracy"), None, rn.get("accuracy"), None),
        ("detection mAP (ours: RSNA metric)", det.get("rsna_map"), None, None, fr.get("map")),
        ("detection mAP (ours: mAP@0.5)", det.get("map_at_iou_0.5"), None, None, fr.get("map")),
    ]
    out = [
        "## Published reference figures",
        "",
        f"**{REFERENCE_CAVEAT}**",
        "",
        f"| metric | {ours} | {dn['model']} — published on RSNA data | {rn['model']} — published on RSNA data "
        f"| {fr['model']} — published on RSNA data |",
        "|---|---|---|---|---|",
    ]
    for name, a, b, c, d in rows:
        pub = ["–" if v is None else f"{v:g}" for v in (b, c, d)]
        out.append(f"| {name} | {_f(a)} | " + " | ".join(pub) + " |")
    out += [
        "",
        "The published detection figure's exact metric definition (IoU thresholds, score handling) "
        "may differ from both of ours.",
        "",
    ]
    return out


# --------------------------------------------------------------------------- plots


def _display_image(pred: ImagePrediction, max_side: int = 384) -> tuple[np.ndarray, float]:
    """(display image in [0, 1], scale from source pixels to the display image)."""
    import pydicom

    from models.dicom_image import load_source_image

    src = load_source_image(pydicom.dcmread(pred.image)).pixels
    step = max(1, int(math.ceil(max(src.shape) / max_side)))
    return src[::step, ::step], 1.0 / step


def _sample_panels(
    predictions: Sequence[ImagePrediction],
    *,
    threshold: float,
    operating_threshold: float | None,
    npz_images: np.ndarray | None,
    per_kind: int = 3,
) -> list[Any]:
    from models.evaluation_plots import SamplePanel

    analysed = [p for p in predictions if p.status == "analysed"]
    groups: dict[str, list[ImagePrediction]] = {"TP": [], "FP": [], "FN": [], "TN": []}
    for p in analysed:
        positive = (p.pneumonia_probability or 0.0) >= threshold
        kind = ("TP" if p.target == 1 else "FP") if positive else ("FN" if p.target == 1 else "TN")
        groups[kind].append(p)
    for kind in ("TP", "FP"):  # most confident mistakes / hits first
        groups[kind].sort(key=lambda p: -(p.pneumonia_probability or 0.0))
    for kind in ("FN", "TN"):
        groups[kind].sort(key=lambda p: p.pneumonia_probability or 0.0)
    # up to per_kind each of TP, FP, FN; empty slots are filled with further examples (TN last)
    n_panels = 3 * per_kind
    chosen = [(k, p) for k in ("TP", "FP", "FN") for p in groups[k][:per_kind]]
    rest = [(k, p) for k in ("TP", "FP", "FN") for p in groups[k][per_kind:]] + [
        ("TN", p) for p in groups["TN"]
    ]
    chosen += rest[: max(0, n_panels - len(chosen))]
    order = {"TP": 0, "FP": 1, "FN": 2, "TN": 3}
    chosen.sort(key=lambda kp: order[kp[0]])
    panels = []
    op = operating_threshold if operating_threshold is not None else 0.0
    for kind, p in chosen:
        try:
            if p.image.startswith("npz:") and npz_images is not None:
                img, scale = npz_images[int(p.image.rsplit(":", 1)[1])].astype(np.float32) / 255.0, 1.0
            else:
                img, scale = _display_image(p)
        except Exception as exc:
            logger.warning("sample image unreadable", extra={"image": p.image, "error": str(exc)})
            continue
        gt = tuple(tuple(v * scale for v in b) for b in p.gt_boxes)
        pr = tuple((*(v * scale for v in b[:4]), b[4]) for b in p.pred_boxes if b[4] >= op)
        panels.append(
            SamplePanel(
                title=f"{kind} p={p.pneumonia_probability:.2f} {p.klass or ''}".strip(),
                image=img,
                gt_boxes=gt,  # type: ignore[arg-type]
                pred_boxes=pr,  # type: ignore[arg-type]
            )
        )
    return panels


def write_plots(
    out_dir: Path,
    predictions: Sequence[ImagePrediction],
    report: Mapping[str, Any],
    *,
    npz_images: np.ndarray | None = None,
) -> dict[str, str]:
    """All PNG plots into ``out_dir``; returns ``{plot key: file name}`` of those written."""
    from models import evaluation_plots as plots

    out_dir = Path(out_dir)
    written: dict[str, str] = {}
    analysed = [p for p in predictions if p.status == "analysed"]
    cls = report["classification"]
    if cls.get("available"):
        y = np.array([p.target for p in analysed], dtype=np.int64)
        s = np.array([p.pneumonia_probability for p in analysed], dtype=np.float64)
        plots.plot_roc(y, s, out_dir / PLOT_FILES["roc"], ci=tuple(cls["roc_auc_ci95"]))  # type: ignore[arg-type]
        written["roc"] = PLOT_FILES["roc"]
        plots.plot_pr(y, s, out_dir / PLOT_FILES["pr"])
        written["pr"] = PLOT_FILES["pr"]
        for t in FIXED_THRESHOLDS:
            key = f"confusion_{t:g}"
            r = cls["at_threshold"][f"{t:g}"]
            plots.plot_confusion(
                r["confusion_matrix"],
                ["no pneumonia", "pneumonia"],
                f"Pneumonia at threshold {t:g}",
                out_dir / PLOT_FILES[key],
            )
            written[key] = PLOT_FILES[key]
        if cls.get("multiclass"):
            mc = cls["multiclass"]
            plots.plot_confusion(
                mc["confusion_matrix"],
                mc["class_names"],
                "RSNA 3-class (argmax)",
                out_dir / PLOT_FILES["confusion_3class"],
            )
            written["confusion_3class"] = PLOT_FILES["confusion_3class"]
        plots.plot_calibration(y, s, out_dir / PLOT_FILES["calibration"], n_bins=cls["calibration"]["n_bins"])
        written["calibration"] = PLOT_FILES["calibration"]
    det = report.get("detection")
    panels = _sample_panels(
        predictions,
        threshold=0.5,
        operating_threshold=det["operating_threshold"] if det else None,
        npz_images=npz_images,
    )
    plots.plot_sample_grid(
        panels,
        out_dir / PLOT_FILES["samples"],
        title="TP / FP / FN at 0.5 — truth boxes green, predicted boxes red",
    )
    written["samples"] = PLOT_FILES["samples"]
    return written


# --------------------------------------------------------------------------- orchestration


def _is_synthetic(path: Path) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return False
    return str(getattr(ds.file_meta, "ImplementationVersionName", "")) == "CXR_AI_NODE_SYN"


def evaluate(config: EvaluationConfig, *, engine: Any = None) -> dict[str, Any]:
    """Run the whole evaluation; returns the report (also written to ``config.out_dir``).

    ``engine``: an already constructed ``InferenceEngine`` to use (not closed here);
    by default one is built from ``config.bundles_dir`` with ``detection_score_threshold=box_floor``.
    """
    t0 = _dt.datetime.now(_dt.timezone.utc)
    out_dir = config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    own_engine = engine is None
    if own_engine:
        from models.engine import InferenceEngine

        engine = InferenceEngine(
            config.bundles_dir,
            device=config.device,
            detection_score_threshold=config.box_floor,
            max_batch_size=config.max_batch_size,
            num_threads=config.num_threads,
        )
    try:
        operating = float(engine.bundles[1].score_threshold)
        report_head: dict[str, Any] = {
            "generated_by": "cxr-node evaluate",
            "created_utc": t0.isoformat(timespec="seconds"),
            "models": [{"name": m.name, "version": m.version} for m in engine.models],
            "device": str(engine.device),
            "box_floor": config.box_floor,
        }
        npz_images = None
        if config.npz is not None:
            predictions = predict_npz(
                engine, config.npz, config.npz_split, max_images=config.max_images, in_flight=config.in_flight
            )
            npz_images, _ = load_npz_split(config.npz, config.npz_split)
            report_head["data"] = {
                "source": str(config.npz),
                "kind": "PneumoniaMNIST npz",
                "synthetic": False,
            }
            report_head["split"] = {"name": config.npz_split, "source": "npz", "n_selected": len(predictions)}
            detection = False
        else:
            from models.rsna_layout import read_rsna_labels

            assert config.data_dir is not None
            labels = read_rsna_labels(config.data_dir)
            recorded = training_split_from_metadata(config.bundles_dir)
            seed = config.seed if config.seed is not None else recorded.get("seed", 0)
            fractions = config.fractions or recorded.get("fractions", (0.8, 0.1, 0.1))
            split_file = config.split_file
            bundle_split = bundle_split_file(config.bundles_dir)
            if split_file is None and config.seed is None and config.split != "all" and bundle_split is not None:
                split_file = bundle_split  # the exact split training used (written by models.training)
            pids, split_info = select_patients(
                labels,
                split=config.split,
                split_file=split_file,
                seed=seed,
                fractions=fractions,
                max_images=config.max_images,
            )
            if split_file is not None and split_file == bundle_split:
                split_info["source"] = "bundle split.json"
                other = bundle_split_file(config.bundles_dir, "cxr_opacity_detection")
                if other is not None and read_split(other) != read_split(split_file):
                    split_info["warning"] = (
                        "the detection bundle was trained on another split than the classifier: its "
                        f"{config.split!r} images may include detection training patients"
                    )
                    logger.warning("bundles trained on different splits", extra={"split": config.split})
            if split_file is None and config.split != "all":
                split_info["seed_source"] = (
                    "--seed"
                    if config.seed is not None
                    else "bundle metadata"
                    if "seed" in recorded
                    else "default 0"
                )
                n_trained = recorded.get("n_patients")
                if n_trained is not None and n_trained != len(labels):
                    # training split a different patient set (other folders or --max-images): ids differ
                    split_info["warning"] = (
                        f"training split {n_trained} patients but this data has {len(labels)}: the "
                        f"recomputed {config.split!r} split is not the one training held out; pass --split-file"
                    )
                    logger.warning(
                        "split may not match training", extra={"n_trained": n_trained, "n_data": len(labels)}
                    )
            predictions = predict_rsna(engine, [labels[p] for p in pids], in_flight=config.in_flight)
            report_head["data"] = {
                "source": str(config.data_dir),
                "kind": "RSNA layout",
                "synthetic": _is_synthetic(labels[pids[0]].image_path),
                "n_patients": len(labels),
            }
            report_head["split"] = split_info
            detection = True
        report_head["engine_stats"] = engine.stats() if hasattr(engine, "stats") else None
    finally:
        if own_engine:
            engine.close()

    csv_path = write_predictions_csv(out_dir / "predictions.csv", predictions)
    saved = read_predictions_csv(csv_path)
    body = compute_report(
        saved,
        operating_threshold=operating,
        n_boot=config.n_boot,
        bootstrap_seed=config.bootstrap_seed,
        calibration_bins=config.calibration_bins,
        detection=detection,
    )
    report = {**report_head, **body}
    report["reference_published_rsna"] = {
        "caveat": REFERENCE_CAVEAT,
        "figures": list(PUBLISHED_RSNA_REFERENCE),
    }
    report["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    plots_written = write_plots(out_dir, saved, report, npz_images=npz_images)
    report["files"] = {"predictions": csv_path.name, "plots": plots_written, "markdown": "report.md"}
    report["elapsed_s"] = (_dt.datetime.now(_dt.timezone.utc) - t0).total_seconds()
    report = _clean(report)
    tmp = out_dir / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / "report.json")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    logger.info(
        "evaluation written",
        extra={
            "out_dir": str(out_dir),
            "n_images": report["n_images"],
            "roc_auc": report["classification"].get("roc_auc"),
            "rsna_map": (report.get("detection") or {}).get("rsna_map"),
        },
    )
    return report
