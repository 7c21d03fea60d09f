"""The model cards' figures: the shipped bundles measured through the real inference path.

``python -m models.evaluation.holdout --write-metadata`` sends every image through
``models.inference.engine.InferenceEngine`` (decode → each bundle's preprocessing → both bundles, exactly as
the DICOM node does) and measures:

* **classifier** (trained on PneumoniaMNIST only): on the PneumoniaMNIST **test** split (never used
  in training or selection; each 28-px image wrapped as an 8-bit DICOM): ROC AUC with a stratified
  bootstrap 95 % CI, and sensitivity / specificity (Wilson 95 % CIs) at the bundle's decision
  threshold (chosen on the val split when it was trained); **resolution invariance**: the largest
  change of the probability between an image at full resolution (1024 px) and the same image
  downsampled to 256 px, on upsampled PneumoniaMNIST test images and on phantoms;
* **detector** (trained on phantoms only): on ``n`` phantoms with a seed never used in training
  (default 20261123), boxes at or above its reporting threshold, whatever the image-level decision
  (``box_gating="all"``): recall at IoU 0.4, RSNA metric, mAP@0.5.

With ``write_metadata=True`` the figures go into each bundle's ``metadata.json`` (``cxr_node.metrics``)
with n, seeds, date and the command.
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
DEFAULT_NPZ = Path(__file__).resolve().parents[3] / "shared" / "data" / "pneumoniamnist.npz"
COMMAND = "python -m models.evaluation.holdout --write-metadata"
#: acceptance targets of the shipped weights (issue 16): PneumoniaMNIST test AUC, resolution invariance
TARGET_AUC = 0.96
TARGET_MAX_RESOLUTION_CHANGE = 0.02
#: the phantom-trained detector's recall target on held-out phantoms
TARGET_RECALL = 0.8
RECALL_IOU = 0.4
#: images of each kind in the resolution check (PneumoniaMNIST test images, phantoms)
RESOLUTION_N = (100, 20)
RESOLUTION_SIZES = (1024, 256)


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


def _run_arrays(engine: Any, images: list[Any]) -> list[Any]:
    futures = [engine.submit_array(im) for im in images]
    return [f.result(timeout=600) for f in futures]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion (sensitivity, specificity)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def measure_pneumoniamnist(engine: Any, npz: Path, *, split: str = "test", n_boot: int = 2000) -> dict[str, Any]:
    """The classifier on a PneumoniaMNIST split, each image wrapped as a DICOM and sent through the
    engine: AUC (bootstrap 95 % CI) and the operating point at the engine's decision threshold."""
    from models.evaluation.metrics import binary_report, bootstrap_auc_ci, roc_auc

    with np.load(npz) as z:
        images, labels = z[f"{split}_images"], z[f"{split}_labels"].reshape(-1).astype(int)
    findings = []
    for start in range(0, len(images), 64):
        chunk = [pneumoniamnist_dicom(images[i], i, split) for i in range(start, min(start + 64, len(images)))]
        findings.extend(_run_engine(engine, chunk))
    if not all(f.analysed for f in findings):
        raise RuntimeError("some PneumoniaMNIST images were not analysed by the engine")
    s = np.array([f.probability for f in findings], dtype=np.float64)
    threshold = float(engine.decision_threshold)
    report = binary_report(labels, s, threshold)
    tp, fn, tn, fp = report["tp"], report["fn"], report["tn"], report["fp"]
    low, high = bootstrap_auc_ci(labels, s, n_boot=n_boot, seed=0)
    return {
        "split": split,
        "n": int(len(labels)),
        "n_pneumonia": int(labels.sum()),
        "auc_pneumonia_vs_normal": float(roc_auc(labels, s)),
        "auc_ci95": [low, high],
        "at_decision_threshold": {
            "threshold": threshold,
            "sensitivity": report["sensitivity"],
            "sensitivity_ci95": list(wilson_interval(tp, tp + fn)),
            "specificity": report["specificity"],
            "specificity_ci95": list(wilson_interval(tn, tn + fp)),
            "ppv": report["precision"],
            "npv": report["npv"],
            "confusion_matrix": report["confusion_matrix"],
        },
    }


def _resized(pixels: np.ndarray, side: int, uid: str) -> Any:
    from PIL import Image

    from models.imaging.dicom_image import SourceImage

    method = Image.Resampling.BICUBIC if side > pixels.shape[0] else Image.Resampling.LANCZOS
    arr = np.asarray(Image.fromarray(np.ascontiguousarray(pixels, np.float32)).resize((side, side), method))
    arr = np.clip(arr, 0.0, 1.0).astype(np.float32)
    return SourceImage(arr, side, side, uid)


def measure_resolution_invariance(
    engine: Any, npz: Path | None, *, n_pneumoniamnist: int = RESOLUTION_N[0], n_phantoms: int = RESOLUTION_N[1],
    sizes: tuple[int, int] = RESOLUTION_SIZES, seed: int = HOLDOUT_SEED,
) -> dict[str, Any]:
    """Largest and mean change of the classifier's probability between each image at ``sizes[0]`` px
    and the same image downsampled to ``sizes[1]`` px: PneumoniaMNIST test images (upsampled, bicubic,
    to the full size) and phantoms rendered at the full size."""
    from models.imaging.dicom_image import load_source_image
    from models.phantoms.synth import phantom_dataset, phantom_for_index

    full, small = sizes
    out: dict[str, Any] = {"sizes": [full, small]}
    pairs: dict[str, list[Any]] = {}
    if npz is not None and Path(npz).is_file():
        with np.load(npz) as z:
            images = z["test_images"][:n_pneumoniamnist]
        pairs["pneumoniamnist_test_upsampled"] = [
            (_resized(im.astype(np.float32) / 255, full, f"pm-{i}-full"), None) for i, im in enumerate(images)
        ]
    phantoms = []
    for i in range(n_phantoms):
        ph = phantom_for_index(seed + 1, i, size=full)
        ds = phantom_dataset(ph, patient_id=f"res-{i}", seed=seed + 1, index=i, sex="F", age=40)
        phantoms.append((load_source_image(ds), None))
    pairs["phantoms"] = phantoms
    for name, items in pairs.items():
        big = [im for im, _ in items]
        little = [_resized(im.pixels, small, f"{im.sop_instance_uid}-small") for im in big]
        p_big = np.array([f.probability for f in _run_arrays(engine, big)])
        p_small = np.array([f.probability for f in _run_arrays(engine, little)])
        delta = np.abs(p_big - p_small)
        out[name] = {"n": len(items), "max_abs_change": float(delta.max()), "mean_abs_change": float(delta.mean())}
    out["max_abs_change"] = max(v["max_abs_change"] for k, v in out.items() if isinstance(v, dict))
    return out


def measure_phantoms(engine: Any, *, n: int, seed: int, size: int, workdir: Path) -> dict[str, Any]:
    """Generate ``n`` phantoms (``seed``, ``size``) in ``workdir`` and measure the detector on them."""
    import pydicom

    from models.datasets.rsna_layout import read_rsna_labels
    from models.evaluation.metrics import detection_recall, map_at_iou, rsna_map
    from models.phantoms.synth import write_rsna_dataset

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
        "detection": {
            "score_threshold": float(engine_threshold(engine)),
            "box_gating": "all (the detector on its own)",
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


def measure_holdout(
    bundles_dir: Path | str,
    *,
    n: int = 200,
    seed: int = HOLDOUT_SEED,
    size: int = 1024,
    write_metadata: bool = False,
    pneumoniamnist: Path | None = DEFAULT_NPZ,
    device: str = "auto",
    num_threads: int | None = None,
    resolution_n: tuple[int, int] = RESOLUTION_N,
) -> dict[str, Any]:
    """Measure both shipped bundles (see the module docstring).

    Returns ``{"classifier": {...} | None, "resolution": {...}, "phantoms": {...}, "targets_met": {...}, ...}``.
    """
    from models.inference.engine import InferenceEngine

    if n < 10:
        raise ValueError(f"n must be >= 10 to measure anything, got {n!r}")
    bundles_dir = Path(bundles_dir)
    npz = Path(pneumoniamnist) if pneumoniamnist is not None and Path(pneumoniamnist).is_file() else None
    engine = InferenceEngine(
        bundles_dir, device=device, max_batch_size=8, num_threads=num_threads, box_gating="all", heatmaps=False
    )
    try:
        classifier = measure_pneumoniamnist(engine, npz) if npz is not None else None
        resolution = measure_resolution_invariance(
            engine, npz, n_pneumoniamnist=resolution_n[0], n_phantoms=resolution_n[1]
        )
        with tempfile.TemporaryDirectory(prefix="cxr-holdout-") as tmp:
            phantoms = measure_phantoms(engine, n=n, seed=seed, size=size, workdir=Path(tmp))
        models = [m.to_json() for m in engine.models]
    finally:
        engine.close()
    met = {
        "recall": phantoms["detection"]["recall_iou0.4"] >= TARGET_RECALL,
        "resolution": resolution["max_abs_change"] <= TARGET_MAX_RESOLUTION_CHANGE,
    }
    if classifier is not None:
        met["auc"] = classifier["auc_pneumonia_vs_normal"] >= TARGET_AUC
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": COMMAND if write_metadata else None,
        "models": models,
        "classifier": classifier,
        "resolution": resolution,
        "phantoms": phantoms,
        "targets": {"auc_pneumonia_vs_normal": TARGET_AUC, "max_abs_change": TARGET_MAX_RESOLUTION_CHANGE,
                    "recall_iou0.4": TARGET_RECALL},
        "targets_met": met,
    }
    if write_metadata:
        write_metrics_metadata(bundles_dir, result)
    return result


def write_metrics_metadata(bundles_dir: Path, result: dict[str, Any]) -> None:
    """Store the measured figures in both bundles' ``configs/metadata.json`` (``cxr_node.metrics``)."""
    from models.training.bundle_io import read_json, write_json

    ph = result["phantoms"]
    common = {"date": result["date"], "command": COMMAND, "models": result["models"],
              "note": "measured through models.inference.engine.InferenceEngine"}
    per_bundle = {
        "cxr_classification": {**common, "pneumoniamnist_test": result["classifier"],
                               "resolution_invariance": result["resolution"],
                               "targets": {"auc_pneumonia_vs_normal": TARGET_AUC,
                                           "max_abs_change": TARGET_MAX_RESOLUTION_CHANGE}},
        "cxr_opacity_detection": {**common,
                                  "held_out_phantoms": {"n": ph["n"], "seed": ph["seed"], "size": ph["size"],
                                                        "class_counts": ph["class_counts"],
                                                        "note": "seed never used in training"},
                                  **ph["detection"], "n_truth_boxes": ph["n_truth_boxes"],
                                  "target_recall_iou0.4": TARGET_RECALL},
    }
    for name, metrics in per_bundle.items():
        path = bundles_dir / name / "configs" / "metadata.json"
        meta = read_json(path)
        meta.setdefault("cxr_node", {})["metrics"] = metrics
        write_json(path, meta)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m models.evaluation.holdout [--n 200] [--seed 20261123] [--write-metadata]``."""
    from models.bundle_run import BUNDLES_DIR

    ap = argparse.ArgumentParser(prog="python -m models.evaluation.holdout", description=__doc__.splitlines()[0])
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
