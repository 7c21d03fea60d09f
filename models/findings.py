"""Typed, immutable results of the inference core.

These classes are the contract between the inference engine (``models.inference.engine``)
and everything downstream (the DICOM node, the SR/SC writers, the CLI).

Coordinate convention
---------------------
Boxes are in the **source image's pixel coordinates**, continuous, with the
origin at the top-left corner of the top-left pixel (``x`` = column axis,
``y`` = row axis). This is the convention of the RSNA challenge labels and of
DICOM SR SCOORD ``Graphic Data`` (where the centre of the top-left pixel is
``0.5\\0.5``), so a box maps to a closed POLYLINE without any offset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

#: The three RSNA Pneumonia Detection Challenge classes, in model output order (the head a user
#: trains on RSNA data; the shipped classifier has its own classes, see ``models.inference.bundle_loader``).
RSNA_CLASSES: tuple[str, str, str] = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
#: Index of the class whose probability is the pneumonia (RSNA ``Target``) probability.
LUNG_OPACITY_INDEX = 2
#: How detector boxes relate to the image-level decision (``Findings.box_gating``):
#: "positive-only" reports boxes only on images decided positive (as RSNA-challenge solutions
#: did); "all" reports every box scoring at least the detection threshold.
BOX_GATING_RULES: tuple[str, str] = ("positive-only", "all")


def _check_finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


#: the attributes a pixel spacing can come from (which one is used: models.imaging.spacing)
SPACING_SOURCES: tuple[str, ...] = ("PixelSpacing", "ImagerPixelSpacing")


def check_spacing_source(value: object) -> None:
    """ValueError unless ``value`` is one of :data:`SPACING_SOURCES`."""
    if value not in SPACING_SOURCES:
        raise ValueError(f"spacing_source must be PixelSpacing or ImagerPixelSpacing, got {value!r}")


def checked_spacing(
    pixel_spacing_mm: object, spacing_source: object
) -> tuple[float, float] | None:
    """A ``(row, column)`` pixel spacing in mm and its source attribute, validated together: two positive
    finite numbers and a :data:`SPACING_SOURCES` name, or both None. Returns the spacing as floats."""
    if pixel_spacing_mm is None:
        if spacing_source is not None:
            raise ValueError(f"spacing_source {spacing_source!r} given without pixel_spacing_mm")
        return None
    sp = tuple(pixel_spacing_mm)  # type: ignore[call-overload]
    if len(sp) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"pixel_spacing_mm must be two positive numbers, got {pixel_spacing_mm!r}")
    check_spacing_source(spacing_source)
    return float(sp[0]), float(sp[1])


def _check_probability(name: str, value: float) -> None:
    _check_finite(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class BoxMM:
    """A box in millimetres on the detector/image plane (from PixelSpacing or ImagerPixelSpacing)."""

    x: float
    y: float
    width: float
    height: float
    #: Which attribute the spacing came from: "PixelSpacing" or "ImagerPixelSpacing".
    spacing_source: str

    def __post_init__(self) -> None:
        for name in ("x", "y", "width", "height"):
            _check_finite(name, getattr(self, name))
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"BoxMM width/height must be > 0, got {self.width!r} x {self.height!r}")
        check_spacing_source(self.spacing_source)


@dataclass(frozen=True)
class Box:
    """One detected lung opacity, in source-image pixel coordinates (see module docstring)."""

    x: float
    y: float
    width: float
    height: float
    score: float
    mm: BoxMM | None = None

    def __post_init__(self) -> None:
        for name in ("x", "y", "width", "height"):
            _check_finite(name, getattr(self, name))
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Box width/height must be > 0, got {self.width!r} x {self.height!r}")
        _check_probability("Box score", self.score)

    @property
    def x2(self) -> float:
        return self.x + self.width

    @property
    def y2(self) -> float:
        return self.y + self.height

    def polyline(self) -> tuple[tuple[float, float], ...]:
        """Closed polyline (x=column, y=row), 5 points, first == last, for an SR SCOORD POLYLINE."""
        return ((self.x, self.y), (self.x2, self.y), (self.x2, self.y2), (self.x, self.y2), (self.x, self.y))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "x": round(self.x, 3),
            "y": round(self.y, 3),
            "width": round(self.width, 3),
            "height": round(self.height, 3),
            "score": round(self.score, 5),
        }
        if self.mm is not None:
            out["mm"] = {
                "x": round(self.mm.x, 3),
                "y": round(self.mm.y, 3),
                "width": round(self.mm.width, 3),
                "height": round(self.mm.height, 3),
                "spacing_source": self.mm.spacing_source,
            }
        return out


@dataclass(frozen=True)
class ModelInfo:
    """Identification of one bundle that contributed to the findings.

    ``digest`` names the exact weights and configuration (a short SHA-256 of the bundle's
    ``models/model.pt`` and ``configs/inference.json``, see ``models.inference.bundle_loader.bundle_digest``):
    a retrained bundle keeps its ``version`` string but never its digest.
    """

    name: str
    version: str
    digest: str = "unknown"

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError(f"ModelInfo needs a name and a version, got {self.name!r} {self.version!r}")
        if not self.digest or not isinstance(self.digest, str):
            raise ValueError(f"ModelInfo digest must be a non-empty string, got {self.digest!r}")

    @property
    def label(self) -> str:
        """``version+digest``, e.g. ``1.0.0+3f2a9c0d1e2b`` (the SR's Algorithm Version)."""
        return f"{self.version}+{self.digest}"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "digest": self.digest}


@dataclass(frozen=True)
class FindingCode:
    """A coded concept naming what the classifier measures (DICOM Code Sequence triplet).

    It comes from the classification bundle's config (``finding``), so that a report says
    what the model was trained to recognise: "Pneumonia" for the shipped classifier (trained
    on pneumonia vs normal radiographs), "Opacity" for a bundle trained on RSNA's Lung Opacity.
    """

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for name in ("value", "scheme", "meaning"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"FindingCode {name} must be a non-empty string, got {v!r}")
        if len(self.value) > 16:
            raise ValueError(f"FindingCode value must fit DICOM SH (16 characters), got {self.value!r}")
        if len(self.meaning) > 64:
            raise ValueError(f"FindingCode meaning must fit DICOM LO (64 characters), got {self.meaning!r}")

    def to_json(self) -> dict[str, str]:
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}


@dataclass(frozen=True, eq=False)
class Heatmap:
    """A class-activation map of the classifier, on a coarse grid over a region of the source image.

    ``values`` (float32, shape ``(h, w)``, in [0, 1]) cover the source-image rectangle
    ``(x, y, width, height)`` (source pixels, same convention as :class:`Box`): the square the
    classifier looked at. Cell ``(i, j)`` covers ``x + j * width / w`` ... along columns.
    """

    values: np.ndarray
    x: float
    y: float
    width: float
    height: float

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=np.float32)
        if v.ndim != 2 or min(v.shape) < 1:
            raise ValueError(f"Heatmap values must be a non-empty 2-D array, got shape {v.shape!r}")
        if not np.all(np.isfinite(v)) or v.min() < 0.0 or v.max() > 1.0:
            raise ValueError(f"Heatmap values must be finite and in [0, 1], got range {v.min()!r}..{v.max()!r}")
        for name in ("x", "y", "width", "height"):
            _check_finite(f"Heatmap {name}", getattr(self, name))
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Heatmap width/height must be > 0, got {self.width!r} x {self.height!r}")
        v = v.copy()
        v.setflags(write=False)
        object.__setattr__(self, "values", v)

    def to_json(self) -> dict[str, Any]:
        return {
            "x": round(self.x, 3),
            "y": round(self.y, 3),
            "width": round(self.width, 3),
            "height": round(self.height, 3),
            "values": [[round(float(c), 4) for c in row] for row in self.values],
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Heatmap:
        return Heatmap(
            np.asarray(data["values"], dtype=np.float32),
            float(data["x"]), float(data["y"]), float(data["width"]), float(data["height"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Findings:
    """What the inference core says about one image.

    ``analysed`` is False for images the core refuses to guess on (lateral views,
    non-CXR); then ``not_analysed_reason`` says why and the probability fields are None.

    For an analysed image: ``class_probabilities`` (the classifier's classes, e.g. Normal /
    Pneumonia), ``probability`` = P(the classifier's positive class), which is the ``finding``;
    the image-level decision is ``positive`` = ``probability >= threshold``. ``boxes`` are the
    detector's boxes scoring at least ``detection_threshold`` **as reported**: with
    ``box_gating == "positive-only"`` (the default) there are none on a negative image.
    ``heatmap`` is the classifier's activation map (positive images only; may be None).
    """

    sop_instance_uid: str
    analysed: bool
    rows: int
    columns: int
    class_probabilities: Mapping[str, float] = field(default_factory=dict)
    probability: float | None = None
    finding: FindingCode | None = None
    threshold: float | None = None
    boxes: tuple[Box, ...] = ()
    detection_threshold: float | None = None
    box_gating: str = "positive-only"
    heatmap: Heatmap | None = None
    #: the source-pixel rectangle ``(x, y, width, height)`` the classifier looked at (its centre crop,
    #: or the whole image); None when unknown (not analysed)
    classifier_region: tuple[float, float, float, float] | None = None
    models: tuple[ModelInfo, ...] = ()
    not_analysed_reason: str | None = None
    #: Wall-clock milliseconds per stage, e.g. {"decode": 12.1, "classify": 30.2, "detect": 41.0}.
    timing_ms: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sop_instance_uid:
            raise ValueError("Findings needs the source SOP Instance UID")
        if self.rows <= 0 or self.columns <= 0:
            raise ValueError(f"Findings rows/columns must be > 0, got {self.rows!r} x {self.columns!r}")
        object.__setattr__(self, "class_probabilities", MappingProxyType(dict(self.class_probabilities)))
        object.__setattr__(self, "timing_ms", MappingProxyType(dict(self.timing_ms)))
        object.__setattr__(self, "boxes", tuple(self.boxes))
        object.__setattr__(self, "models", tuple(self.models))
        if self.box_gating not in BOX_GATING_RULES:
            raise ValueError(f"box_gating must be one of {BOX_GATING_RULES}, got {self.box_gating!r}")
        if self.analysed:
            self._check_analysed()
        else:
            if not self.not_analysed_reason:
                raise ValueError("a Findings that was not analysed must say why (not_analysed_reason)")
            if self.probability is not None or self.boxes or self.heatmap is not None:
                raise ValueError("a Findings that was not analysed cannot carry probabilities, boxes or a heatmap")
        for b in self.boxes:
            if not isinstance(b, Box):
                raise TypeError(f"boxes must be Box instances, got {type(b).__name__}")
        if self.heatmap is not None and not isinstance(self.heatmap, Heatmap):
            raise TypeError(f"heatmap must be a Heatmap, got {type(self.heatmap).__name__}")
        if self.classifier_region is not None:
            region = tuple(float(v) for v in self.classifier_region)
            if len(region) != 4 or not all(math.isfinite(v) for v in region) or region[2] <= 0 or region[3] <= 0:
                raise ValueError(f"classifier_region must be (x, y, width > 0, height > 0), got {self.classifier_region!r}")
            object.__setattr__(self, "classifier_region", region)

    def _check_analysed(self) -> None:
        if self.not_analysed_reason is not None:
            raise ValueError("an analysed Findings cannot carry not_analysed_reason")
        if len(self.class_probabilities) < 2:
            raise ValueError(f"class_probabilities needs at least two classes, got {dict(self.class_probabilities)!r}")
        for k, v in self.class_probabilities.items():
            if not isinstance(k, str) or not k:
                raise ValueError(f"class names must be non-empty strings, got {k!r}")
            _check_probability(f"class probability {k!r}", v)
        if self.probability is None:
            raise ValueError("an analysed Findings needs probability")
        _check_probability("probability", self.probability)
        if not isinstance(self.finding, FindingCode):
            raise ValueError(f"an analysed Findings needs its finding (a FindingCode), got {self.finding!r}")
        if self.threshold is None:
            raise ValueError("an analysed Findings needs the decision threshold")
        _check_probability("threshold", self.threshold)
        if self.detection_threshold is None:
            raise ValueError("an analysed Findings needs the detection threshold")
        _check_probability("detection_threshold", self.detection_threshold)
        for b in self.boxes:
            if isinstance(b, Box) and b.score < self.detection_threshold:
                raise ValueError(f"box score {b.score!r} is below the detection threshold {self.detection_threshold!r}")
        if self.boxes and self.box_gating == "positive-only" and not self.positive:
            raise ValueError(
                f"box_gating 'positive-only' reports no boxes on a negative image "
                f"(probability {self.probability!r} < threshold {self.threshold!r}), got {len(self.boxes)}"
            )
        if not self.models:
            raise ValueError("an analysed Findings must name the models that produced it")

    @property
    def positive(self) -> bool | None:
        """The image-level decision (``probability >= threshold``); None when not analysed."""
        if self.probability is None or self.threshold is None:
            return None
        return self.probability >= self.threshold

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict (one line per image in ``cxr-node infer --json``)."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "analysed": self.analysed,
            "not_analysed_reason": self.not_analysed_reason,
            "rows": self.rows,
            "columns": self.columns,
            "finding": None if self.finding is None else self.finding.to_json(),
            "class_probabilities": {k: round(v, 5) for k, v in self.class_probabilities.items()},
            "probability": None if self.probability is None else round(self.probability, 5),
            "threshold": self.threshold,
            "positive": self.positive,
            "detection_threshold": self.detection_threshold,
            "box_gating": self.box_gating,
            "boxes": [b.to_json() for b in self.boxes],
            "heatmap": None if self.heatmap is None else self.heatmap.to_json(),
            "classifier_region": None
            if self.classifier_region is None
            else [round(v, 3) for v in self.classifier_region],
            "models": [m.to_json() for m in self.models],
            "timing_ms": {k: round(v, 2) for k, v in self.timing_ms.items()},
        }
