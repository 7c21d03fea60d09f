"""Quote the committed example evaluation reports in the bundles' ``metadata.json``.

Two reports, each made by ``cxr-node evaluate`` with the shipped bundles:

- ``docs/example_evaluation_pneumoniamnist/`` — the classifier on the PneumoniaMNIST **test** split
  (never used in training or selection), quoted by ``cxr_classification``::

      cxr-node evaluate --npz ../shared/data/pneumoniamnist.npz --npz-split test \\
          --out docs/example_evaluation_pneumoniamnist --device cpu --no-sample-images

- ``docs/example_evaluation/`` — both bundles on 500 synthetic phantoms (seed 7777, used neither for
  training nor for the held-out check), quoted by ``cxr_opacity_detection`` (its detection figures:
  the detector was trained on phantoms; the classifier never saw one)::

      cxr-node synth --out /tmp/eval500_s7777 -n 500 --seed 7777 --size 1024
      cxr-node evaluate --data /tmp/eval500_s7777 --split all --out docs/example_evaluation --device cpu

This script copies the headline figures, read from each ``report.json``, into
``cxr_node.example_evaluation`` of the bundle's metadata, so the numbers there are never typed by hand.
Run: ``python scripts/quote_example_evaluation.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUNDLES = REPO / "monai_bundles"
#: bundle -> (report folder, commands that made it, what the data is)
SOURCES: dict[str, tuple[str, list[str], str]] = {
    "cxr_classification": (
        "docs/example_evaluation_pneumoniamnist",
        ["cxr-node evaluate --npz ../shared/data/pneumoniamnist.npz --npz-split test "
         "--out docs/example_evaluation_pneumoniamnist --device cpu --no-sample-images"],
        "PneumoniaMNIST official test split (624 real paediatric CXRs, 28 px; never used in training or selection)",
    ),
    "cxr_opacity_detection": (
        "docs/example_evaluation",
        ["cxr-node synth --out /tmp/eval500_s7777 -n 500 --seed 7777 --size 1024",
         "cxr-node evaluate --data /tmp/eval500_s7777 --split all --out docs/example_evaluation --device cpu"],
        "500 synthetic phantoms (seed 7777, 1024 px), not used in training or selection",
    ),
}


def report_path(bundle: str) -> Path:
    return REPO / SOURCES[bundle][0] / "report.json"


def quote(report: dict[str, Any], bundle: str) -> dict[str, Any]:
    """The subset of ``report.json`` that ``bundle``'s metadata quotes."""
    folder, commands, data = SOURCES[bundle]
    out: dict[str, Any] = {
        "report": f"{folder}/report.md",
        "created_utc": report["created_utc"],
        "commands": commands,
        "data": data,
        "models": report["models"],
        "n_images": report["n_images"],
    }
    c, d = report["classification"], report.get("detection")
    if bundle == "cxr_classification":
        out["classification"] = {
            "roc_auc": c["roc_auc"],
            "roc_auc_ci95": c["roc_auc_ci95"],
            "decision_threshold": c.get("decision_threshold"),
            "at_threshold": c["at_threshold"],
        }
    else:
        if d is None:
            raise ValueError(f"{folder}/report.json has no detection section")
        out["detection"] = {
            "operating_threshold": d["operating_threshold"],
            "rsna_map": d["rsna_map"],
            "map_at_iou_0.5": d["map_at_iou_0.5"],
            "recall_at_iou_0.4": d["recall_at_iou_0.4"],
        }
    return out


def main() -> int:
    for bundle in SOURCES:
        report = json.loads(report_path(bundle).read_text(encoding="utf-8"))
        path = BUNDLES / bundle / "configs" / "metadata.json"
        meta = json.loads(path.read_text(encoding="utf-8"))
        meta.setdefault("cxr_node", {})["example_evaluation"] = quote(report, bundle)
        path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"quoted {report_path(bundle).relative_to(REPO)} in {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
