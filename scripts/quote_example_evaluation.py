"""Quote the committed example evaluation report in both bundles' ``metadata.json``.

The example report (``docs/example_evaluation/``) was produced by::

    cxr-node synth --out /tmp/eval500_s7777 -n 500 --seed 7777 --size 1024
    cxr-node evaluate --data /tmp/eval500_s7777 --split all --out docs/example_evaluation --device cpu

(seed 7777 is used neither for training nor for the held-out check). This script copies its headline
figures, read from ``report.json``, into ``cxr_node.example_evaluation`` of each bundle's metadata, so
the numbers there are never typed by hand. Run: ``python scripts/quote_example_evaluation.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "docs" / "example_evaluation" / "report.json"
BUNDLES = REPO / "monai_bundles"
COMMANDS = [
    "cxr-node synth --out /tmp/eval500_s7777 -n 500 --seed 7777 --size 1024",
    "cxr-node evaluate --data /tmp/eval500_s7777 --split all --out docs/example_evaluation --device cpu",
]


def quote(report: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``report.json`` that the bundle metadata quotes."""
    c, d = report["classification"], report["detection"]
    return {
        "report": "docs/example_evaluation/report.md",
        "created_utc": report["created_utc"],
        "commands": COMMANDS,
        "data": "500 synthetic phantoms (seed 7777, 1024 px), not used in training or selection",
        "models": report["models"],
        "n_images": report["n_images"],
        "classification": {
            "roc_auc": c["roc_auc"],
            "roc_auc_ci95": c["roc_auc_ci95"],
            "at_threshold": c["at_threshold"],
        },
        "detection": {
            "operating_threshold": d["operating_threshold"],
            "rsna_map": d["rsna_map"],
            "map_at_iou_0.5": d["map_at_iou_0.5"],
            "recall_at_iou_0.4": d["recall_at_iou_0.4"],
        },
    }


def main() -> int:
    report = json.loads(REPORT.read_text(encoding="utf-8"))
    quoted = quote(report)
    for bundle in ("cxr_classification", "cxr_opacity_detection"):
        path = BUNDLES / bundle / "configs" / "metadata.json"
        meta = json.loads(path.read_text(encoding="utf-8"))
        meta.setdefault("cxr_node", {})["example_evaluation"] = quoted
        path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"quoted {REPORT.relative_to(REPO)} in {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
