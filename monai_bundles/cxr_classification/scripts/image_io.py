"""Read the images a standalone ``monai.bundle run`` analyses: DICOM (pydicom) or PNG/JPEG (Pillow).

Part of the bundle, not of the node: imports only the standard library, numpy, pydicom and Pillow,
so that ``python -m monai.bundle run --config_file configs/inference.json`` works with MONAI and
this folder alone. (Both shipped bundles carry an identical copy: each bundle is self-contained.)

The grey-level rule follows the node's (``models/imaging/dicom_image.py``) for the common cases:
Modality LUT, then the first Window Center/Width (LINEAR) or else a 0.5-99.5 percentile window
(constant border left out),
MONOCHROME1 inverted, output float32 in [0, 1]. The node's decoder adds safety checks (size
limits, codestream checks) and VOI LUT sequences / SIGMOID windows, which a standalone run leaves out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILE_WINDOW = (0.5, 99.5)
PERCENTILE_SAMPLE = 1_000_000  # pixels used to estimate the percentile window
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def is_dicom(path: Path) -> bool:
    """``*.dcm`` or a file with the ``DICM`` preamble."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def iter_images(dataset: str | Path) -> Iterator[Path]:
    """``dataset`` itself when it is a file, else the DICOM/PNG/JPEG files under it (recursive, sorted)."""
    root = Path(dataset)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir is neither a file nor a folder: {root}")
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.suffix.lower() in PICTURE_SUFFIXES or is_dicom(p):
            yield p


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM LINEAR window (PS3.3 C.11.2.1.2) mapped to [0, 1]."""
    if width <= 1.0:
        return (x > center - 0.5).astype(np.float32)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0).astype(np.float32)


def _content_region(x: np.ndarray) -> tuple[slice, slice]:
    """Slices of ``x`` without a constant border (padding) in its extreme value."""
    v = x[0, 0]
    if not (v == x.min() or v == x.max()):
        return slice(None), slice(None)
    eq = x == v
    keep_r, keep_c = np.flatnonzero(~eq.all(axis=1)), np.flatnonzero(~eq.all(axis=0))
    if keep_r.size == 0 or keep_c.size == 0:
        return slice(None), slice(None)
    return slice(int(keep_r[0]), int(keep_r[-1]) + 1), slice(int(keep_c[0]), int(keep_c[-1]) + 1)


def _percentile_window(x: np.ndarray) -> np.ndarray:
    """Linear map between the 0.5 and 99.5 percentiles of the image without its constant border,
    estimated on at most ~1 M pixels."""
    rs, cs = _content_region(x)
    content = x[rs, cs]
    step = max(1, math.ceil(math.sqrt(content.size / PERCENTILE_SAMPLE)))
    lo, hi = (float(v) for v in np.percentile(content[::step, ::step], PERCENTILE_WINDOW))
    if hi <= lo:
        lo, hi = float(content.min()), float(content.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)


def _first(value: Any) -> float:
    """The first of a possibly multi-valued DICOM number."""
    from pydicom.multival import MultiValue

    return float(value[0]) if isinstance(value, (MultiValue, list, tuple)) else float(value)


def _frame0(ds: Any) -> np.ndarray:
    """Frame 0; JPEG Baseline with Pillow first (libjpeg's rounding, as the node decodes it)."""
    from pydicom.pixels import pixel_array

    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts == JPEG_BASELINE:
        try:
            return pixel_array(ds, index=0, decoding_plugin="pillow")
        except Exception:  # Pillow missing or refusing the stream: pydicom's default order
            pass
    return pixel_array(ds, index=0)


def read_unit_image(path: Path) -> tuple[str, np.ndarray]:
    """``(identifier, 2-D float32 image in [0, 1], bone bright)``; the identifier is the SOP Instance UID
    of a DICOM file, else the file name without suffix."""
    if path.suffix.lower() in PICTURE_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            grey = np.asarray(im.convert("F"), dtype=np.float32)
        return path.stem, np.clip(grey / 255.0, 0.0, 1.0)
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(str(path))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{path}: only greyscale images are supported, got {photometric!r}")
    pixels = _frame0(ds)
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected one 2-D frame, got shape {pixels.shape}")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center not in (None, "") and width not in (None, "") and _first(width) >= 1.0:
        unit = _window(values, _first(center), _first(width))
    else:
        unit = _percentile_window(values)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return str(ds.get("SOPInstanceUID", "") or path.stem), unit


def write_record(output_dir: Path, identifier: str, record: dict[str, Any]) -> None:
    """One ``<identifier>.json`` per image."""
    safe = "".join(c for c in identifier if c.isalnum() or c in ".-_") or "unknown"
    with open(output_dir / f"{safe}.json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)


def resolve_device(device: str) -> Any:
    """``"auto"``: CUDA when available, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_weights(network: Any, ckpt_path: str | Path) -> None:
    """Load ``models/model.pt`` (a state dict, possibly fp16) strictly into ``network``."""
    import torch

    sd = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    sd = {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v) for k, v in sd.items()}
    network.load_state_dict(sd, strict=True)
