"""Read and update a bundle folder after training (configs, metadata, weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from models.training.config import BUNDLE_NAMES


def shipped_bundle_dir(task: str) -> Path:
    """The bundle folder shipped in the repository for ``task``."""
    from models.bundle_run import BUNDLES_DIR

    return BUNDLES_DIR / BUNDLE_NAMES[task]


def ensure_bundle(task: str, out_dir: Path) -> Path:
    """Make ``out_dir`` a bundle folder: copy the shipped configs/docs/scripts there when it has none."""
    out_dir = Path(out_dir)
    if (out_dir / "configs" / "inference.json").is_file():
        return out_dir
    src = shipped_bundle_dir(task)
    if not (src / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"no bundle template for {task!r} at {src}")
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    for sub in ("configs", "docs", "scripts"):  # scripts/: the bundle's standalone `monai.bundle run`
        shutil.copytree(src / sub, out_dir / sub, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return out_dir


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON atomically."""
    tmp = Path(path).with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4)
        f.write("\n")
    tmp.replace(path)


def update_inference_config(bundle_dir: Path, **values: Any) -> None:
    """Set top-level keys (``image_size``, ``score_threshold``) of ``configs/inference.json``."""
    path = Path(bundle_dir) / "configs" / "inference.json"
    cfg = read_json(path)
    for k, v in values.items():
        if v is not None:
            cfg[k] = list(v) if isinstance(v, tuple) else v
    write_json(path, cfg)


def update_metadata(bundle_dir: Path, *, training: dict[str, Any], training_data: str | None,
                    image_size: tuple[int, int]) -> None:
    """Record a training run in ``configs/metadata.json`` (``cxr_node.training`` and the input shape)."""
    path = Path(bundle_dir) / "configs" / "metadata.json"
    meta = read_json(path)
    node = meta.setdefault("cxr_node", {})
    node["training"] = training
    if training_data:
        node["training_data"] = training_data
    # metrics measured on a held-out set belong to other weights now
    if node.get("metrics"):
        node["metrics"] = {"note": "stale metrics removed after re-training; re-run `python -m models.evaluation.holdout`"}
    try:
        meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = list(image_size)
    except (KeyError, TypeError):
        pass
    write_json(path, meta)
