"""Held-out measurement of the shipped bundles through the real inference path.

``python -m models.holdout --write-metadata`` generates ``n`` phantoms with a seed never
used in training (default 20261123), sends every DICOM through
``models.engine.InferenceEngine`` (decode → preprocess → both bundles, exactly as the
DICOM node does) and computes:

* classification: ROC AUC of P(Lung Opacity) for "Lung Opacity vs rest";
* detection: recall at IoU 0.4 (a truth box is found when a reported box, i.e. one with
  score >= the bundle's reporting threshold, overlaps it with IoU > 0.4), RSNA mAP, mAP@0.5;
* PneumoniaMNIST **test** split (classifier only; each 28-px image wrapped as an 8-bit
  DICOM and sent through the same engine): AUC of P(Lung Opacity) for pneumonia vs normal.

With ``write_metadata=True`` the figures go into both bundles' ``metadata.json``
(``cxr_node.metrics``) together with n, seed, date and the command.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

HOLDOUT_SEED = 20261123
DEFAULT_NPZ = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pneumoniamnist.npz"
COMMAND = "python -m models.holdout --write-metadata"
#: acceptance targets of the demonstration weights
TARGET_AUC = 0.95
TARGET_RECALL = 0.8
RECALL_IOU = 0.4


def pneumoniamnist_dicom(image: np.ndarray, index: int, split: str = "test") -> Any:
    """Wrap one 8-bit PneumoniaMNIST image as a frontal-chest Secondary Capture DICOM (in memory).

    Window centre 127.5 / width 256 makes the decoded image equal to ``pixels / 255`` (to 0.002),
    which is how the training code reads the same images.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"PneumoniaMNIST image must be 2-D uint8, got {arr.dtype} {arr.shape!r}")
    uid = generate_uid(entropy_srcs=["pneumoniamnist", split, str(index)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["pneumoniamnist-study", split, str(index)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["pneumoniamnist-series", split])
    ds.Modality = "OT"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "AP"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.WindowCenter = 127.5
    ds.WindowWidth = 256
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def _run_engine(engine: Any, datasets: list[Any]) -> list[Any]:
    futures = [engine.submit(ds) for ds in datasets]
    return [f.result(timeout=600) for f in futures]


def measure_phantoms(engine: Any, *, n: int, seed: int, size: int, workdir: Path) -> dict[str, Any]:
    """Generate ``n`` phantoms (``seed``, ``size``) in ``workdir`` and measure both bundles on them."""
    import pydicom

    from models.metrics import detection_recall, map_at_iou, roc_auc, rsna_map
    from models.rsna_layout import read_rsna_labels
    from models.synth import write_rsna_dataset

    summary = write_rsna_dataset(workdir, n, seed, size=size)
    labels = read_rsna_labels(workdir)
    ids = sorted(labels)
    findings = []
    for start in range(0, len(ids), 32):  # bounded memory: 32 decoded datasets at a time
        chunk = [pydicom.dcmread(str(labels[p].image_path)) for p in ids[start : start + 32]]
        findings.extend(_run_engine(engine, chunk))
    not_analysed = [f.sop_instance_uid for f in findings if not f.analysed]
    if not_analysed:
        raise RuntimeError(f"{len(not_analysed)} held-out phantoms were not analysed, e.g. {not_analysed[:3]}")
    y = np.array([1 if labels[p].klass == "Lung Opacity" else 0 for p in ids])
    s = np.array([f.probability for f in findings], dtype=np.float64)
    pairs = [
        ([tuple(b) for b in labels[p].boxes], [(b.x, b.y, b.width, b.height, b.score) for b in f.boxes])
        for p, f in zip(ids, findings, strict=True)
    ]
    n_pred = sum(len(pr) for _, pr in pairs)
    n_fp_images = sum(1 for (g, pr) in pairs if not g and pr)
    return {
        "n": n,
        "seed": seed,
        "size": size,
        "class_counts": dict(summary.class_counts),
        "n_truth_boxes": int(sum(len(g) for g, _ in pairs)),
        "classification": {
            "auc_lung_opacity_vs_rest": float(roc_auc(y, s)),
            "accuracy_3class": float(
                np.mean([max(f.class_probabilities, key=f.class_probabilities.get) == labels[p].klass
                         for p, f in zip(ids, findings, strict=True)])
            ),
        },
        "detection": {
            "score_threshold": float(engine_threshold(engine)),
            "recall_iou0.4": float(detection_recall(pairs, iou=RECALL_IOU, score_threshold=0.0)),
            "rsna_map": float(rsna_map(pairs)),
            "map_iou0.5": float(map_at_iou(pairs, iou=0.5)),
            "n_reported_boxes": int(n_pred),
            "images_without_truth_with_boxes": int(n_fp_images),
        },
    }


def engine_threshold(engine: Any) -> float:
    """The detection reporting threshold the engine applies."""
    for attr in ("detection_score_threshold", "_score_threshold"):
        v = getattr(engine, attr, None)
        if isinstance(v, (int, float)):
            return float(v)
    return float("nan")


def measure_pneumoniamnist(engine: Any, npz: Path, *, split: str = "test") -> dict[str, Any]:
    """AUC of P(Lung Opacity) for pneumonia vs normal on a PneumoniaMNIST split, through the engine."""
    from models.metrics import roc_auc

    with np.load(npz) as z:
        images, labels = z[f"{split}_images"], z[f"{split}_labels"].reshape(-1)
    findings = []
    for start in range(0, len(images), 64):
        chunk = [pneumoniamnist_dicom(images[i], i, split) for i in range(start, min(start + 64, len(images)))]
        findings.extend(_run_engine(engine, chunk))
    if not all(f.analysed for f in findings):
        raise RuntimeError("some PneumoniaMNIST images were not analysed by the engine")
    s = np.array([f.probability for f in findings])
    return {"split": split, "n": int(len(labels)), "n_pneumonia": int(labels.sum()),
            "auc_pneumonia_vs_normal": float(roc_auc(labels.astype(int), s))}


def measure_holdout(
    bundles_dir: Path | str,
    *,
    n: int = 200,
    seed: int = HOLDOUT_SEED,
    size: int = 1024,
    write_metadata: bool = False,
    pneumoniamnist: Path | str | None = DEFAULT_NPZ,
    device: str = "auto",
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Measure both bundles of ``bundles_dir`` on ``n`` held-out phantoms (and PneumoniaMNIST test).

    Returns ``{"phantoms": {...}, "pneumoniamnist": {...} | None, "targets_met": {...}, ...}``.
    """
    from models.engine import InferenceEngine

    if n < 10:
        raise ValueError(f"n must be >= 10 to measure anything, got {n!r}")
    bundles_dir = Path(bundles_dir)
    engine = InferenceEngine(bundles_dir, device=device, max_batch_size=8, num_threads=num_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="cxr-holdout-") as tmp:
            phantoms = measure_phantoms(engine, n=n, seed=seed, size=size, workdir=Path(tmp))
        pm = None
        if pneumoniamnist is not None and Path(pneumoniamnist).is_file():
            pm = measure_pneumoniamnist(engine, Path(pneumoniamnist))
        models = [{"name": m.name, "version": m.version} for m in engine.models]
    finally:
        engine.close()
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": COMMAND if write_metadata else None,
        "models": models,
        "phantoms": phantoms,
        "pneumoniamnist": pm,
        "targets": {"auc_lung_opacity_vs_rest": TARGET_AUC, "recall_iou0.4": TARGET_RECALL},
        "targets_met": {
            "auc": phantoms["classification"]["auc_lung_opacity_vs_rest"] >= TARGET_AUC,
            "recall": phantoms["detection"]["recall_iou0.4"] >= TARGET_RECALL,
        },
    }
    if write_metadata:
        write_metrics_metadata(bundles_dir, result)
    return result


def write_metrics_metadata(bundles_dir: Path, result: dict[str, Any]) -> None:
    """Store the measured figures in both bundles' ``configs/metadata.json`` (``cxr_node.metrics``)."""
    from models.training.bundle_io import read_json, write_json

    ph = result["phantoms"]
    common = {"date": result["date"], "command": COMMAND,
              "held_out_phantoms": {"n": ph["n"], "seed": ph["seed"], "size": ph["size"],
                                    "class_counts": ph["class_counts"],
                                    "note": "seed never used in training; measured through models.engine.InferenceEngine"}}
    per_bundle = {
        "cxr_classification": {**common, **ph["classification"],
                               "target_auc": TARGET_AUC, "pneumoniamnist_test": result["pneumoniamnist"]},
        "cxr_opacity_detection": {**common, **ph["detection"], "n_truth_boxes": ph["n_truth_boxes"],
                                  "target_recall_iou0.4": TARGET_RECALL},
    }
    for name, metrics in per_bundle.items():
        path = bundles_dir / name / "configs" / "metadata.json"
        meta = read_json(path)
        meta.setdefault("cxr_node", {})["metrics"] = metrics
        write_json(path, meta)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m models.holdout [--n 200] [--seed 20261123] [--write-metadata]``."""
    from models.bundle_run import BUNDLES_DIR

    ap = argparse.ArgumentParser(prog="python -m models.holdout", description=__doc__.splitlines()[0])
    ap.add_argument("--bundles-dir", type=Path, default=BUNDLES_DIR)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=HOLDOUT_SEED)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--pneumoniamnist", type=Path, default=DEFAULT_NPZ)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--write-metadata", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    result = measure_holdout(args.bundles_dir, n=args.n, seed=args.seed, size=args.size,
                             write_metadata=args.write_metadata, pneumoniamnist=args.pneumoniamnist,
                             device=args.device, num_threads=args.threads)
    print(json.dumps(result, indent=2))
    return 0 if all(result["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
