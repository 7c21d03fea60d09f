"""The one pixel-spacing rule: which attribute gives a projection radiograph's pixel size in mm.

A CR/DX image can carry two spacings (PS3.3 C.8.11.4, "Pixel Spacing" and "Imager Pixel Spacing"):

- ``ImagerPixelSpacing`` (0018,1164): measured at the front plane of the image receptor (the detector).
  An object in the patient, nearer the X-ray source, is magnified on the detector, so distances computed
  with it overstate sizes in the patient (typically by 5-15 % for a chest PA).
- ``PixelSpacing`` (0028,0030): when present in a CR/DX image it has been calibrated to the patient
  (e.g. for the estimated magnification), so it is the better estimate of sizes in the patient.

Rule (:data:`PATIENT_PLANE`): every measurement the node reports in mm (box sizes and areas in the SR,
:class:`~models.imaging.dicom_image.SourceImage.pixel_spacing_mm`) uses ``PixelSpacing`` if present and
valid, else ``ImagerPixelSpacing``; the attribute used is recorded (``spacing_source``) so a reader knows
which plane the millimetres refer to. The one other use is a description, not a measurement: the SR's
image-library descriptors "Horizontal/Vertical Pixel Spacing" (DCM 111026/111066, TID 1603) are defined
at the front plane of the image receptor, so they take ``ImagerPixelSpacing`` first
(:data:`RECEPTOR_PLANE`, as highdicom's TID 1603 does). Both read and validate the attributes here
(two positive finite numbers, else ignored with a warning).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from models.errors import sop_uid_of
from models.findings import SPACING_SOURCES

logger = logging.getLogger(__name__)

#: measurements in the patient: calibrated PixelSpacing first, detector spacing as the fallback
PATIENT_PLANE: tuple[str, ...] = SPACING_SOURCES
#: the SR's TID 1603 descriptors, defined at the image receptor: ImagerPixelSpacing first
RECEPTOR_PLANE: tuple[str, ...] = tuple(reversed(SPACING_SOURCES))


def pixel_spacing(ds: Any, order: tuple[str, ...] = PATIENT_PLANE) -> tuple[tuple[float, float] | None, str | None]:
    """``((row spacing, column spacing) in mm, attribute used)`` by the first valid attribute of ``order``;
    ``(None, None)`` when none is present and valid (an invalid value is logged and skipped)."""
    for keyword in order:
        if keyword not in SPACING_SOURCES:
            raise ValueError(f"not a pixel spacing attribute: {keyword!r}")
        value = ds.get(keyword, None)
        if value is None or value == "":
            continue
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            values = []
        if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values):
            return (values[0], values[1]), keyword
        logger.warning(
            "ignoring invalid pixel spacing",
            extra={"sop_instance_uid": sop_uid_of(ds), "attribute": keyword, "value": str(value)},
        )
    return None, None
