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
    report = json.loads((REPORT_DIR / "report.json").read_text(encoding="utf-8"))
    meta = json.loads((REPO / "monai_bundles" / bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    quoted = meta["cxr_node"]["example_evaluation"]
    # round-trip through JSON so tuples/lists compare equal
    assert quoted == json.loads(json.dumps(_quote_module().quote(report))), (
        "re-run: python scripts/quote_example_evaluation.py"
    )
    # the quoted report was made with the shipped versions of both bundles
    versions = {m["name"]: m["version"] for m in report["models"]}
    assert versions[bundle] == meta["version"]
