"""Typed, immutable results of the inference core.

These classes are the contract between the inference engine (``models.engine``)
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

#: The three RSNA Pneumonia Detection Challenge classes, in model output order.
RSNA_CLASSES: tuple[str, str, str] = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
#: Index of the class whose probability is the pneumonia (RSNA ``Target``) probability.
LUNG_OPACITY_INDEX = 2


def _check_finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


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
        if self.spacing_source not in ("PixelSpacing", "ImagerPixelSpacing"):
            raise ValueError(f"spacing_source must be PixelSpacing or ImagerPixelSpacing, got {self.spacing_source!r}")


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
    """Identification of one bundle that contributed to the findings."""

    name: str
    version: str

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError(f"ModelInfo needs a name and a version, got {self.name!r} {self.version!r}")


@dataclass(frozen=True)
class Findings:
    """What the inference core says about one image.

    ``analysed`` is False for images the core refuses to guess on (lateral views,
    non-CXR); then ``not_analysed_reason`` says why and the probability fields are None.
    """

    sop_instance_uid: str
    analysed: bool
    rows: int
    columns: int
    class_probabilities: Mapping[str, float] = field(default_factory=dict)
    pneumonia_probability: float | None = None
    boxes: tuple[Box, ...] = ()
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
        if self.analysed:
            if self.not_analysed_reason is not None:
                raise ValueError("an analysed Findings cannot carry not_analysed_reason")
            if set(self.class_probabilities) != set(RSNA_CLASSES):
                raise ValueError(
                    f"class_probabilities must have exactly the keys {RSNA_CLASSES}, got {tuple(self.class_probabilities)}"
                )
            for k, v in self.class_probabilities.items():
                _check_probability(f"class probability {k!r}", v)
            if self.pneumonia_probability is None:
                raise ValueError("an analysed Findings needs pneumonia_probability")
            _check_probability("pneumonia_probability", self.pneumonia_probability)
            if not self.models:
                raise ValueError("an analysed Findings must name the models that produced it")
        else:
            if not self.not_analysed_reason:
                raise ValueError("a Findings that was not analysed must say why (not_analysed_reason)")
            if self.pneumonia_probability is not None or self.boxes:
                raise ValueError("a Findings that was not analysed cannot carry probabilities or boxes")
        for b in self.boxes:
            if not isinstance(b, Box):
                raise TypeError(f"boxes must be Box instances, got {type(b).__name__}")

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict (one line per image in ``cxr-node infer --json``)."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "analysed": self.analysed,
            "not_analysed_reason": self.not_analysed_reason,
            "rows": self.rows,
            "columns": self.columns,
            "class_probabilities": {k: round(v, 5) for k, v in self.class_probabilities.items()},
            "pneumonia_probability": None
            if self.pneumonia_probability is None
            else round(self.pneumonia_probability, 5),
            "boxes": [b.to_json() for b in self.boxes],
            "models": [{"name": m.name, "version": m.version} for m in self.models],
            "timing_ms": {k: round(v, 2) for k, v in self.timing_ms.items()},
        }
