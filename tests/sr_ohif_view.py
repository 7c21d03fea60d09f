"""What OHIF v3 makes of a TID 1500 SR: its SR parser and label rules, re-implemented in Python.

Transcribed from OHIF 3.13.2's ``@ohif/extension-cornerstone-dicom-sr`` (in ``@ohif/app``'s
``dist/``: ``getSopClassHandlerModule.ts`` ``_getMeasurements`` / ``_processTID1410Measurement`` /
``_processNonGeometricallyDefinedMeasurement`` / ``_getLabelFromMeasuredValueSequence``,
``_checkIfCanAddMeasurementsToDisplaySet``, and ``DICOMSRDisplayTool._getTextBoxLinesFromLabels``):

- each Measurement Group (DCM 125007) of Imaging Measurements is one measurement, keyed by its
  Tracking Unique Identifier;
- a group with a SCOORD among its own items is read as TID 1410: that SCOORD is the drawing, and
  *every* NUM item of the group with a Measured Value gives a label line
  ``"<concept meaning>: <value with 2 decimals> <unit code value>"``, then the first Finding Site
  (SCT 363698007) gives ``"363698007: <site meaning>"``;
- any other group is read as TID 1501: a NUM item that has its own Content Sequence must hold a
  SCOORD, otherwise the NUM is dropped (label included); the measurement's coordinates are those
  SCOORDs, and a measurement without any makes ``_checkIfCanAddMeasurementsToDisplaySet`` read
  ``coords[0].ReferencedSOPSequence`` of ``undefined``: the TypeError that blanks the viewport;
- the viewport draws at most the first 5 label lines of a measurement.

The unit tests use it to check our SRs without a browser; the browser test checks that the real
OHIF shows exactly these lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
from pydicom.dataset import Dataset

MEASUREMENT_GROUP = "125007"
IMAGING_MEASUREMENTS = "126010"
TRACKING_UID = "112040"
TRACKING_IDENTIFIER = "112039"
FINDING_SITE_SCT = "363698007"
#: DICOMSRDisplayTool draws at most this many label lines per measurement
MAX_LINES = 5
_SHORTHAND = {"Short Axis": "W: ", "Long Axis": "L: ", "AREA": "Area: ", "Length": "", "CORNERSTONEFREETEXT": ""}


class OhifCrash(AssertionError):
    """What OHIF would throw on this SR (the measurement has no coordinates)."""


@dataclass
class OhifMeasurement:
    """One measurement as OHIF builds it from a Measurement Group."""

    tracking_uid: str
    tracking_identifier: str
    #: (graphic type, points as an (n, 2) array, referenced SOP Instance UID) of each SCOORD
    coords: list[tuple[str, np.ndarray, str | None]] = field(default_factory=list)
    #: every label OHIF keeps, in order (the viewport draws :attr:`lines`)
    labels: list[tuple[str, str]] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        """The text lines next to the drawing (``DICOMSRDisplayTool._getTextBoxLinesFromLabels``)."""
        out = []
        for label, value in self.labels[:MAX_LINES]:
            short = _SHORTHAND.get(label)
            out.append(f"{label if short is None else short}: {value}")
        return out


def to_fixed_2(value: float) -> str:
    """JavaScript ``Number(value).toFixed(2)`` for a non-negative number (ties round up, not to even)."""
    return str(Decimal(float(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _code(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> Dataset | None:
    seq = item.get(keyword)
    return seq[0] if seq else None


def _num_label(item: Dataset) -> tuple[str, str] | None:
    measured = item.get("MeasuredValueSequence")
    if not measured:
        return None
    mv = measured[0]
    number = mv.get("NumericValue")
    text = to_fixed_2(float(number)) if number not in (None, "") and float(number) != 0 else ""
    unit = mv.MeasurementUnitsCodeSequence[0].CodeValue
    return str(_code(item).CodeMeaning), f"{text} {unit}"


def _scoord(item: Dataset) -> tuple[str, np.ndarray, str | None]:
    refs = [c for c in item.get("ContentSequence", []) if "ReferencedSOPSequence" in c]
    sop = str(refs[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) if refs else None
    points = np.asarray([float(v) for v in item.GraphicData], dtype=float).reshape(-1, 2)
    return str(item.GraphicType), points, sop


def measurement_groups(sr: Dataset) -> list[Dataset]:
    """The Measurement Group containers of the SR's Imaging Measurements, in document order."""
    measurements = [i for i in sr.ContentSequence if _code(i) is not None and _code(i).CodeValue == IMAGING_MEASUREMENTS]
    if not measurements:
        return []
    return [g for g in measurements[0].get("ContentSequence", [])
            if _code(g) is not None and _code(g).CodeValue == MEASUREMENT_GROUP]  # fmt: skip


def ohif_measurements(sr: Dataset) -> list[OhifMeasurement]:
    """The measurements OHIF builds from ``sr``; :class:`OhifCrash` where OHIF throws."""
    out = []
    for group in measurement_groups(sr):
        items = list(group.get("ContentSequence", []))
        by_code = {str(_code(i).CodeValue): i for i in reversed(items) if _code(i) is not None}
        m = OhifMeasurement(
            tracking_uid=str(by_code[TRACKING_UID].UID) if TRACKING_UID in by_code else "",
            tracking_identifier=str(by_code[TRACKING_IDENTIFIER].TextValue) if TRACKING_IDENTIFIER in by_code else "",
        )
        scoords = [i for i in items if i.ValueType in ("SCOORD", "SCOORD3D")]
        nums = [i for i in items if i.ValueType == "NUM"]
        if scoords:  # TID 1410
            m.coords.append(_scoord(scoords[0]))
            m.labels += [label for label in map(_num_label, nums) if label is not None]
            sites = [i for i in items if _code(i) is not None and _code(i).CodeValue == FINDING_SITE_SCT
                     and _code(i).CodingSchemeDesignator == "SCT"]  # fmt: skip
            if sites:
                m.labels.append((FINDING_SITE_SCT, str(sites[0].ConceptCodeSequence[0].CodeMeaning)))
        else:  # TID 1501
            for num in nums:
                if "ContentSequence" in num:
                    inner = [c for c in num.ContentSequence if c.ValueType in ("SCOORD", "SCOORD3D")]
                    if not inner:
                        continue  # OHIF: "ContentSequence array contains no SCOORD ..., skipping annotation"
                    m.coords.append(_scoord(inner[0]))
                label = _num_label(num)
                if label is not None:
                    m.labels.append(label)
        if not m.coords:
            raise OhifCrash(
                f"measurement group {m.tracking_identifier!r} has no SCOORD: OHIF throws "
                "TypeError: Cannot read properties of undefined (reading 'ReferencedSOPSequence')"
            )
        out.append(m)
    return out


def ohif_problems(sr: Dataset) -> list[str]:
    """Why OHIF would not show ``sr`` completely: groups without a region, NUMs it drops."""
    problems = []
    for group in measurement_groups(sr):
        items = list(group.get("ContentSequence", []))
        name = next((str(i.TextValue) for i in items if _code(i) is not None and _code(i).CodeValue == TRACKING_IDENTIFIER), "?")
        if not any(i.ValueType == "SCOORD" for i in items):
            problems.append(f"group {name!r}: no SCOORD region (OHIF crashes)")
        for num in (i for i in items if i.ValueType == "NUM"):
            if "ContentSequence" in num:
                problems.append(f"group {name!r}: NUM {_code(num).CodeMeaning!r} has its own Content Sequence")
    return problems
