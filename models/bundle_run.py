"""Entry points called by ``python -m monai.bundle run`` through the bundles' ``configs/*.json``.

``inference.json`` ends in :func:`run_classification` / :func:`run_detection`, which run the
bundle on every DICOM file under ``dataset_dir`` with the same decoding and preprocessing
as the inference engine (``models.imaging.dicom_image.load_source_image`` + ``models.imaging.preprocess.prepare``)
and write, into ``output_dir``, one ``<SOPInstanceUID>.json`` per image and a
``predictions.csv`` (detection boxes are given in source-image pixels, RSNA convention,
and in model-input ``xyxy`` pixels).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: ``monai_bundles/`` next to the ``models`` package (source checkout / editable install)
BUNDLES_DIR = Path(__file__).resolve().parent.parent / "monai_bundles"

logger = logging.getLogger(__name__)


def default_bundle_root(name: str) -> str:
    """Folder of the shipped bundle ``name`` (override with ``--bundle_root``)."""
    return str(BUNDLES_DIR / name)


def iter_dicom_files(dataset_dir: Path | str) -> Iterator[Path]:
    """DICOM files under ``dataset_dir`` (recursive, sorted): ``*.dcm`` or files with the ``DICM`` preamble."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir is not a folder: {root}")
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.suffix.lower() == ".dcm":
            yield p
            continue
        try:
            with open(p, "rb") as f:
                head = f.read(132)
        except OSError:
            continue
        if len(head) == 132 and head[128:] == b"DICM":
            yield p


def _device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_weights(network: Any, ckpt_path: str | Path) -> None:
    from models.networks import load_state_dict_file

    network.load_state_dict(load_state_dict_file(ckpt_path), strict=True)


def _prepared(
    path: Path, image_size: Sequence[int], preprocessing: Any = None
) -> tuple[Any, Any, Any, str | None]:
    """(dataset, prepared array or None, geometry or None, reason not analysed)."""
    import pydicom

    from models.imaging.dicom_image import load_source_image
    from models.imaging.preprocess import Preprocessing, prepare

    ds = pydicom.dcmread(str(path))
    try:
        from models.inference.view_gate import not_analysable_reason

        reason = not_analysable_reason(ds)
    except ImportError:  # gate not available: analyse everything
        reason = None
    if reason is not None:
        return ds, None, None, reason
    src = load_source_image(ds)
    spec = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_config(preprocessing)
    arr, geom = prepare(src, (int(image_size[0]), int(image_size[1])), spec)
    return ds, arr, geom, None


def _write_json(out: Path, uid: str, record: dict[str, Any]) -> None:
    safe = "".join(c for c in uid if c.isalnum() or c in ".-_") or "unknown"
    with open(out / f"{safe}.json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)


def _run_folder(
    dataset_dir: str | Path,
    output_dir: str | Path,
    image_size: Sequence[int],
    analyse: Callable[[Any, Any, Any], dict[str, Any]],
    preprocessing: Any = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run ``analyse(dataset, prepared array, geometry) -> fields`` on every DICOM under ``dataset_dir``.

    The frontal-view gate and decoding come first (``_prepared``); one JSON per image is written to
    ``output_dir``; a file that fails is recorded with its error and the folder goes on.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for path in iter_dicom_files(dataset_dir):
        record: dict[str, Any] = {"file": str(path)}
        try:
            ds, arr, geom, reason = _prepared(path, image_size, preprocessing)
            record["sop_instance_uid"] = str(getattr(ds, "SOPInstanceUID", ""))
            if reason is not None:
                record.update(analysed=False, not_analysed_reason=reason)
            else:
                record.update(analysed=True, **analyse(ds, arr, geom))
        except Exception as exc:  # one bad file must not stop the folder
            record.update(analysed=False, error=f"{type(exc).__name__}: {exc}")
            logger.warning("cannot analyse file", extra={"file": str(path), "error": record["error"]})
        _write_json(out, record.get("sop_instance_uid") or path.stem, record)
        records.append(record)
    return out, records


def run_classification(
    *,
    network: Any,
    ckpt_path: str | Path,
    dataset_dir: str | Path,
    output_dir: str | Path,
    image_size: Sequence[int],
    class_names: Sequence[str],
    device: str = "auto",
    positive_class: str | None = None,
    preprocessing: Any = None,
) -> list[dict[str, Any]]:
    """Classify every DICOM under ``dataset_dir``; write per-image JSON + ``predictions.csv``.

    ``preprocessing`` is the bundle's ``preprocessing`` object (``models.imaging.preprocess``), ``positive_class``
    the class whose probability is the finding's (default: "Lung Opacity" for the RSNA head).
    """
    import torch

    from models.findings import LUNG_OPACITY_INDEX, RSNA_CLASSES
    from models.imaging.preprocess import Preprocessing

    spec = Preprocessing.from_config(preprocessing)
    if positive_class is None:
        if tuple(class_names) != RSNA_CLASSES:
            raise ValueError(f"positive_class is needed for classes {list(class_names)}")
        positive_index = LUNG_OPACITY_INDEX
    else:
        positive_index = list(class_names).index(positive_class)
    dev = _device(device)
    _load_weights(network, ckpt_path)
    network.to(dev).eval()

    def classify(ds: Any, arr: Any, geom: Any) -> dict[str, Any]:
        with torch.no_grad():
            x = spec.network_input(torch.from_numpy(arr)[None].to(dev))
            probs = torch.softmax(network(x).float(), dim=1)[0].cpu().numpy()
        return {
            "class_probabilities": {n: float(p) for n, p in zip(class_names, probs, strict=True)},
            "probability": float(probs[positive_index]),
            "predicted_class": class_names[int(probs.argmax())],
        }

    out, records = _run_folder(dataset_dir, output_dir, image_size, classify, spec)
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sop_instance_uid", "file", "analysed", *class_names, "probability", "predicted_class", "note"])
        for r in records:
            cp = r.get("class_probabilities", {})
            w.writerow([r.get("sop_instance_uid", ""), r["file"], r["analysed"],
                        *[f"{cp[n]:.6f}" if n in cp else "" for n in class_names],
                        f"{r['probability']:.6f}" if "probability" in r else "",
                        r.get("predicted_class", ""), r.get("not_analysed_reason") or r.get("error") or ""])
    logger.info("classification bundle run", extra={"n": len(records), "output_dir": str(out)})
    return records


def run_detection(
    *,
    detector: Any,
    ckpt_path: str | Path,
    dataset_dir: str | Path,
    output_dir: str | Path,
    image_size: Sequence[int],
    score_threshold: float,
    box_format: str = "monai",
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Detect lung opacities in every DICOM under ``dataset_dir``; boxes with score >= ``score_threshold``.

    ``box_format`` is the bundle's declared detector box order (``inference.json``), read the same way
    as the engine reads it (``models.inference.bundle_loader.detector_box_to_xyxy``).
    """
    import torch

    from models.inference.bundle_loader import BOX_FORMATS, detector_box_to_xyxy
    from models.networks import SCORE_KEY

    if not 0.0 <= float(score_threshold) <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold!r}")
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
    dev = _device(device)
    _load_weights(detector.network, ckpt_path)
    detector.to(dev).eval()

    def detect(ds: Any, arr: Any, geom: Any) -> dict[str, Any]:
        with torch.no_grad():
            pred = detector([torch.from_numpy(arr).to(dev)])[0]
        raw = pred[detector.target_box_key].float().cpu().reshape(-1, 4).tolist()
        boxes = [detector_box_to_xyxy(b, box_format) for b in raw]  # x = column
        scores = pred[SCORE_KEY].float().cpu().numpy().reshape(-1)
        found = []
        for (x1, y1, x2, y2), s in sorted(zip(boxes, scores, strict=True), key=lambda t: -t[1]):
            if s < score_threshold or x2 <= x1 or y2 <= y1:
                continue
            src = geom.box_to_source(float(x1), float(y1), float(x2 - x1), float(y2 - y1))
            found.append({"score": float(s), "model_xyxy": [float(x1), float(y1), float(x2), float(y2)],
                          "x": src[0], "y": src[1], "width": src[2], "height": src[3]})
        return {"rows": int(ds.Rows), "columns": int(ds.Columns), "score_threshold": float(score_threshold),
                "boxes": found}

    out, records = _run_folder(dataset_dir, output_dir, image_size, detect)
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sop_instance_uid", "file", "analysed", "n_boxes", "PredictionString", "note"])
        for r in records:
            bx = r.get("boxes", [])
            pred_str = " ".join(f"{b['score']:.4f} {b['x']:.1f} {b['y']:.1f} {b['width']:.1f} {b['height']:.1f}" for b in bx)
            w.writerow([r.get("sop_instance_uid", ""), r["file"], r["analysed"], len(bx), pred_str,
                        r.get("not_analysed_reason") or r.get("error") or ""])
    logger.info("detection bundle run", extra={"n": len(records), "output_dir": str(out)})
    return records
