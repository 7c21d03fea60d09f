"""Validated options of one training run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from models.training.augment import AugmentConfig

TASKS = ("classification", "detection")
#: task -> name of the shipped bundle folder under ``monai_bundles/``
BUNDLE_NAMES = {"classification": "cxr_classification", "detection": "cxr_opacity_detection"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (``cxr-node train`` and ``models/training/configs/<bundle>/train.json``
    build one)."""

    task: str
    #: RSNA-layout folders (patients of all of them are pooled before the split); may be empty for a
    #: classifier trained on ``extra_npz`` (PneumoniaMNIST) alone
    data_dirs: tuple[Path, ...]
    out_dir: Path
    epochs: int = 10
    batch_size: int = 16
    image_size: tuple[int, int] | None = None  # None: the bundle's inference.json image_size
    device: str = "auto"
    resume: bool = False
    checkpoint: Path | None = None  # None: <out_dir>/models/checkpoint.pt
    init_weights: Path | None = None  # start from this model.pt (fine-tuning) instead of random weights
    seed: int = 0
    max_images: int | None = None
    samples_per_epoch: int | None = None  # None: size of the training split
    tensorboard: Path | None = None
    extra_npz: Path | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    workers: int = 2
    num_threads: int | None = None
    use_cache: bool = True
    half_weights: bool = False
    data_description: str | None = None
    command: str | None = None
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        dirs = (self.data_dirs,) if isinstance(self.data_dirs, (str, Path)) else tuple(self.data_dirs or ())
        if not dirs and (self.task != "classification" or self.extra_npz is None):
            raise ValueError(
                "data_dirs must name at least one RSNA-layout folder (a classifier may instead train on "
                "PneumoniaMNIST alone: extra_npz without data_dirs)"
            )
        object.__setattr__(self, "data_dirs", tuple(Path(d) for d in dirs))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        for name in ("checkpoint", "tensorboard", "extra_npz", "init_weights"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, Path(v))
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.image_size is not None:
            size = tuple(int(s) for s in self.image_size)
            if len(size) != 2 or min(size) < 32:
                raise ValueError(f"image_size must be (H, W) with sides >= 32, got {self.image_size!r}")
            if self.task == "detection" and any(s % 32 for s in size):
                raise ValueError(f"detection image_size must be a multiple of 32, got {self.image_size!r}")
            object.__setattr__(self, "image_size", size)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.max_images is not None and self.max_images < 4:
            raise ValueError(f"max_images must be >= 4, got {self.max_images!r}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {self.samples_per_epoch!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.extra_npz is not None and self.task != "classification":
            raise ValueError(f"extra_npz is for classification only, got task {self.task!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint if self.checkpoint is not None else self.out_dir / "models" / "checkpoint.pt"
