"""Metrics of a bundle on an RSNA-layout folder (``models/training/configs/<bundle>/evaluate.json``).

Runs the bundle's network on the prepared images (same preprocessing as the engine)
and writes ``metrics.json`` to ``output_dir``. This is the quick per-bundle check;
``models.evaluation.holdout`` measures both bundles through the real inference engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.training.config import TASKS


def evaluate_bundle(
    *,
    task: str,
    bundle_dir: str | Path,
    data_dir: str | Path,
    output_dir: str | Path,
    device: str = "auto",
    split: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate one bundle on ``data_dir`` (all patients, or one split of ``models.datasets.split`` with ``seed``)."""
    from models.datasets.rsna_layout import read_rsna_labels
    from models.datasets.split import split_patients
    from models.imaging.preprocess import Preprocessing
    from models.networks import bundle_detector, image_size_of, load_bundle_parser, load_state_dict_file
    from models.training.data import load_rsna_prepared
    from models.training.head import ClassifierHead
    from models.training.trainer import (
        classification_metrics,
        detection_metrics,
        predict_classification,
        predict_detection,
        resolve_device,
    )

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if split not in (None, "", "all", "train", "val", "test"):
        raise ValueError(f"split must be all, train, val or test, got {split!r}")
    dev = resolve_device(device)
    parser = load_bundle_parser(bundle_dir)
    size = image_size_of(parser)
    labels: dict[str, Any] = dict(read_rsna_labels(Path(data_dir)))
    ids = sorted(labels)
    if split not in (None, "", "all"):
        ids = split_patients(labels, seed=int(seed))[split]
    config = parser.get()
    preprocessing = Preprocessing.from_config(config.get("preprocessing"))
    data = load_rsna_prepared(data_dir, size, patient_ids=ids, labels=labels, preprocessing=preprocessing)
    if task == "classification":
        head = ClassifierHead.from_config(config)
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(load_state_dict_file(Path(bundle_dir) / "models" / "model.pt"))
        probs = predict_classification(net.to(dev), data, dev, preprocessing=preprocessing)
        metrics = classification_metrics(probs, data, positive_column=head.positive_index)
    else:
        det = bundle_detector(parser)
        det.network.load_state_dict(load_state_dict_file(Path(bundle_dir) / "models" / "model.pt"))
        thr = float(parser.get_parsed_content("score_threshold"))
        metrics = detection_metrics(
            predict_detection(det.to(dev), data, dev, preprocessing=preprocessing), data, thr
        )
    metrics = {"task": task, "data": str(data_dir), "split": split or "all", "image_size": list(size), **metrics}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.json", "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2, default=float)
    return metrics
