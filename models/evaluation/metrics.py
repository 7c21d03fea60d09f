"""Classification and detection metrics (numpy only).

Classification functions follow scikit-learn's definitions exactly (they are
tested against ``sklearn.metrics``): ``scores >= threshold`` is a positive call,
ties in scores are handled by evaluating only at distinct score values.

Detection boxes are ``(x, y, w, h)`` in pixels (see ``models/findings.py``);
predictions are ``(x, y, w, h, score)`` tuples or objects with ``x, y, width,
height, score`` attributes (e.g. ``models.findings.Box``).

RSNA Pneumonia Detection Challenge metric (:func:`rsna_image_score`): for each
IoU threshold t in 0.40, 0.45, …, 0.75, predictions sorted by descending score
are matched greedily, each to the unmatched ground-truth box with the highest
IoU, and the match is a hit only if that IoU is **strictly greater** than t
(the challenge's evaluation page: "a predicted object is considered a hit if its
IoU with a ground truth object is greater than 0.5"; note that the widely copied
community kernel ``map_iou`` uses ``>=``, which differs only for IoU exactly on a
threshold). precision(t) = TP / (TP + FP + FN); the image score is the mean over
t. An image with neither truth nor predictions is skipped (``None``); an image
with predictions but no truth scores 0. :func:`rsna_map` averages the non-skipped
image scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: IoU thresholds of the RSNA challenge metric (rounded so 0.5 is exactly 0.5).
RSNA_IOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.4, 0.76, 0.05), 2))

BoxXYWH = tuple[float, float, float, float]
PredXYWHS = tuple[float, float, float, float, float]


# --------------------------------------------------------------------------- helpers


def _binary_inputs(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"y_true and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores must have the same length, got {y.shape[0]} and {s.shape[0]}")
    if y.size == 0:
        raise ValueError("y_true is empty")
    if not np.all(np.isfinite(s)):
        bad = s[~np.isfinite(s)][0]
        raise ValueError(f"scores must be finite, got {bad!r}")
    uniq = set(np.unique(y).tolist())
    if not uniq <= {0, 1}:
        raise ValueError(f"y_true must be binary 0/1, got values {sorted(uniq)!r}")
    return y.astype(np.int64), s


def _need_both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(f"{what} needs both classes in y_true, got {n_pos} positives of {y.size}")


def _binary_clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative FP/TP counts at each distinct score, in descending score order (as sklearn)."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    distinct = np.where(np.diff(s_sorted))[0]
    idx = np.r_[distinct, y_sorted.size - 1]
    tps = np.cumsum(y_sorted)[idx].astype(np.float64)
    fps = 1.0 + idx - tps
    return fps, tps, s_sorted[idx]


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


# --------------------------------------------------------------------------- ranking metrics


def roc_auc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve (Mann–Whitney U with mid-ranks for ties = sklearn's trapezoid AUC)."""
    y, s = _binary_inputs(y_true, scores)
    _need_both_classes(y, "roc_auc")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # mid-ranks (1-based) for runs of equal scores
    group = np.r_[0, np.cumsum(np.diff(s_sorted) != 0)]
    starts = np.r_[0, np.where(np.diff(s_sorted))[0] + 1]
    counts = np.diff(np.r_[starts, s.size])
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = (starts[group] + 1 + starts[group] + counts[group]) / 2.0
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(
    y_true: Any, scores: Any, *, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` as ``sklearn.metrics.roc_curve`` (thresholds[0] is +inf)."""
    y, s = _binary_inputs(y_true, scores)
    _need_both_classes(y, "roc_curve")
    fps, tps, thr = _binary_clf_curve(y, s)
    if drop_intermediate and fps.size > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thr = np.r_[np.inf, thr]
    return fps / fps[-1], tps / tps[-1], thr


def precision_recall_curve(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)`` as ``sklearn.metrics.precision_recall_curve``.

    Thresholds increase; the last point is (precision 1, recall 0) with no threshold.
    """
    y, s = _binary_inputs(y_true, scores)
    if int(y.sum()) == 0:
        raise ValueError(f"precision_recall_curve needs at least one positive, got 0 of {y.size}")
    fps, tps, thr = _binary_clf_curve(y, s)
    ps = tps + fps
    precision = np.divide(tps, ps, out=np.zeros_like(tps), where=ps != 0)
    recall = tps / tps[-1]
    rev = slice(None, None, -1)
    return np.r_[precision[rev], 1.0], np.r_[recall[rev], 0.0], thr[rev]


def average_precision(y_true: Any, scores: Any) -> float:
    """Average precision = Σ (R_n − R_{n−1}) P_n (step-wise, no interpolation; = sklearn)."""
    precision, recall, _ = precision_recall_curve(y_true, scores)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def bootstrap_auc_ci(
    y_true: Any,
    scores: Any,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` confidence interval of the ROC AUC.

    Stratified: each replicate resamples the positives and the negatives separately,
    with replacement, keeping their counts, so every replicate has both classes.
    Deterministic for a given ``seed``.
    """
    y, s = _binary_inputs(y_true, scores)
    _need_both_classes(y, "bootstrap_auc_ci")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    rng = np.random.default_rng(seed)
    pos = s[y == 1]
    neg = s[y == 0]
    aucs = np.empty(int(n_boot), dtype=np.float64)
    labels = np.r_[np.ones(pos.size, dtype=np.int64), np.zeros(neg.size, dtype=np.int64)]
    for i in range(int(n_boot)):
        bp = pos[rng.integers(0, pos.size, pos.size)]
        bn = neg[rng.integers(0, neg.size, neg.size)]
        aucs[i] = roc_auc(labels, np.r_[bp, bn])
    low, high = np.quantile(aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


# --------------------------------------------------------------------------- thresholded metrics


def confusion_counts(y_true: Any, scores: Any, threshold: float) -> tuple[int, int, int, int]:
    """``(tn, fp, fn, tp)`` with ``scores >= threshold`` as the positive call."""
    y, s = _binary_inputs(y_true, scores)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    return tn, fp, fn, tp


def binary_report(y_true: Any, scores: Any, threshold: float) -> dict[str, Any]:
    """Precision, recall (= sensitivity), specificity, NPV, F1, accuracy and counts at ``threshold``.

    ``confusion_matrix`` is ``[[TN, FP], [FN, TP]]`` (rows = truth 0/1, columns =
    prediction 0/1, the ``sklearn.metrics.confusion_matrix`` layout). Undefined
    ratios (0/0) are reported as 0.0, as sklearn's ``zero_division=0``.
    """
    tn, fp, fn, tp = confusion_counts(y_true, scores, threshold)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": _safe_div(tn, tn + fp),
        "npv": _safe_div(tn, tn + fn),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "accuracy": _safe_div(tp + tn, tp + tn + fp + fn),
        "support_positive": tp + fn,
        "support_negative": tn + fp,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def youden_threshold(y_true: Any, scores: Any) -> float:
    """Score threshold maximising Youden's J = sensitivity + specificity − 1.

    Candidates are the distinct scores (``>=`` rule); on ties the highest threshold wins.
    """
    fpr, tpr, thr = roc_curve(y_true, scores, drop_intermediate=False)
    j = tpr[1:] - fpr[1:]  # skip the +inf point
    return float(thr[1:][int(np.argmax(j))])


def multiclass_report(y_true_idx: Any, probs: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision/recall/F1/support, confusion matrix (rows = truth) and accuracy.

    The prediction is ``argmax(probs, axis=1)``. Also reports macro averages and,
    for each class present and absent in the truth, its one-vs-rest ROC AUC.
    """
    y = np.asarray(y_true_idx)
    p = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    if k < 2:
        raise ValueError(f"multiclass_report needs at least 2 class names, got {list(class_names)!r}")
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"probs must have shape (n, {k}), got {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true_idx must be 1-D with {p.shape[0]} entries, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("y_true_idx is empty")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
        raise ValueError(
            f"y_true_idx must be integers in [0, {k - 1}], got values {sorted(set(y.tolist()))!r}"
        )
    pred = np.argmax(p, axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    per_class: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(class_names):
        tp = int(cm[i, i])
        fp = int(cm[:, i].sum()) - tp
        fn = int(cm[i, :].sum()) - tp
        prec = _safe_div(tp, tp + fp)
        rec = _safe_div(tp, tp + fn)
        yi = (y == i).astype(np.int64)
        auc = roc_auc(yi, p[:, i]) if 0 < yi.sum() < yi.size else None
        per_class[name] = {
            "precision": prec,
            "recall": rec,
            "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
            "support": int(cm[i, :].sum()),
            "auc_ovr": auc,
        }
    return {
        "class_names": list(class_names),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "accuracy": float(np.trace(cm)) / float(y.size),
        "macro_precision": float(np.mean([v["precision"] for v in per_class.values()])),
        "macro_recall": float(np.mean([v["recall"] for v in per_class.values()])),
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])),
        "n": int(y.size),
    }


def calibration_curve(
    y_true: Any, scores: Any, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fraction_positive, mean_score, count)`` per non-empty uniform bin on [0, 1].

    Same binning as ``sklearn.calibration.calibration_curve(strategy="uniform")``
    (which returns the first two arrays).
    """
    y, s = _binary_inputs(y_true, scores)
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    if s.min() < 0 or s.max() > 1:
        raise ValueError(f"scores must be probabilities in [0, 1], got range [{s.min()!r}, {s.max()!r}]")
    bins = np.linspace(0.0, 1.0, int(n_bins) + 1)
    ids = np.searchsorted(bins[1:-1], s)
    sums = np.bincount(ids, weights=s, minlength=n_bins)
    trues = np.bincount(ids, weights=y, minlength=n_bins)
    totals = np.bincount(ids, minlength=n_bins)
    nz = totals != 0
    return trues[nz] / totals[nz], sums[nz] / totals[nz], totals[nz]


def brier_score(y_true: Any, scores: Any) -> float:
    """Mean squared difference between the probability and the 0/1 outcome."""
    y, s = _binary_inputs(y_true, scores)
    return float(np.mean((s - y) ** 2))


# --------------------------------------------------------------------------- detection


def _as_box(box: Any) -> BoxXYWH:
    if hasattr(box, "width") and hasattr(box, "x"):
        vals = (box.x, box.y, box.width, box.height)
    else:
        vals = tuple(box)[:4]
        if len(vals) != 4:
            raise ValueError(f"a box must be (x, y, w, h), got {box!r}")
    x, y, w, h = (float(v) for v in vals)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"a box needs finite x, y and w, h > 0, got {box!r}")
    return x, y, w, h


def _as_pred(pred: Any) -> PredXYWHS:
    if hasattr(pred, "score") and hasattr(pred, "width"):
        score = float(pred.score)
    else:
        t = tuple(pred)
        if len(t) != 5:
            raise ValueError(f"a prediction must be (x, y, w, h, score), got {pred!r}")
        score = float(t[4])
    if not math.isfinite(score):
        raise ValueError(f"a prediction score must be finite, got {pred!r}")
    return (*_as_box(pred), score)


def box_iou(box_a: Any, box_b: Any) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (continuous coordinates)."""
    ax, ay, aw, ah = _as_box(box_a)
    bx, by, bw, bh = _as_box(box_b)
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / (aw * ah + bw * bh - inter))


#: Alias: ``iou(box_a, box_b)``.
iou = box_iou


def _sorted_preds(preds: Iterable[Any]) -> list[PredXYWHS]:
    plist = [_as_pred(p) for p in preds]
    # stable: equal scores keep their input order
    return sorted(plist, key=lambda p: -p[4])


def _iou_matrix(preds: Sequence[PredXYWHS], gts: Sequence[BoxXYWH]) -> np.ndarray:
    m = np.zeros((len(preds), len(gts)), dtype=np.float64)
    for i, p in enumerate(preds):
        for j, g in enumerate(gts):
            m[i, j] = box_iou(p[:4], g)
    return m


def _greedy_tp(ious: np.ndarray, threshold: float) -> int:
    """Match predictions (rows, in score order) to the best unmatched truth with IoU > threshold."""
    matched = np.zeros(ious.shape[1], dtype=bool)
    tp = 0
    for i in range(ious.shape[0]):
        if matched.all():
            break
        cand = np.where(matched, -1.0, ious[i])
        j = int(np.argmax(cand))
        if cand[j] > threshold:
            matched[j] = True
            tp += 1
    return tp


def rsna_image_score(
    gt_boxes: Sequence[Any],
    pred_boxes_with_scores: Sequence[Any],
    thresholds: Sequence[float] = RSNA_IOU_THRESHOLDS,
) -> float | None:
    """RSNA challenge score of one image (see module docstring); ``None`` if the image is skipped."""
    gts = [_as_box(b) for b in gt_boxes]
    preds = _sorted_preds(pred_boxes_with_scores)
    thr = [float(t) for t in thresholds]
    if not thr:
        raise ValueError(f"thresholds must not be empty, got {thresholds!r}")
    if not gts and not preds:
        return None
    if not gts or not preds:
        return 0.0
    ious = _iou_matrix(preds, gts)
    total = 0.0
    for t in thr:
        tp = _greedy_tp(ious, t)
        fp = len(preds) - tp
        fn = len(gts) - tp
        total += tp / (tp + fp + fn)
    return total / len(thr)


def rsna_map(
    images: Iterable[tuple[Sequence[Any], Sequence[Any]]],
    thresholds: Sequence[float] = RSNA_IOU_THRESHOLDS,
) -> float:
    """Mean of :func:`rsna_image_score` over ``(gt_boxes, preds)`` pairs, skipping ``None`` images.

    Returns NaN when every image is skipped (no truth and no predictions anywhere).
    """
    scores = [rsna_image_score(g, p, thresholds) for g, p in images]
    kept = [s for s in scores if s is not None]
    return float(np.mean(kept)) if kept else float("nan")


def map_at_iou(
    images: Iterable[tuple[Sequence[Any], Sequence[Any]]],
    iou: float = 0.5,
) -> float:
    """Dataset-level average precision at one IoU threshold (VOC 2010+/COCO-style, all-point interpolation).

    All predictions of all images are ranked by score; each is a TP if it overlaps an
    unmatched truth box of its image with IoU >= ``iou`` (the VOC/COCO rule;
    each prediction takes the best-overlapping unmatched truth), else an FP. AP is
    the area under the monotone (interpolated) precision envelope over recall.
    NaN if there is no truth box at all.
    """
    entries: list[tuple[float, int, int]] = []  # (score, image index, pred index)
    gts_per_image: list[list[BoxXYWH]] = []
    preds_per_image: list[list[PredXYWHS]] = []
    for k, (g, p) in enumerate(images):
        gts_per_image.append([_as_box(b) for b in g])
        preds_per_image.append([_as_pred(x) for x in p])
        entries.extend((pp[4], k, i) for i, pp in enumerate(preds_per_image[-1]))
    n_gt = sum(len(g) for g in gts_per_image)
    if n_gt == 0:
        return float("nan")
    entries.sort(key=lambda e: -e[0])  # stable
    matched = [np.zeros(len(g), dtype=bool) for g in gts_per_image]
    tp = np.zeros(len(entries))
    for n, (_, k, i) in enumerate(entries):
        gts = gts_per_image[k]
        if not gts:
            continue
        ious = np.array([box_iou(preds_per_image[k][i][:4], g) for g in gts])
        ious[matched[k]] = -1.0
        j = int(np.argmax(ious))
        if ious[j] >= iou:
            matched[k][j] = True
            tp[n] = 1.0
    if not entries:
        return 0.0
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1.0 - tp)
    recall = ctp / n_gt
    precision = ctp / (ctp + cfp)
    mrec = np.r_[0.0, recall, 1.0]
    mpre = np.r_[0.0, precision, 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def detection_recall(
    images: Iterable[tuple[Sequence[Any], Sequence[Any]]],
    iou: float = 0.4,
    score_threshold: float = 0.0,
) -> float:
    """Fraction of truth boxes matched by a prediction with ``score >= score_threshold`` and IoU > ``iou``.

    Matching is greedy per image (predictions in descending score, best unmatched
    truth, strictly greater IoU as in the RSNA metric). NaN if there is no truth box.
    """
    hit = 0
    total = 0
    for g, p in images:
        gts = [_as_box(b) for b in g]
        preds = [q for q in _sorted_preds(p) if q[4] >= score_threshold]
        total += len(gts)
        if gts and preds:
            hit += _greedy_tp(_iou_matrix(preds, gts), iou)
    return hit / total if total else float("nan")
