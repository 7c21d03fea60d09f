"""Which patients an evaluation runs on: the split training used, or a recomputed one.

``cxr-node train`` leaves the exact split it used as ``split.json`` in the bundle folder
(:func:`bundle_split_file`) and records the split seed and fractions in the bundle's
metadata (:func:`training_split_from_metadata`); :func:`select_patients` picks one split's
patients from a split file, a recomputed patient-level split, or all patients.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.datasets.split import read_split, split_patients, validate_fractions

logger = logging.getLogger(__name__)


def bundle_split_file(bundles_dir: Path, bundle: str = "cxr_classification") -> Path | None:
    """``split.json`` that ``cxr-node train`` left in the bundle folder, or None."""
    path = Path(bundles_dir) / bundle / "split.json"
    return path if path.is_file() else None


def training_split_from_metadata(bundles_dir: Path, bundle: str = "cxr_classification") -> dict[str, Any]:
    """Split seed/fractions that training recorded in the bundle's ``configs/metadata.json``.

    Read from ``cxr_node.training.split`` (``seed``, ``fractions``; written by
    ``models.training``), with ``n_patients`` from ``cxr_node.training.data``. Returns ``{}``
    when nothing is recorded (e.g. placeholder weights).
    """
    path = Path(bundles_dir) / bundle / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    node = meta.get("cxr_node") if isinstance(meta, dict) else None
    training = node.get("training") if isinstance(node, dict) else None
    split = training.get("split") if isinstance(training, dict) else None
    if not isinstance(split, dict):
        return {}
    out: dict[str, Any] = {"bundle": bundle}
    seed = split.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        out["seed"] = seed
    if isinstance(split.get("fractions"), (list, tuple)):
        try:
            out["fractions"] = validate_fractions(split["fractions"])
        except ValueError:
            logger.warning(
                "ignoring bad split fractions in bundle metadata", extra={"value": split["fractions"]}
            )
    data = training.get("data") if isinstance(training, dict) else None  # type: ignore[union-attr]
    if isinstance(data, dict) and isinstance(data.get("n_patients"), int):
        out["n_patients"] = data["n_patients"]
    return out


def select_patients(
    labels: Mapping[str, Any],
    *,
    split: str,
    split_file: Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    max_images: int | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Patient ids of ``split`` (sorted; the first ``max_images`` of them when given) and a description."""
    info: dict[str, Any] = {"name": split}
    if split == "all":
        pids = sorted(labels)
        info["source"] = "all patients"
    else:
        if split_file is not None:
            chosen = read_split(split_file)
            info.update(source="split_file", split_file=str(split_file))
        else:
            chosen = split_patients(labels, seed=seed, fractions=fractions)
            info.update(source="split_patients", seed=int(seed), fractions=list(fractions))
        pids = sorted(chosen[split])
        missing = [p for p in pids if p not in labels]
        if missing:
            logger.warning(
                "split lists patients absent from the data",
                extra={"n_missing": len(missing), "split": split},
            )
            pids = [p for p in pids if p in labels]
            info["n_missing_from_data"] = len(missing)
        info["sizes"] = {k: len(v) for k, v in chosen.items()}
    if not pids:
        raise ValueError(f"split {split!r} selects no patient of the data ({len(labels)} patients)")
    if max_images is not None:
        pids = pids[:max_images]
        info["max_images"] = int(max_images)
    info["n_selected"] = len(pids)
    return pids, info
