"""The committed example evaluation (docs/example_evaluation) is complete and quoted by the bundles."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REPORT_DIR = REPO / "docs" / "example_evaluation"
PLOTS = ("roc.png", "precision_recall.png", "confusion_t0.50.png", "confusion_t0.25.png", "calibration.png", "samples.png")


def _quote_module():
    spec = importlib.util.spec_from_file_location("quote_example_evaluation", REPO / "scripts" / "quote_example_evaluation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_and_plots_are_committed() -> None:
    report = json.loads((REPORT_DIR / "report.json").read_text(encoding="utf-8"))
    assert report["n_images"] == 500 and report["n_failed"] == 0
    assert (REPORT_DIR / "report.md").read_text(encoding="utf-8").startswith("# cxr-ai-node evaluation report")
    for name in PLOTS:
        data = (REPORT_DIR / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize("bundle", ["cxr_classification", "cxr_opacity_detection"])
def test_bundle_metadata_quotes_the_report(bundle: str) -> None:
    module = _quote_module()
    report = json.loads(module.report_path(bundle).read_text(encoding="utf-8"))
    meta = json.loads((REPO / "monai_bundles" / bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    quoted = meta["cxr_node"]["example_evaluation"]
    # round-trip through JSON so tuples/lists compare equal
    assert quoted == json.loads(json.dumps(module.quote(report, bundle))), (
        "re-run: python scripts/quote_example_evaluation.py"
    )
    # the quoted report was made with the shipped version of the bundle, exactly these weights
    shipped = {m["name"]: m for m in report["models"]}[bundle]
    assert shipped["version"] == meta["version"]
    from models.inference.bundle_loader import bundle_digest

    assert shipped["digest"] == bundle_digest(REPO / "monai_bundles" / bundle)


def test_the_shipped_classifier_meets_its_target_in_cxr_node_evaluate() -> None:
    """Issue 16: PneumoniaMNIST official test AUC >= 0.96 in the committed `cxr-node evaluate` report,
    with the operating point at the bundle's own (val-chosen) threshold; no radiograph in the report."""
    folder = REPO / "docs" / "example_evaluation_pneumoniamnist"
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    cls = report["classification"]
    assert report["split"]["name"] == "test" and report["n_analysed"] == 624
    assert cls["roc_auc"] >= 0.96
    config = json.loads((REPO / "monai_bundles" / "cxr_classification" / "configs" / "inference.json").read_text())
    assert cls["at_threshold"]["operating"]["threshold"] == config["decision_threshold"]
    assert not (folder / "samples.png").exists()
