"""What ``python -m monai.bundle run --config_file configs/inference.json`` runs in this bundle folder.

:func:`classify` runs the DenseNet121 on one image file or every image of a folder (DICOM, PNG,
JPEG) and writes one ``<SOPInstanceUID or name>.json`` per image and ``predictions.csv`` into
``output_dir``. The preprocessing is the one declared in ``inference.json`` (``preprocessing``:
centre square -> ``bottleneck`` px with a Lanczos filter -> ``quantise_levels`` grey levels ->
``image_size`` bilinear -> per-image standardisation), the same definition the node's engine reads
(``models/imaging/preprocess.py`` in cxr-ai-node); ``tests/test_bundle_standalone.py`` checks that
both give the same probability. Imports nothing outside MONAI's dependencies and this folder.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .image_io import iter_images, load_weights, read_unit_image, resolve_device, write_record

logger = logging.getLogger(__name__)
#: smallest standard deviation used by "standardise"
MIN_STD = 1e-3
#: Pillow's two-step downsampling (integer reduction, then Lanczos) beyond this ratio
REDUCING_GAP = 3.0


def centre_crop_input(unit: np.ndarray, image_size: Sequence[int], preprocessing: Mapping[str, Any]) -> torch.Tensor:
    """A ``(1, 1, H, W)`` network input from a 2-D [0, 1] image, as ``preprocessing`` declares."""
    from PIL import Image

    if preprocessing.get("method") != "centre-crop":
        raise ValueError(f"this bundle's runner implements the centre-crop method, got {dict(preprocessing)!r}")
    rows, cols = unit.shape
    side = min(rows, cols)
    y, x = (rows - side) // 2, (cols - side) // 2
    square = np.ascontiguousarray(unit[y : y + side, x : x + side], dtype=np.float32)
    height, width = int(image_size[0]), int(image_size[1])
    bottleneck = preprocessing.get("bottleneck")
    if bottleneck is not None:
        small = square
        if square.shape != (bottleneck, bottleneck):
            small = np.array(
                Image.fromarray(square).resize(
                    (bottleneck, bottleneck), resample=Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP
                ),
                dtype=np.float32,
            )
            small = np.clip(small, 0.0, 1.0)
        levels = preprocessing.get("quantise_levels")
        if levels is not None:
            small = np.round(small * (levels - 1)) / (levels - 1)
        t = torch.from_numpy(np.ascontiguousarray(small, dtype=np.float32))[None, None]
        out = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
    else:
        t = torch.from_numpy(square)[None, None]
        out = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    out = out.clamp(0.0, 1.0)
    if preprocessing.get("normalise", "none") == "standardise":
        mean = out.mean(dim=(-2, -1), keepdim=True)
        std = out.std(dim=(-2, -1), keepdim=True).clamp_min(MIN_STD)
        out = (out - mean) / std
    return out


def classify(
    *,
    network: torch.nn.Module,
    ckpt_path: str | Path,
    dataset_dir: str | Path,
    output_dir: str | Path,
    image_size: Sequence[int],
    class_names: Sequence[str],
    positive_class: str,
    preprocessing: Mapping[str, Any],
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Classify every image of ``dataset_dir`` (a file or a folder); write JSON records + ``predictions.csv``."""
    if positive_class not in class_names:
        raise ValueError(f"positive_class {positive_class!r} is not one of {list(class_names)}")
    positive_index = list(class_names).index(positive_class)
    dev = resolve_device(device)
    load_weights(network, ckpt_path)
    network.to(dev).eval()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for path in iter_images(dataset_dir):
        record: dict[str, Any] = {"file": str(path)}
        identifier = path.stem
        try:
            identifier, unit = read_unit_image(path)
            x = centre_crop_input(unit, image_size, preprocessing).to(dev)
            with torch.no_grad():
                probs = torch.softmax(network(x).float(), dim=1)[0].cpu().numpy()
            record.update(
                id=identifier,
                analysed=True,
                class_probabilities={n: float(p) for n, p in zip(class_names, probs, strict=True)},
                probability=float(probs[positive_index]),
                predicted_class=class_names[int(probs.argmax())],
            )
        except Exception as exc:  # one bad file must not stop the folder
            record.update(id=identifier, analysed=False, error=f"{type(exc).__name__}: {exc}")
            logger.warning("cannot analyse %s: %s", path, record["error"])
        write_record(out, identifier, record)
        records.append(record)
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "file", "analysed", *class_names, "probability", "predicted_class", "note"])
        for r in records:
            cp = r.get("class_probabilities", {})
            w.writerow([r["id"], r["file"], r["analysed"], *[f"{cp[n]:.6f}" if n in cp else "" for n in class_names],
                        f"{r['probability']:.6f}" if "probability" in r else "", r.get("predicted_class", ""),
                        r.get("error", "")])
    logger.info("classified %d image(s) into %s", len(records), out)
    return records
