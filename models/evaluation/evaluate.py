"""Evaluate the two bundles through the real inference path and write a report.

:func:`evaluate` runs :class:`models.inference.engine.InferenceEngine` (the same code the DICOM
node uses) on one split of an RSNA-layout data set — or on a PneumoniaMNIST ``.npz``
split, submitting decoded arrays with ``InferenceEngine.submit_array`` — and writes to
the report folder:

* ``predictions.csv`` – one row per image: truth, status, class probabilities, boxes
  (every box the engine returned at the evaluation floor ``box_floor``);
* ``report.json`` – every figure, computed by :func:`compute_report` from the rows
  *read back* from ``predictions.csv`` (so the file and the report always agree);
* ``report.md`` – the same as tables, next to the figures published on the real RSNA
  data by the seed reports (clearly labelled as not comparable);
* PNG plots (see :mod:`models.evaluation.plots`).

Conventions: the pneumonia score is ``Findings.probability`` (= P(Lung
Opacity)); ``score >= threshold`` is a positive call. Images the engine does not
analyse (view gate) or cannot decode are counted and left out of the metrics. The RSNA
challenge metric and the detection recall use the boxes at or above the detection
bundle's reporting threshold (what the node would report); mAP@0.5 ranks every box at
or above ``box_floor``.

This module is the orchestration (:class:`EvaluationConfig`, :func:`evaluate`); the parts
live in their own modules and are re-exported here:

* :mod:`models.evaluation.split` – which patients (the split training used);
* :mod:`models.evaluation.predict` – :class:`ImagePrediction` and running the engine;
* :mod:`models.evaluation.predictions_csv` – ``predictions.csv`` round trip;
* :mod:`models.evaluation.report` – the figures (pure);
* :mod:`models.evaluation.markdown` – ``report.md``;
* :mod:`models.evaluation.plots` – the PNG plots.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.datasets.split import SPLIT_NAMES, read_split, validate_fractions
from models.evaluation.markdown import render_markdown
from models.evaluation.plots import PLOT_FILES, write_plots
from models.evaluation.predict import (
    STATUSES,
    Box4,
    ImagePrediction,
    PredBox,
    load_npz_split,
    npz_source_image,
    predict_npz,
    predict_rsna,
)
from models.evaluation.predictions_csv import read_predictions_csv, write_predictions_csv
from models.evaluation.report import (
    FIXED_THRESHOLDS,
    PUBLISHED_RSNA_REFERENCE,
    REFERENCE_CAVEAT,
    RSNA_SWEEP_THRESHOLDS,
    classification_section,
    compute_report,
    detection_pairs,
    detection_section,
)
from models.evaluation.split import bundle_split_file, select_patients, training_split_from_metadata

__all__ = [
    "FIXED_THRESHOLDS",
    "PLOT_FILES",
    "PUBLISHED_RSNA_REFERENCE",
    "REFERENCE_CAVEAT",
    "RSNA_SWEEP_THRESHOLDS",
    "STATUSES",
    "Box4",
    "EvaluationConfig",
    "ImagePrediction",
    "PredBox",
    "bundle_split_file",
    "classification_section",
    "compute_report",
    "detection_pairs",
    "detection_section",
    "evaluate",
    "load_npz_split",
    "npz_source_image",
    "predict_npz",
    "predict_rsna",
    "read_predictions_csv",
    "render_markdown",
    "select_patients",
    "training_split_from_metadata",
    "write_plots",
    "write_predictions_csv",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationConfig:
    """What ``cxr-node evaluate`` was asked to do."""

    out_dir: Path
    bundles_dir: Path
    data_dir: Path | None = None
    split: str = "test"
    split_file: Path | None = None
    #: None: the seed recorded in the classification bundle's metadata, else 0.
    seed: int | None = None
    fractions: tuple[float, float, float] | None = None
    npz: Path | None = None
    npz_split: str = "test"
    device: str = "auto"
    max_images: int | None = None
    #: The engine reports boxes at or above this (mAP ranks all of them).
    box_floor: float = 0.05
    n_boot: int = 2000
    bootstrap_seed: int = 0
    calibration_bins: int = 10
    num_threads: int | None = None
    max_batch_size: int = 8
    in_flight: int = 16
    #: draw the grid of sample images (False for a report that leaves the site: no radiograph in it)
    sample_images: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "bundles_dir", Path(self.bundles_dir))
        for name in ("data_dir", "split_file", "npz"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, Path(v))
        if (self.data_dir is None) == (self.npz is None):
            raise ValueError(f"give exactly one of data_dir and npz, got {self.data_dir!r} and {self.npz!r}")
        if self.split not in (*SPLIT_NAMES, "all"):
            raise ValueError(f"split must be train, val, test or all, got {self.split!r}")
        if self.npz_split not in SPLIT_NAMES:
            raise ValueError(f"npz_split must be train, val or test, got {self.npz_split!r}")
        if self.fractions is not None:
            object.__setattr__(self, "fractions", validate_fractions(self.fractions))
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 1):
            raise ValueError(f"max_images must be a positive int, got {self.max_images!r}")
        if not 0.0 <= self.box_floor <= 1.0:
            raise ValueError(f"box_floor must be in [0, 1], got {self.box_floor!r}")
        if not isinstance(self.n_boot, int) or self.n_boot < 1:
            raise ValueError(f"n_boot must be a positive int, got {self.n_boot!r}")
        if not isinstance(self.in_flight, int) or self.in_flight < 1:
            raise ValueError(f"in_flight must be a positive int, got {self.in_flight!r}")


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _is_synthetic(path: Path) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return False
    return str(getattr(ds.file_meta, "ImplementationVersionName", "")) == "CXR_AI_NODE_SYN"


def _classifier_description(engine: Any) -> dict[str, Any] | None:
    """Classes, positive class and finding of the engine's classifier (None for a stand-in engine)."""
    bundles = getattr(engine, "bundles", None)
    if not bundles:
        return None
    cls = bundles[0]
    finding = getattr(cls, "finding", None)
    return {
        "class_names": list(getattr(cls, "class_names", ())),
        "positive_class": getattr(cls, "positive_class", None),
        "finding": finding.to_json() if finding is not None else None,
    }


def evaluate(config: EvaluationConfig, *, engine: Any = None) -> dict[str, Any]:
    """Run the whole evaluation; returns the report (also written to ``config.out_dir``).

    ``engine``: an already constructed ``InferenceEngine`` to use (not closed here);
    by default one is built from ``config.bundles_dir`` with ``detection_score_threshold=box_floor``.
    """
    t0 = _dt.datetime.now(_dt.timezone.utc)
    out_dir = config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    own_engine = engine is None
    if own_engine:
        from models.inference.engine import InferenceEngine

        engine = InferenceEngine(
            config.bundles_dir,
            device=config.device,
            detection_score_threshold=config.box_floor,
            box_gating="all",  # the detector is measured on its own, whatever the image-level decision
            max_batch_size=config.max_batch_size,
            num_threads=config.num_threads,
        )
    try:
        operating = float(engine.bundles[1].score_threshold)
        decision = getattr(engine, "decision_threshold", None)
        report_head: dict[str, Any] = {
            "generated_by": "cxr-node evaluate",
            "created_utc": t0.isoformat(timespec="seconds"),
            "models": [m.to_json() for m in engine.models],
            "decision_threshold": decision,
            "classifier": _classifier_description(engine),
            "device": str(engine.device),
            "box_floor": config.box_floor,
        }
        npz_images = None
        if config.npz is not None:
            predictions = predict_npz(
                engine, config.npz, config.npz_split, max_images=config.max_images, in_flight=config.in_flight
            )
            npz_images, _ = load_npz_split(config.npz, config.npz_split)
            report_head["data"] = {
                "source": str(config.npz),
                "kind": "PneumoniaMNIST npz",
                "synthetic": False,
            }
            report_head["split"] = {"name": config.npz_split, "source": "npz", "n_selected": len(predictions)}
            detection = False
        else:
            from models.datasets.rsna_layout import read_rsna_labels

            assert config.data_dir is not None
            labels = read_rsna_labels(config.data_dir)
            recorded = training_split_from_metadata(config.bundles_dir)
            seed = config.seed if config.seed is not None else recorded.get("seed", 0)
            fractions = config.fractions or recorded.get("fractions", (0.8, 0.1, 0.1))
            split_file = config.split_file
            bundle_split = bundle_split_file(config.bundles_dir)
            if split_file is None and config.seed is None and config.split != "all" and bundle_split is not None:
                split_file = bundle_split  # the exact split training used (written by models.training)
            pids, split_info = select_patients(
                labels,
                split=config.split,
                split_file=split_file,
                seed=seed,
                fractions=fractions,
                max_images=config.max_images,
            )
            if split_file is not None and split_file == bundle_split:
                split_info["source"] = "bundle split.json"
                other = bundle_split_file(config.bundles_dir, "cxr_opacity_detection")
                if other is not None and read_split(other) != read_split(split_file):
                    split_info["warning"] = (
                        "the detection bundle was trained on another split than the classifier: its "
                        f"{config.split!r} images may include detection training patients"
                    )
                    logger.warning("bundles trained on different splits", extra={"split": config.split})
            if split_file is None and config.split != "all":
                split_info["seed_source"] = (
                    "--seed"
                    if config.seed is not None
                    else "bundle metadata"
                    if "seed" in recorded
                    else "default 0"
                )
                n_trained = recorded.get("n_patients")
                if n_trained is not None and n_trained != len(labels):
                    # training split a different patient set (other folders or --max-images): ids differ
                    split_info["warning"] = (
                        f"training split {n_trained} patients but this data has {len(labels)}: the "
                        f"recomputed {config.split!r} split is not the one training held out; pass --split-file"
                    )
                    logger.warning(
                        "split may not match training", extra={"n_trained": n_trained, "n_data": len(labels)}
                    )
            predictions = predict_rsna(engine, [labels[p] for p in pids], in_flight=config.in_flight)
            report_head["data"] = {
                "source": str(config.data_dir),
                "kind": "RSNA layout",
                "synthetic": _is_synthetic(labels[pids[0]].image_path),
                "n_patients": len(labels),
            }
            report_head["split"] = split_info
            detection = True
        report_head["engine_stats"] = engine.stats() if hasattr(engine, "stats") else None
    finally:
        if own_engine:
            engine.close()

    csv_path = write_predictions_csv(out_dir / "predictions.csv", predictions)
    saved = read_predictions_csv(csv_path)
    body = compute_report(
        saved,
        operating_threshold=operating,
        decision_threshold=decision,
        n_boot=config.n_boot,
        bootstrap_seed=config.bootstrap_seed,
        calibration_bins=config.calibration_bins,
        detection=detection,
    )
    report = {**report_head, **body}
    report["reference_published_rsna"] = {
        "caveat": REFERENCE_CAVEAT,
        "figures": list(PUBLISHED_RSNA_REFERENCE),
    }
    report["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    plots_written = write_plots(out_dir, saved, report, npz_images=npz_images, sample_images=config.sample_images)
    report["files"] = {"predictions": csv_path.name, "plots": plots_written, "markdown": "report.md"}
    report["elapsed_s"] = (_dt.datetime.now(_dt.timezone.utc) - t0).total_seconds()
    report = _clean(report)
    tmp = out_dir / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / "report.json")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    logger.info(
        "evaluation written",
        extra={
            "out_dir": str(out_dir),
            "n_images": report["n_images"],
            "roc_auc": report["classification"].get("roc_auc"),
            "rsna_map": (report.get("detection") or {}).get("rsna_map"),
        },
    )
    return report
