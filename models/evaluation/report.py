"""The figures of the evaluation report, computed from per-image predictions (pure; no I/O).

Conventions: the pneumonia score is ``Findings.probability`` (= P(Lung
Opacity)); ``score >= threshold`` is a positive call. Only ``analysed`` rows enter the
metrics; the others are counted. The RSNA challenge metric and the detection recall use the
boxes at or above the detection bundle's reporting (operating) threshold; mAP@0.5 ranks
every box. Also holds the figures published on the real RSNA data, quoted next to ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.evaluation import metrics
from models.evaluation.predict import STATUSES, Box4, ImagePrediction, PredBox
from models.findings import RSNA_CLASSES

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
    "NOT comparable with results on other data (synthetic phantoms, PneumoniaMNIST) or with other splits / "
    "metric definitions."
)


def classification_section(
    analysed: Sequence[ImagePrediction],
    *,
    n_boot: int,
    bootstrap_seed: int,
    calibration_bins: int,
    decision_threshold: float | None = None,
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
    if decision_threshold is not None:
        # the bundle's own operating threshold (chosen on validation data when it was trained)
        sec["decision_threshold"] = float(decision_threshold)
        sec["at_threshold"]["operating"] = metrics.binary_report(y, s, float(decision_threshold))
    sec["at_threshold"]["youden"] = metrics.binary_report(y, s, youden)
    sec["youden_note"] = (
        "chosen on this evaluation set itself: optimistic; fix thresholds on a validation split"
    )
    if all(p.klass is not None and p.class_probabilities is not None for p in analysed):
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
    decision_threshold: float | None = None,
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
            analysed,
            n_boot=n_boot,
            bootstrap_seed=bootstrap_seed,
            calibration_bins=calibration_bins,
            decision_threshold=decision_threshold,
        ),
        "detection": None,
    }
    if detection:
        if operating_threshold is None:
            raise ValueError("detection metrics need the operating (reporting) threshold, got None")
        report["detection"] = detection_section(analysed, operating_threshold=float(operating_threshold))
    return report
