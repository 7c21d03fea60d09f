"""``predictions.csv``: write and read back the per-image predictions of an evaluation.

Floats are written with ``repr`` and boxes as JSON lists, so a written file reads back into
exactly the same :class:`models.evaluation.predict.ImagePrediction` rows (the report is
computed from the rows read back, so the file and the report always agree).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path

from models.evaluation.predict import ImagePrediction

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
