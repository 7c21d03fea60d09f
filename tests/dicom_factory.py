"""Helpers that build synthetic CXR-like DICOM datasets for tests (no real patient data).

``cxr_like_array`` draws a smooth, deterministic chest-radiograph-like image (bright
mediastinum and body, dark lung fields, ribs, noise) so codecs see realistic structure.
``make_dataset`` wraps an array in a valid DX/SC-style dataset with file meta information;
``transcode_dcmtk`` runs a dcmtk command line tool on a dataset written to disk.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")


def cxr_like_array(
    rows: int = 301,
    columns: int = 257,
    *,
    bits_stored: int = 12,
    signed: bool = False,
    seed: int = 0,
    noise: float = 0.01,
) -> np.ndarray:
    """A deterministic CXR-like integer image using the full ``bits_stored`` range.

    Returns uint8 (bits_stored <= 8) or uint16/int16 values in the range of ``bits_stored``
    (two's complement range when ``signed``).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float64)
    y, x = yy / max(rows - 1, 1), xx / max(columns - 1, 1)
    img = 0.25 + 0.35 * y + 0.1 * x  # smooth gradient
    body = ((x - 0.5) / 0.48) ** 2 + ((y - 0.55) / 0.52) ** 2 < 1.0
    img = img + 0.25 * body
    for cx in (0.3, 0.7):  # dark lung fields
        lung = ((x - cx) / 0.16) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1.0
        img = img - 0.3 * lung
    img = img + 0.06 * np.sin(y * 40.0) * body  # ribs
    img = img + 0.2 * (np.abs(x - 0.5) < 0.06) * body  # mediastinum/spine
    img = img + rng.normal(0.0, noise, size=img.shape)
    img = (img - img.min()) / (img.max() - img.min())
    if signed:
        lo, hi = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
        dtype: Any = np.int8 if bits_stored <= 8 else np.int16
    else:
        lo, hi = 0, 2**bits_stored - 1
        dtype = np.uint8 if bits_stored <= 8 else np.uint16
    return np.round(lo + img * (hi - lo)).astype(dtype)


def make_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax: UID | str = ExplicitVRLittleEndian,
    sop_class_uid: UID | str = DX_FOR_PRESENTATION,
    sop_instance_uid: str | None = None,
    **attributes: Any,
) -> Dataset:
    """Wrap a (rows, columns) or (rows, columns, 3) array into a dataset with file meta.

    Native (uncompressed) Pixel Data; ``transfer_syntax`` must be an uncompressed one here
    (use ``ds.compress`` or :func:`transcode_dcmtk` for the others). Extra keyword arguments
    are set as DICOM attributes (``ViewPosition="PA"``, ``WindowCenter=...``).
    """
    pixels = np.ascontiguousarray(pixels)
    samples = 3 if pixels.ndim == 3 else 1
    bits_allocated = pixels.dtype.itemsize * 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(str(transfer_syntax))
    ds.file_meta.MediaStorageSOPClassUID = UID(str(sop_class_uid))
    ds.SOPClassUID = UID(str(sop_class_uid))
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYNTH-0001"
    ds.Modality = "OT" if UID(str(sop_class_uid)) == SecondaryCaptureImageStorage else "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file in the transfer syntax of its file meta."""
    ds.save_as(path, enforce_file_format=True)
    return path


def have_dcmtk(*tools: str) -> bool:
    """True when all the named dcmtk tools are on PATH."""
    return all(shutil.which(t) for t in tools)


def transcode_dcmtk(ds: Dataset, tool: str, options: list[str], tmp_path: Path) -> Dataset:
    """Write ``ds`` to ``tmp_path``, run ``tool [options] in out`` and read the result back."""
    src = write(ds, tmp_path / f"in_{tool}.dcm")
    dst = tmp_path / f"out_{tool}_{'_'.join(o.strip('+-') for o in options) or 'default'}.dcm"
    proc = subprocess.run([tool, *options, str(src), str(dst)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(options)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return pydicom.dcmread(dst)
