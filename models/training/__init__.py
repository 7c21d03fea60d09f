"""Training of the two bundles (``cxr-node train`` and ``models/training/configs/<bundle>/train.json``).

Public API: :class:`TrainConfig`, :func:`train`, :func:`run_training` (the keyword entry
point used by ``train.json``) and :func:`evaluate_bundle` (used by ``evaluate.json``).
Heavy modules are imported lazily so that ``import models.training`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from models.training.config import BUNDLE_NAMES, TASKS, TrainConfig

__all__ = ["BUNDLE_NAMES", "TASKS", "TrainConfig", "evaluate_bundle", "run_training", "train"]


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one bundle; see :func:`models.training.trainer.train`."""
    from models.training.trainer import train as _train

    return _train(cfg)


def run_training(**kwargs: Any) -> dict[str, Any]:
    """Keyword entry point for ``models/training/configs/<bundle>/train.json``: ``TrainConfig(**kwargs)`` then :func:`train`.

    ``data_dirs`` may be one folder or a list; ``image_size`` None keeps the bundle's.
    """
    if "data_dir" in kwargs:
        kwargs["data_dirs"] = kwargs.pop("data_dir")
    for key in ("image_size", "max_images", "samples_per_epoch", "tensorboard", "extra_npz", "checkpoint"):
        if kwargs.get(key) in ("", "none", "None"):
            kwargs[key] = None
    if kwargs.get("image_size") is not None:
        kwargs["image_size"] = tuple(kwargs["image_size"])
    return train(TrainConfig(**kwargs))


def evaluate_bundle(**kwargs: Any) -> dict[str, Any]:
    """Evaluate a bundle on an RSNA-layout folder; see :func:`models.training.evaluate.evaluate_bundle`."""
    from models.training.evaluate import evaluate_bundle as _evaluate

    return _evaluate(**kwargs)
