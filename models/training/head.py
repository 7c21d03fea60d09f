"""Which classes a classifier bundle outputs, and how each training source's labels map onto them.

Two heads exist (see ``monai_bundles/cxr_classification/docs/README.md``):

- the shipped **pneumonia head**: ``("Normal", "Pneumonia")``, trained on PneumoniaMNIST only (real
  paediatric radiographs, labelled pneumonia / normal), finding SCT 233604007 "Pneumonia";
- the **RSNA head**: the three RSNA challenge classes, positive class "Lung Opacity", finding
  DCM 112001 "Opacity": what a user trains on the RSNA Pneumonia Detection Challenge data (or a
  hospital's data in that layout). Its overrides live in the bundle's ``configs/rsna_head.json``,
  which :func:`apply_rsna_head` merges into a bundle's ``inference.json`` before RSNA training.

A head only outputs classes it has data for: RSNA folders need the RSNA head; PneumoniaMNIST alone
trains the pneumonia head (its label 1 maps to the positive class, 0 to "Normal").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.findings import RSNA_CLASSES

#: File (in a classification bundle's ``configs/``) holding the RSNA three-class head's overrides.
RSNA_HEAD_FILE = "rsna_head.json"
#: Keys of ``inference.json`` that a head file may set.
HEAD_KEYS = ("class_names", "positive_class", "finding", "image_size", "preprocessing", "heatmap_layer")


@dataclass(frozen=True)
class ClassifierHead:
    """The output classes of a classifier bundle and the positive (finding) class among them."""

    class_names: tuple[str, ...]
    positive_class: str

    def __post_init__(self) -> None:
        names = tuple(self.class_names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"a classifier head needs >= 2 distinct classes, got {names!r}")
        if self.positive_class not in names:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of {names!r}")
        object.__setattr__(self, "class_names", names)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClassifierHead:
        """From a bundle ``inference.json`` (``class_names`` + ``positive_class``; RSNA default)."""
        names = tuple(config.get("class_names") or ())
        default = RSNA_CLASSES[2] if names == RSNA_CLASSES else None
        return cls(names, config.get("positive_class", default))

    @property
    def positive_index(self) -> int:
        return self.class_names.index(self.positive_class)

    @property
    def is_rsna(self) -> bool:
        """True for the three-class RSNA head (RSNA folders can be trained on)."""
        return self.class_names == RSNA_CLASSES

    def index_of_binary(self, label: int) -> int:
        """Class index of a pneumonia(1) / normal(0) label (PneumoniaMNIST)."""
        if label not in (0, 1):
            raise ValueError(f"a binary label must be 0 or 1, got {label!r}")
        if label == 1:
            return self.positive_index
        if "Normal" not in self.class_names:
            raise ValueError(f"head {self.class_names!r} has no 'Normal' class for label 0")
        return self.class_names.index("Normal")


def apply_rsna_head(bundle_dir: Path) -> bool:
    """Switch a classification bundle's ``inference.json`` to the RSNA three-class head.

    Reads ``configs/rsna_head.json`` of that bundle, writes its keys into ``configs/inference.json``
    and sets the network's ``out_channels``. Returns False when the bundle already has that head.
    """
    from models.training.bundle_io import read_json, write_json

    configs = Path(bundle_dir) / "configs"
    head_path = configs / RSNA_HEAD_FILE
    if not head_path.is_file():
        raise FileNotFoundError(f"no RSNA head definition at {head_path}")
    overrides = read_json(head_path)
    unknown = set(overrides) - set(HEAD_KEYS) - {"_comment"}
    if unknown:
        raise ValueError(f"{head_path}: unknown keys {sorted(unknown)} (allowed: {list(HEAD_KEYS)})")
    config = read_json(configs / "inference.json")
    wanted = {k: v for k, v in overrides.items() if k in HEAD_KEYS}
    if all(config.get(k) == v for k, v in wanted.items()):
        return False
    config.update(wanted)
    config["network_def"]["out_channels"] = len(wanted.get("class_names", config["class_names"]))
    write_json(configs / "inference.json", config)
    return True


def describe(head: ClassifierHead) -> str:
    """One line for logs and metadata."""
    return json.dumps({"class_names": list(head.class_names), "positive_class": head.positive_class})
