"""Tests of models.evaluation.metrics: hand-computed detection cases, classification vs scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import calibration as skcal
from sklearn import metrics as skm

from models.evaluation import metrics as M
from models.findings import Box

# --------------------------------------------------------------------------- IoU


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (20, 20, 5, 5), 0.0),
        ((0, 0, 10, 10), (10, 0, 10, 10), 0.0),  # touching edge: no area in common
        ((0, 0, 10, 10), (0, 0, 10, 5), 0.5),
        ((0, 0, 2, 2), (1, 1, 2, 2), 1 / 7),
        ((0, 0, 10, 10), (2.5, 2.5, 5, 5), 0.25),  # contained
        ((0, 0, 4, 4), (2, 0, 4, 4), 8 / 24),
    ],
)
def test_iou_cases(a, b, expected) -> None:
    assert M.iou(a, b) == pytest.approx(expected)
    assert M.iou(b, a) == pytest.approx(expected)


def test_iou_accepts_box_objects_and_rejects_degenerate() -> None:
    assert M.iou(Box(0, 0, 10, 10, 0.9), (0, 0, 10, 5)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="0, 0, 0, 5"):
        M.iou((0, 0, 0, 5), (0, 0, 1, 1))


# --------------------------------------------------------------------------- RSNA metric


def test_thresholds_are_the_challenge_ones() -> None:
    assert M.RSNA_IOU_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)


def test_rsna_skip_and_zero_rules() -> None:
    assert M.rsna_image_score([], []) is None
    assert M.rsna_image_score([], [(0, 0, 10, 10, 0.9)]) == 0.0
    assert M.rsna_image_score([(0, 0, 10, 10)], []) == 0.0
    assert M.rsna_image_score([(0, 0, 10, 10)], [(0, 0, 10, 10, 0.2)]) == 1.0


def test_rsna_tp_at_iou_half_counts_only_at_040_and_045() -> None:
    # IoU exactly 0.5: a hit at t=0.40 and 0.45 (0.5 > t), a miss at 0.50 and above (">" rule)
    score = M.rsna_image_score([(0, 0, 10, 10)], [(0, 0, 10, 5, 0.9)])
    # hits: 1/(1+0+0) at 2 thresholds; misses: 0/(0+1+1) at 6 thresholds
    assert score == pytest.approx(2 / 8)


def test_rsna_multiple_boxes() -> None:
    gt = [(0, 0, 10, 10), (100, 100, 10, 10)]
    preds = [(0, 0, 10, 10, 0.9), (100, 100, 10, 6, 0.8), (300, 300, 10, 10, 0.7)]  # exact, IoU 0.6, FP
    # t in 0.40..0.55: TP 2, FP 1, FN 0 -> 2/3 ; t in 0.60..0.75: TP 1, FP 2, FN 1 -> 1/4
    expected = (4 * (2 / 3) + 4 * (1 / 4)) / 8
    assert M.rsna_image_score(gt, preds) == pytest.approx(expected)


def test_rsna_score_ordering_matters() -> None:
    g1, g2 = (0, 0, 10, 10), (5, 0, 10, 10)
    shifted = (2, 0, 10, 10)  # IoU with g1 = 80/120, with g2 = 70/130
    exact = (0, 0, 10, 10)  # IoU with g1 = 1, with g2 = 50/150
    # shifted ranked first steals g1; exact then only overlaps g2 at 1/3 -> FP at every t
    first = M.rsna_image_score([g1, g2], [(*shifted, 0.9), (*exact, 0.5)])
    assert first == pytest.approx(1 / 3)
    # exact ranked first takes g1; shifted matches g2 (0.538) at t = 0.40, 0.45, 0.50 only
    second = M.rsna_image_score([g1, g2], [(*shifted, 0.5), (*exact, 0.9)])
    assert second == pytest.approx((3 * 1.0 + 5 * (1 / 3)) / 8)
    # list order does not matter, only the score
    assert M.rsna_image_score([g1, g2], [(*exact, 0.9), (*shifted, 0.5)]) == pytest.approx(second)


def test_rsna_accepts_box_objects() -> None:
    assert M.rsna_image_score([(0, 0, 10, 10)], [Box(0, 0, 10, 5, 0.9)]) == pytest.approx(0.25)


def test_rsna_map_averages_non_skipped_images() -> None:
    images = [
        ([], []),  # skipped
        ([(0, 0, 10, 10)], [(0, 0, 10, 10, 0.9)]),  # 1
        ([], [(0, 0, 5, 5, 0.3)]),  # 0
        ([(0, 0, 10, 10)], [(0, 0, 10, 5, 0.9)]),  # 0.25
    ]
    assert M.rsna_map(images) == pytest.approx((1 + 0 + 0.25) / 3)
    assert math.isnan(M.rsna_map([([], [])]))


def test_map_at_iou_hand_case() -> None:
    images = [
        ([(0, 0, 10, 10)], [(0, 0, 10, 10, 0.9), (50, 50, 10, 10, 0.8)]),
        ([(100, 100, 10, 10)], [(100, 100, 10, 6, 0.7)]),  # IoU 0.6
        ([], [(0, 0, 3, 3, 0.1)]),  # lowest-ranked FP: after full recall, does not change AP
    ]
    # ranked: TP(.9) FP(.8) TP(.7) FP(.1): recall .5 .5 1 1, precision 1 .5 2/3 .5
    assert M.map_at_iou(images, iou=0.5) == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    assert M.map_at_iou(images, iou=0.7) == pytest.approx(0.5)
    assert M.map_at_iou([([(0, 0, 1, 1)], [])]) == 0.0
    assert math.isnan(M.map_at_iou([([], [(0, 0, 1, 1, 0.5)])]))


def test_detection_recall() -> None:
    images = [
        ([(0, 0, 10, 10)], [(0, 0, 10, 10, 0.9)]),
        ([(100, 100, 10, 10)], [(100, 100, 10, 6, 0.7)]),  # IoU 0.6
        ([(0, 0, 10, 10)], []),
        ([], [(0, 0, 10, 10, 0.9)]),
    ]
    assert M.detection_recall(images, iou=0.4) == pytest.approx(2 / 3)
    assert M.detection_recall(images, iou=0.6) == pytest.approx(1 / 3)  # strictly greater
    assert M.detection_recall(images, iou=0.4, score_threshold=0.8) == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- classification vs sklearn


def _random_set(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 300))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1  # both classes
    # coarse scores -> many ties; shifted by the label so the AUC is not always 0.5
    s = np.clip(np.round(rng.normal(0.5 + 0.15 * (y - 0.5), 0.2), int(rng.integers(1, 3))), 0, 1)
    return y, s


SEEDS = list(range(25))


@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_metrics_equal_sklearn(seed: int) -> None:
    y, s = _random_set(seed)
    assert len(np.unique(s)) < len(s)  # the set really has ties
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    for drop in (True, False):
        ours = M.roc_curve(y, s, drop_intermediate=drop)
        ref = skm.roc_curve(y, s, drop_intermediate=drop)
        for a, b in zip(ours, ref, strict=True):
            np.testing.assert_allclose(a, b)
    ours_pr = M.precision_recall_curve(y, s)
    ref_pr = skm.precision_recall_curve(y, s)
    for a, b in zip(ours_pr, ref_pr, strict=True):
        np.testing.assert_allclose(a, b)
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert M.brier_score(y, s) == pytest.approx(skm.brier_score_loss(y, s), abs=1e-12)
    fpr, tpr, _ = M.roc_curve(y, s)
    assert M.roc_auc(y, s) == pytest.approx(float(np.trapezoid(tpr, fpr)), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.7])
def test_binary_report_equals_sklearn(seed: int, threshold: float) -> None:
    y, s = _random_set(seed)
    pred = (s >= threshold).astype(int)
    r = M.binary_report(y, s, threshold)
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    assert r["confusion_matrix"] == cm.tolist()
    assert (r["tn"], r["fp"], r["fn"], r["tp"]) == tuple(cm.ravel().tolist())
    assert r["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert r["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert r["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred, zero_division=0))
    assert r["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_youden_threshold_maximises_j(seed: int) -> None:
    y, s = _random_set(seed)
    t = M.youden_threshold(y, s)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    best = float(np.max(tpr - fpr))
    r = M.binary_report(y, s, t)
    assert r["sensitivity"] + r["specificity"] - 1 == pytest.approx(best)
    assert t in set(s.tolist())


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_multiclass_report_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 200))
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.2 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]
    r = M.multiclass_report(y, probs, names)
    pred = probs.argmax(axis=1)
    assert r["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    p, rc, f, sup = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    for i, name in enumerate(names):
        pc = r["per_class"][name]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx(
            (p[i], rc[i], f[i], sup[i])
        )
        assert pc["auc_ovr"] == pytest.approx(skm.roc_auc_score(y == i, probs[:, i]))
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))


@pytest.mark.parametrize("seed", SEEDS[:10])
@pytest.mark.parametrize("n_bins", [3, 10])
def test_calibration_curve_equals_sklearn(seed: int, n_bins: int) -> None:
    y, s = _random_set(seed)
    frac, mean, count = M.calibration_curve(y, s, n_bins)
    ref_frac, ref_mean = skcal.calibration_curve(y, s, n_bins=n_bins)
    np.testing.assert_allclose(frac, ref_frac)
    np.testing.assert_allclose(mean, ref_mean)
    assert int(count.sum()) == len(y)


def test_bootstrap_ci_contains_point_and_is_deterministic() -> None:
    y, s = _random_set(3)
    auc = M.roc_auc(y, s)
    lo, hi = M.bootstrap_auc_ci(y, s, n_boot=500, seed=1)
    assert lo <= auc <= hi
    assert 0.0 <= lo < hi <= 1.0
    assert M.bootstrap_auc_ci(y, s, n_boot=500, seed=1) == (lo, hi)
    assert M.bootstrap_auc_ci(y, s, n_boot=500, seed=2) != (lo, hi)
    lo90, hi90 = M.bootstrap_auc_ci(y, s, n_boot=500, seed=1, alpha=0.5)
    assert lo <= lo90 <= hi90 <= hi  # a 50 % interval lies inside the 95 % one


def test_input_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="both classes"):
        M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        M.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="nan"):
        M.binary_report([0, 1], [0.1, float("nan")], 0.5)
    with pytest.raises(ValueError, match="same length"):
        M.roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="1.5"):
        M.calibration_curve([0, 1], [0.2, 1.5])
