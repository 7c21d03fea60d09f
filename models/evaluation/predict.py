"""Per-image predictions of the evaluation: the row type and running the engine.

:class:`ImagePrediction` is one image's truth and engine output (one row of
``predictions.csv``, see :mod:`models.evaluation.predictions_csv`). :func:`predict_rsna` submits the
DICOMs of an RSNA-layout data set to :class:`models.inference.engine.InferenceEngine`;
:func:`predict_npz` submits the decoded arrays of a PneumoniaMNIST ``.npz`` split with
``InferenceEngine.submit_array``. Images the engine does not analyse (view gate) or cannot
decode become ``not_analysed`` / ``failed`` rows, never an exception.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.findings import RSNA_CLASSES

logger = logging.getLogger(__name__)

Box4 = tuple[float, float, float, float]
PredBox = tuple[float, float, float, float, float]

STATUSES: tuple[str, str, str] = ("analysed", "not_analysed", "failed")


@dataclass(frozen=True)
class ImagePrediction:
    """Truth and engine output for one image (one row of ``predictions.csv``)."""

    patient_id: str
    sop_instance_uid: str
    #: DICOM path, or ``npz:<file>:<split>:<index>`` for PneumoniaMNIST.
    image: str
    target: int
    klass: str | None
    status: str
    reason: str | None = None
    rows: int = 0
    columns: int = 0
    #: Probabilities in ``RSNA_CLASSES`` order (analysed by a three-class RSNA head only; None for
    #: a classifier with other classes, such as the shipped Normal / Pneumonia one).
    class_probabilities: tuple[float, float, float] | None = None
    #: The classifier's probability of its positive finding (the pneumonia / ``Target`` score).
    pneumonia_probability: float | None = None
    gt_boxes: tuple[Box4, ...] = ()
    pred_boxes: tuple[PredBox, ...] = ()

    def __post_init__(self) -> None:
        if not self.patient_id:
            raise ValueError("ImagePrediction needs a patient_id")
        if self.target not in (0, 1):
            raise ValueError(f"target must be 0 or 1, got {self.target!r} (patient {self.patient_id})")
        if self.klass is not None and self.klass not in RSNA_CLASSES:
            raise ValueError(f"class must be one of {RSNA_CLASSES} or None, got {self.klass!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        object.__setattr__(self, "gt_boxes", tuple(tuple(float(v) for v in b) for b in self.gt_boxes))
        object.__setattr__(self, "pred_boxes", tuple(tuple(float(v) for v in b) for b in self.pred_boxes))
        if self.status == "analysed":
            if self.pneumonia_probability is None:
                raise ValueError(f"an analysed prediction needs its probability (patient {self.patient_id})")
            if self.class_probabilities is not None:
                probs = tuple(float(p) for p in self.class_probabilities)
                if len(probs) != len(RSNA_CLASSES) or not all(0.0 <= p <= 1.0 for p in probs):
                    raise ValueError(
                        f"class_probabilities must be {len(RSNA_CLASSES)} values in [0, 1], got {probs!r}"
                    )
                object.__setattr__(self, "class_probabilities", probs)
            if not 0.0 <= float(self.pneumonia_probability) <= 1.0:
                raise ValueError(
                    f"pneumonia_probability must be in [0, 1], got {self.pneumonia_probability!r}"
                )
        else:
            if not self.reason:
                raise ValueError(f"a {self.status} prediction must say why (patient {self.patient_id})")
            if self.pneumonia_probability is not None or self.pred_boxes:
                raise ValueError(
                    f"a {self.status} prediction cannot carry scores (patient {self.patient_id})"
                )



def _from_findings(base: dict[str, Any], findings: Any) -> ImagePrediction:
    if not findings.analysed:
        return ImagePrediction(
            **base,
            status="not_analysed",
            reason=findings.not_analysed_reason,
            rows=findings.rows,
            columns=findings.columns,
        )
    three_class = set(findings.class_probabilities) == set(RSNA_CLASSES)
    probs = tuple(float(findings.class_probabilities[c]) for c in RSNA_CLASSES) if three_class else None
    boxes = tuple((b.x, b.y, b.width, b.height, b.score) for b in findings.boxes)
    return ImagePrediction(
        **{**base, "sop_instance_uid": findings.sop_instance_uid},
        status="analysed",
        rows=findings.rows,
        columns=findings.columns,
        class_probabilities=probs,  # type: ignore[arg-type]
        pneumonia_probability=float(findings.probability),
        pred_boxes=boxes,
    )


def _drain(pending: list[tuple[dict[str, Any], Any]], out: list[ImagePrediction], keep: int) -> None:
    while len(pending) > keep:
        base, fut = pending.pop(0)
        try:
            findings = fut.result()
        except Exception as exc:  # decode errors, a failed batch: counted, not fatal
            logger.warning("image failed", extra={"image": base["image"], "error": str(exc)})
            out.append(ImagePrediction(**base, status="failed", reason=f"{type(exc).__name__}: {exc}"))
            continue
        out.append(_from_findings(base, findings))


def predict_rsna(engine: Any, labels: Sequence[Any], *, in_flight: int = 16) -> list[ImagePrediction]:
    """Run ``engine.submit`` on each patient's DICOM (at most ``in_flight`` pending); input order kept."""
    import pydicom

    out: list[ImagePrediction] = []
    pending: list[tuple[dict[str, Any], Any]] = []
    for lab in labels:
        base = {
            "patient_id": lab.patient_id,
            "sop_instance_uid": "",
            "image": str(lab.image_path),
            "target": int(lab.target),
            "klass": lab.klass,
            "gt_boxes": tuple(lab.boxes),
        }
        try:
            ds = pydicom.dcmread(lab.image_path)
            base["sop_instance_uid"] = str(ds.get("SOPInstanceUID", "") or "")
            fut = engine.submit(ds)
        except Exception as exc:
            _drain(pending, out, 0)
            logger.warning("cannot read image", extra={"image": str(lab.image_path), "error": str(exc)})
            out.append(ImagePrediction(**base, status="failed", reason=f"{type(exc).__name__}: {exc}"))
            continue
        pending.append((base, fut))
        _drain(pending, out, in_flight)
    _drain(pending, out, 0)
    return out


def load_npz_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 N×H×W, labels int N)`` of one split of a PneumoniaMNIST-layout ``.npz``."""
    with np.load(path) as data:
        key_i, key_l = f"{split}_images", f"{split}_labels"
        if key_i not in data or key_l not in data:
            raise ValueError(f"{path} has no {key_i}/{key_l}, keys are {sorted(data.keys())}")
        images = np.asarray(data[key_i])
        labels = np.asarray(data[key_l]).reshape(-1).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{path}: {key_i} must be N×H×W matching {key_l}, got {images.shape} and {labels.shape}"
        )
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        raise ValueError(f"{path}: {key_l} must be 0/1, got {sorted(set(labels.tolist()))}")
    return images, labels


def npz_source_image(image: np.ndarray, uid: str) -> Any:
    """A ``SourceImage`` from one 8-bit greyscale array (0 = black); the engine resizes it."""
    from models.imaging.dicom_image import SourceImage

    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    scale = 255.0 if arr.dtype == np.uint8 or arr.max() > 1.0 else 1.0
    pixels = np.ascontiguousarray(arr.astype(np.float32) / np.float32(scale))
    return SourceImage(pixels=pixels, rows=arr.shape[0], columns=arr.shape[1], sop_instance_uid=uid)


def predict_npz(
    engine: Any, path: Path, split: str, *, max_images: int | None = None, in_flight: int = 16
) -> list[ImagePrediction]:
    """Run ``engine.submit_array`` on a PneumoniaMNIST split (label 1 = pneumonia = positive)."""
    images, labels = load_npz_split(path, split)
    n = len(labels) if max_images is None else min(len(labels), max_images)
    out: list[ImagePrediction] = []
    pending: list[tuple[dict[str, Any], Any]] = []
    for i in range(n):
        uid = f"npz-{split}-{i:05d}"
        base = {
            "patient_id": f"{split}-{i:05d}",
            "sop_instance_uid": uid,
            "image": f"npz:{Path(path).name}:{split}:{i}",
            "target": int(labels[i]),
            "klass": None,
            "gt_boxes": (),
        }
        pending.append((base, engine.submit_array(npz_source_image(images[i], uid))))
        _drain(pending, out, in_flight)
    _drain(pending, out, 0)
    return out
