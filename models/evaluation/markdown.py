"""``report.md``: the evaluation report (the dict of ``report.json``) rendered as Markdown tables.

Includes the figures published on the real RSNA data by the seed reports next to ours,
clearly labelled as not comparable (:data:`models.evaluation.report.REFERENCE_CAVEAT`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from models.evaluation.report import PUBLISHED_RSNA_REFERENCE, REFERENCE_CAVEAT


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _positive_class_line(classifier: dict[str, Any] | None) -> str:
    """What the score is: the classifier's positive class (its finding), and the truth it is compared with."""
    if not classifier:
        return "Positive class: pneumonia = RSNA `Lung Opacity` (score = P(Lung Opacity)); a score ≥ threshold is positive."
    finding = classifier.get("finding") or {}
    return (
        f"Score = P(`{classifier['positive_class']}`) of the classifier (classes "
        f"{', '.join(f'`{c}`' for c in classifier['class_names'])}; finding {finding.get('meaning', '–')}, "
        f"{finding.get('scheme', '')} {finding.get('value', '')}); truth: pneumonia (PneumoniaMNIST label 1) or RSNA "
        "`Target` 1 (Lung Opacity); a score ≥ threshold is positive."
    )


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
        _positive_class_line(report.get("classifier")),
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
            name = (
                f"Youden {_f(r['threshold'])}"
                if key == "youden"
                else f"operating {_f(r['threshold'])} (bundle, chosen on val)"
                if key == "operating"
                else key
            )
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
