"""The shipped demonstration weights meet their targets on held-out phantoms (through the real engine)."""

from __future__ import annotations

import json

import pytest

from models.bundle_run import BUNDLES_DIR
from models.holdout import HOLDOUT_SEED, TARGET_AUC, TARGET_RECALL, measure_holdout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def holdout_60() -> dict:
    # same held-out seed as the shipped figures (never used in training), smaller n for test time
    return measure_holdout(BUNDLES_DIR, n=60, seed=HOLDOUT_SEED, size=1024, pneumoniamnist=None,
                           device="cpu", num_threads=2)


def test_classifier_auc_on_held_out_phantoms(holdout_60: dict) -> None:
    cls = holdout_60["phantoms"]["classification"]
    assert cls["auc_lung_opacity_vs_rest"] >= TARGET_AUC, cls


def test_detector_recall_on_held_out_phantoms(holdout_60: dict) -> None:
    det = holdout_60["phantoms"]["detection"]
    assert holdout_60["phantoms"]["n_truth_boxes"] > 10
    assert det["recall_iou0.4"] >= TARGET_RECALL, det


@pytest.mark.parametrize(
    ("bundle", "key", "target"),
    [("cxr_classification", "auc_lung_opacity_vs_rest", TARGET_AUC),
     ("cxr_opacity_detection", "recall_iou0.4", TARGET_RECALL)],
)
def test_metadata_records_the_measured_metrics(bundle: str, key: str, target: float) -> None:
    meta = json.loads((BUNDLES_DIR / bundle / "configs" / "metadata.json").read_text())
    metrics = meta["cxr_node"]["metrics"]
    assert metrics["held_out_phantoms"]["seed"] == HOLDOUT_SEED
    assert metrics["held_out_phantoms"]["n"] >= 200
    assert metrics["command"] == "python -m models.holdout --write-metadata"
    assert metrics[key] >= target
    training = meta["cxr_node"]["training"]
    assert HOLDOUT_SEED != training["split"]["seed"]
    if bundle == "cxr_classification":
        pm = metrics["pneumoniamnist_test"]
        assert pm["split"] == "test" and pm["n"] > 500 and 0.5 < pm["auc_pneumonia_vs_normal"] <= 1.0
