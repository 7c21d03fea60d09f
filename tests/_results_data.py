"""Test inputs for the SR/SC result objects: RSNA-style and DX sources, Findings, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.findings import RSNA_CLASSES, Box, BoxMM, FindingCode, Findings, ModelInfo
from models.phantoms.synth import make_phantom, phantom_dataset

MODELS = (
    ModelInfo("cxr_classification", "0.1.0", "0123456789ab"),
    ModelInfo("cxr_opacity_detection", "0.1.0", "ba9876543210"),
)
#: what an RSNA three-class head measures (the default of ``findings_for``)
OPACITY = FindingCode("112001", "DCM", "Opacity")
#: what the shipped two-class classifier measures
PNEUMONIA = FindingCode("233604007", "SCT", "Pneumonia")
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"

#: Non-ASCII patient names and the Specific Character Set each one is stored with.
NAMES_BY_CHARSET = {
    "ISO_IR 192": "Gómez Müller^Zoë=王^小明",
    "ISO_IR 100": "Müller^Jürgen^François",
    "\\ISO 2022 IR 87": "Yamada^Tarou=山田^太郎=やまだ^たろう",
}


def charset_value(charset: str) -> str | list[str]:
    """``"\\ISO 2022 IR 87"`` -> ``["", "ISO 2022 IR 87"]`` (multi-valued), else unchanged."""
    return charset.split("\\") if "\\" in charset else charset


def rsna_source(size: int = 256, *, seed: int = 0, kind: str = "Lung Opacity") -> Dataset:
    """An RSNA-challenge-like source: SC Image Storage, Modality CR, JPEG Baseline, MONOCHROME2."""
    phantom = make_phantom(np.random.default_rng(seed), size=size, kind=kind, view_position="PA")
    return phantom_dataset(phantom, patient_id=f"pat{seed}", seed=seed, index=seed, sex="F", age=42)


def dx_source(rows: int = 320, columns: int = 256, *, seed: int = 1, monochrome1: bool = True) -> Dataset:
    """A 16-bit (12 bits stored) DX For Presentation source with a window, ImagerPixelSpacing and orientation."""
    size = max(rows, columns)
    phantom = make_phantom(np.random.default_rng(seed), size=size, kind="Normal", view_position="PA")
    img = phantom.image[:rows, :columns].astype(np.uint16) * 16  # 0..4080, 12 bits
    if monochrome1:
        img = 4095 - img
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["h5 test dx", str(seed), str(rows), str(columns)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["h5 test dx study", str(seed)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["h5 test dx series", str(seed)])
    ds.Modality = "DX"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = f"DX{seed}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101112"
    ds.AccessionNumber = f"ACC{seed}"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.StudyID = "S1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 7
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = img.tobytes()
    return ds


def findings_for(
    ds: Dataset,
    boxes: tuple[tuple[float, float, float, float], ...] = (),
    *,
    p: float = 0.7,
    scores: tuple[float, ...] | None = None,
    models: tuple[ModelInfo, ...] = MODELS,
    with_mm: bool = True,
    threshold: float = 0.5,
    detection_threshold: float = 0.5,
    box_gating: str = "positive-only",
    two_class: bool = False,
    heatmap: object = None,
) -> Findings:
    """An analysed Findings for ``ds`` with the given (x, y, w, h) boxes (RSNA three-class head by
    default; ``two_class``: the shipped Normal / Pneumonia classifier)."""
    scores = scores or tuple(round(0.9 - 0.1 * i, 3) for i in range(len(boxes)))
    spacing = 0.14
    out = []
    for (x, y, w, h), s in zip(boxes, scores, strict=True):
        mm = BoxMM(x * spacing, y * spacing, w * spacing, h * spacing, "PixelSpacing") if with_mm else None
        out.append(Box(x, y, w, h, score=s, mm=mm))
    rest = (1.0 - p) / 2
    classes = {"Normal": 1.0 - p, "Pneumonia": p} if two_class else dict(zip(RSNA_CLASSES, (rest, rest, p), strict=True))
    return Findings(
        sop_instance_uid=str(ds.SOPInstanceUID),
        analysed=True,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        class_probabilities=classes,
        probability=p,
        finding=PNEUMONIA if two_class else OPACITY,
        threshold=threshold,
        boxes=tuple(out),
        detection_threshold=detection_threshold,
        box_gating=box_gating,
        heatmap=heatmap,  # type: ignore[arg-type]
        models=models,
    )


def not_analysed_for(
    ds: Dataset, reason: str = "lateral view (ViewPosition LL)", *, models: tuple[ModelInfo, ...] = MODELS
) -> Findings:
    """A not-analysed Findings for ``ds`` (e.g. a lateral view)."""
    return Findings(
        sop_instance_uid=str(ds.SOPInstanceUID),
        analysed=False,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        models=models,
        not_analysed_reason=reason,
    )


def three_boxes(size_rows: int, size_cols: int) -> tuple[tuple[float, float, float, float], ...]:
    """Three boxes (continuous coordinates, one with fractional corners) inside the image."""
    r, c = size_rows, size_cols
    return (
        (0.15 * c, 0.25 * r, 0.2 * c, 0.3 * r),
        (0.6 * c + 0.5, 0.3 * r + 0.25, 0.22 * c, 0.25 * r),
        (0.35 * c, 0.62 * r, 0.1 * c, 0.1 * r),
    )


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy on ``path``; return (error lines, warning lines)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise FileNotFoundError("dciodvfy not on PATH")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [x for x in lines if "Error" in x], [x for x in lines if "Warning" in x]
