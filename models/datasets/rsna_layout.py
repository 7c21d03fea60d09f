"""Read a dataset in the RSNA Pneumonia Detection Challenge layout.

::

    root/stage_2_train_labels.csv           patientId,x,y,width,height,Target  (one row per box;
                                            one row with empty x..height and Target 0 for negatives)
    root/stage_2_detailed_class_info.csv    patientId,class                    (optional; one row per label row)
    root/stage_2_train_images/<patientId>.dcm

Works on the real challenge files and on the phantoms of :mod:`models.phantoms.synth`. Boxes are
``(x, y, width, height)`` in pixels, origin at the top-left corner of the top-left pixel.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.findings import LUNG_OPACITY_INDEX, RSNA_CLASSES

log = logging.getLogger(__name__)

LABELS_CSV = "stage_2_train_labels.csv"
CLASS_INFO_CSV = "stage_2_detailed_class_info.csv"
IMAGES_DIR = "stage_2_train_images"
_LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
_CLASS_COLUMNS = ("patientId", "class")

Box4 = tuple[float, float, float, float]


class RsnaLayoutError(ValueError):
    """The RSNA-layout CSVs are malformed or inconsistent (the message names file, line and value)."""


@dataclass(frozen=True)
class PatientLabels:
    """All labels of one RSNA patient (= one image)."""

    patient_id: str
    #: 1 if the image has at least one lung-opacity box, else 0.
    target: int
    #: One of ``RSNA_CLASSES``, or None when there is no class-info file / row.
    klass: str | None
    #: (x, y, width, height) in pixels; empty when ``target`` is 0.
    boxes: tuple[Box4, ...]
    image_path: Path

    def __post_init__(self) -> None:
        if not self.patient_id:
            raise ValueError("PatientLabels needs a patient_id")
        if self.target not in (0, 1):
            raise ValueError(f"target must be 0 or 1, got {self.target!r} (patient {self.patient_id})")
        if self.klass is not None and self.klass not in RSNA_CLASSES:
            raise ValueError(f"class must be one of {RSNA_CLASSES}, got {self.klass!r} (patient {self.patient_id})")
        boxes = tuple(tuple(float(v) for v in b) for b in self.boxes)
        for b in boxes:
            if len(b) != 4 or not all(math.isfinite(v) for v in b) or b[2] <= 0 or b[3] <= 0:
                raise ValueError(f"invalid box {b!r} for patient {self.patient_id}")
        if (self.target == 1) != bool(boxes):
            raise ValueError(f"Target {self.target} is inconsistent with {len(boxes)} box(es) for patient {self.patient_id}")
        if self.klass is not None and (self.klass == RSNA_CLASSES[LUNG_OPACITY_INDEX]) != (self.target == 1):
            raise ValueError(f"class {self.klass!r} is inconsistent with Target {self.target} for patient {self.patient_id}")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "image_path", Path(self.image_path))

    @property
    def class_index(self) -> int | None:
        """Index of ``klass`` in ``RSNA_CLASSES`` (the classifier target), or None."""
        return None if self.klass is None else RSNA_CLASSES.index(self.klass)


def _check_columns(path: Path, reader: csv.DictReader, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
        raise RsnaLayoutError(f"{path}: missing column(s) {missing}, header is {reader.fieldnames!r}")


def _parse_float(path: Path, line: int, name: str, value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise RsnaLayoutError(f"{path}:{line}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise RsnaLayoutError(f"{path}:{line}: {name} must be finite, got {value!r}")
    return v


def _csv_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str], str]]:
    """``(line number, row, patientId)`` of an RSNA CSV: columns checked, an empty patientId refused."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        _check_columns(path, reader, columns)
        for row in reader:
            pid = (row["patientId"] or "").strip()
            if not pid:
                raise RsnaLayoutError(f"{path}:{reader.line_num}: empty patientId")
            yield reader.line_num, row, pid


def _read_labels(path: Path) -> dict[str, tuple[int, list[Box4]]]:
    out: dict[str, tuple[int, list[Box4]]] = {}
    for line, row, pid in _csv_rows(path, _LABEL_COLUMNS):
        t_raw = (row["Target"] or "").strip()
        if t_raw not in ("0", "1"):
            raise RsnaLayoutError(f"{path}:{line}: Target must be 0 or 1, got {t_raw!r} (patient {pid})")
        target = int(t_raw)
        coords = [(row[c] or "").strip() for c in ("x", "y", "width", "height")]
        if target == 0:
            if any(coords):
                raise RsnaLayoutError(f"{path}:{line}: Target 0 row has a box {coords!r} (patient {pid})")
            box = None
        else:
            if not all(coords):
                raise RsnaLayoutError(f"{path}:{line}: Target 1 row needs x,y,width,height, got {coords!r} "
                                      f"(patient {pid})")
            x, y, w, h = (_parse_float(path, line, c, v) for c, v in zip(("x", "y", "width", "height"), coords, strict=True))
            if w <= 0 or h <= 0:
                raise RsnaLayoutError(f"{path}:{line}: box width/height must be > 0, got {w!r} x {h!r} "
                                      f"(patient {pid})")
            box = (x, y, w, h)
        prev = out.get(pid)
        if prev is not None and prev[0] != target:
            raise RsnaLayoutError(f"{path}:{line}: patient {pid} has rows with Target {prev[0]} and {target}")
        boxes = prev[1] if prev is not None else []
        if box is not None:
            boxes.append(box)
        out[pid] = (target, boxes)
    return out


def _read_classes(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line, row, pid in _csv_rows(path, _CLASS_COLUMNS):
        klass = (row["class"] or "").strip()
        if klass not in RSNA_CLASSES:
            raise RsnaLayoutError(f"{path}:{line}: unknown class {klass!r} for patient {pid} "
                                  f"(expected one of {RSNA_CLASSES})")
        prev = out.get(pid)
        if prev is not None and prev != klass:
            raise RsnaLayoutError(f"{path}:{line}: patient {pid} has classes {prev!r} and {klass!r}")
        out[pid] = klass
    return out


def read_rsna_labels(root: Path, *, missing: Literal["raise", "skip"] = "raise",
                     images_dir: str = IMAGES_DIR) -> dict[str, PatientLabels]:
    """Read ``root`` (RSNA layout) into ``{patientId: PatientLabels}``, in order of first appearance.

    ``missing='raise'`` raises ``FileNotFoundError`` naming the patientId when its image is
    absent; ``missing='skip'`` leaves that patient out and logs a warning. The class-info CSV
    is optional (then every ``klass`` is None); when present it must agree with ``Target``.
    Raises :class:`RsnaLayoutError` (a ``ValueError``) on malformed or inconsistent CSVs.
    """
    if missing not in ("raise", "skip"):
        raise ValueError(f"missing must be 'raise' or 'skip', got {missing!r}")
    root = Path(root)
    labels_path = root / LABELS_CSV
    if not labels_path.is_file():
        raise FileNotFoundError(f"no {LABELS_CSV} in {root}")
    labels = _read_labels(labels_path)
    class_path = root / CLASS_INFO_CSV
    classes = _read_classes(class_path) if class_path.is_file() else {}
    if classes:
        extra = [p for p in classes if p not in labels]
        if extra:
            raise RsnaLayoutError(f"{class_path}: patient {extra[0]} is not in {LABELS_CSV} "
                                  f"({len(extra)} such patient(s))")
    img_root = root / images_dir
    out: dict[str, PatientLabels] = {}
    n_skipped = 0
    for pid, (target, boxes) in labels.items():
        image_path = img_root / f"{pid}.dcm"
        if not image_path.is_file():
            if missing == "raise":
                raise FileNotFoundError(f"image of patient {pid} not found: {image_path}")
            n_skipped += 1  # not logged one by one: the file name is the patient ID
            continue
        klass = classes.get(pid)
        try:
            out[pid] = PatientLabels(pid, target, klass, tuple(boxes), image_path)
        except ValueError as exc:
            raise RsnaLayoutError(f"{root}: {exc}") from None
    if n_skipped:
        log.warning("RSNA images missing, patients skipped",
                    extra={"images_dir": str(img_root), "n_skipped": n_skipped, "n_read": len(out)})
    return out
