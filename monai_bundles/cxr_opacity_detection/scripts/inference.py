"""What ``python -m monai.bundle run --config_file configs/inference.json`` runs in this bundle folder.

:func:`detect` runs the RetinaNet detector (built from MONAI components in ``inference.json``) on
one image file or every image of a folder (DICOM, PNG, JPEG): letterbox to ``image_size`` (aspect
kept, zero padding, Pillow's antialiased bilinear filter, as the node's engine), detector boxes in
``box_format`` order, boxes with score >= ``score_threshold`` mapped back to source pixels (x =
column, RSNA convention). Writes one JSON per image and ``predictions.csv`` (RSNA
``PredictionString``). Imports nothing outside MONAI's dependencies and this folder.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .image_io import iter_images, load_weights, read_unit_image, resolve_device, write_record

logger = logging.getLogger(__name__)
BOX_FORMATS = ("xyxy", "monai")


def letterbox(unit: np.ndarray, image_size: Sequence[int]) -> tuple[torch.Tensor, tuple[float, float, int, int]]:
    """``(1, H, W)`` input and ``(scale_y, scale_x, pad_top, pad_left)`` mapping model to source pixels."""
    from PIL import Image

    rows, cols = unit.shape
    height, width = int(image_size[0]), int(image_size[1])
    scale = min(height / rows, width / cols)
    rh, rw = min(height, max(1, round(rows * scale))), min(width, max(1, round(cols * scale)))
    top, left = (height - rh) // 2, (width - rw) // 2
    src = np.ascontiguousarray(unit, dtype=np.float32)
    resized = src if src.shape == (rh, rw) else np.array(
        Image.fromarray(src).resize((rw, rh), resample=Image.Resampling.BILINEAR), dtype=np.float32
    )
    out = np.zeros((1, height, width), dtype=np.float32)
    out[0, top : top + rh, left : left + rw] = np.clip(resized, 0.0, 1.0)
    return torch.from_numpy(out), (rh / rows, rw / cols, top, left)


def detect(
    *,
    detector: torch.nn.Module,
    ckpt_path: str | Path,
    dataset_dir: str | Path,
    output_dir: str | Path,
    image_size: Sequence[int],
    score_threshold: float,
    box_format: str = "monai",
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Detect lung opacities in every image of ``dataset_dir`` (a file or a folder)."""
    if not 0.0 <= float(score_threshold) <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold!r}")
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
    dev = resolve_device(device)
    load_weights(detector.network, ckpt_path)
    detector.to(dev).eval()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for path in iter_images(dataset_dir):
        record: dict[str, Any] = {"file": str(path)}
        identifier = path.stem
        try:
            identifier, unit = read_unit_image(path)
            x, (sy, sx, top, left) = letterbox(unit, image_size)
            with torch.no_grad():
                pred = detector([x.to(dev)])[0]
            raw = pred[detector.target_box_key].float().cpu().reshape(-1, 4).tolist()
            scores = pred[detector.pred_score_key].float().cpu().reshape(-1).tolist()
            found = []
            for box, s in sorted(zip(raw, scores, strict=True), key=lambda t: -t[1]):
                r1, c1, r2, c2 = box if box_format == "monai" else (box[1], box[0], box[3], box[2])
                if s < score_threshold or c2 <= c1 or r2 <= r1:
                    continue
                found.append({"score": float(s), "model_xyxy": [c1, r1, c2, r2],
                              "x": (c1 - left) / sx, "y": (r1 - top) / sy,
                              "width": (c2 - c1) / sx, "height": (r2 - r1) / sy})
            record.update(id=identifier, analysed=True, rows=int(unit.shape[0]), columns=int(unit.shape[1]),
                          score_threshold=float(score_threshold), boxes=found)
        except Exception as exc:  # one bad file must not stop the folder
            record.update(id=identifier, analysed=False, error=f"{type(exc).__name__}: {exc}")
            logger.warning("cannot analyse %s: %s", path, record["error"])
        write_record(out, identifier, record)
        records.append(record)
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "file", "analysed", "n_boxes", "PredictionString", "note"])
        for r in records:
            bx = r.get("boxes", [])
            pred_str = " ".join(f"{b['score']:.4f} {b['x']:.1f} {b['y']:.1f} {b['width']:.1f} {b['height']:.1f}" for b in bx)
            w.writerow([r["id"], r["file"], r["analysed"], len(bx), pred_str, r.get("error", "")])
    logger.info("analysed %d image(s) into %s", len(records), out)
    return records
