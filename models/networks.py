"""Bundle configs as the training and evaluation code read them; box axis order; state-dict files.

The bundle configs (``monai_bundles/*/configs/inference.json``) are the single source of truth
for the architectures and reference only MONAI components (a bundle is self-contained, see
``monai_bundles/*/docs/README.md``); :func:`bundle_detector` instantiates a detection bundle's
``detector`` with its ``detector_ops`` applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.bundle import ConfigParser

#: keys of the ground-truth dicts given to ``RetinaNetDetector`` in training
BOX_KEY = "boxes"
LABEL_KEY = "labels"
#: key of the per-box scores in the detector's output dicts
SCORE_KEY = "labels_scores"


def xyxy_to_monai_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` boxes ``[x1, y1, x2, y2]`` (x = column) → MONAI's 2-D order ``[row1, col1, row2, col2]``.

    MONAI detection follows the tensor's spatial axes: for a ``(C, H, W)`` image the first box
    coordinate runs down the rows. Same mapping as ``models.inference.bundle_loader.xyxy_to_monai_box``
    (bundle ``box_format: "monai"``).
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)!r}")
    return boxes[:, [1, 0, 3, 2]]


def monai_boxes_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`xyxy_to_monai_boxes` (the same axis swap)."""
    return xyxy_to_monai_boxes(boxes)


def bundle_detector(parser: ConfigParser) -> RetinaNetDetector:
    """The ``detector`` of a detection bundle config with its ``detector_ops`` applied.

    The bundle builds the detector from MONAI components alone (``RetinaNetDetector`` around a
    ``RetinaNet`` with a ResNet + ``BackboneWithFPN`` feature extractor); ``detector_ops`` (the
    MONAI model-zoo convention) sets its target keys, box selector (score 0.05, NMS IoU 0.3,
    10 boxes), ATSS matcher and hard-negative sampler. Boxes in and out are in MONAI's 2-D order
    ``[row1, col1, row2, col2]`` (bundle ``box_format: "monai"``); convert with
    :func:`xyxy_to_monai_boxes` / :func:`monai_boxes_to_xyxy`.
    """
    detector = parser.get_parsed_content("detector")
    if not isinstance(detector, RetinaNetDetector):
        raise ValueError(f"bundle 'detector' must be a RetinaNetDetector, got {type(detector).__name__}")
    if "detector_ops" in parser:
        parser.get_parsed_content("detector_ops")
    return detector


def load_bundle_parser(bundle_dir: Path | str, config_name: str = "inference.json") -> ConfigParser:
    """``ConfigParser`` with ``configs/<config_name>`` and ``configs/metadata.json`` of a bundle read."""
    bundle_dir = Path(bundle_dir)
    cfg = bundle_dir / "configs" / config_name
    if not cfg.is_file():
        raise FileNotFoundError(f"bundle config not found: {cfg}")
    parser = ConfigParser()
    parser.read_config(str(cfg))
    meta = bundle_dir / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser["bundle_root"] = str(bundle_dir)
    return parser


def image_size_of(parser: ConfigParser) -> tuple[int, int]:
    """The ``image_size`` ``[H, W]`` of a bundle config, validated."""
    size = parser.get_parsed_content("image_size")
    if not isinstance(size, Sequence) or len(size) != 2 or any(int(s) != s or s < 32 for s in size):
        raise ValueError(f"bundle image_size must be [H, W] with integers >= 32, got {size!r}")
    return int(size[0]), int(size[1])


def load_state_dict_file(path: Path | str) -> dict[str, Any]:
    """Read a ``model.pt`` state dict (fp16 tensors are returned as float32)."""
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state_dict, got {type(sd).__name__}")
    return {k: (v.float() if torch.is_tensor(v) and v.dtype == torch.float16 else v) for k, v in sd.items()}


def save_state_dict_file(module: torch.nn.Module, path: Path | str, *, half: bool = False) -> int:
    """Write ``module.state_dict()`` atomically to ``path`` (optionally fp16); returns the file size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {
        k: (v.detach().to("cpu").half() if half and v.is_floating_point() else v.detach().to("cpu"))
        for k, v in module.state_dict().items()
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(sd, str(tmp))
    tmp.replace(path)
    return path.stat().st_size
