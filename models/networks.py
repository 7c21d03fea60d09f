"""Network builders used by the bundle configs and by the training code.

The bundle configs (``monai_bundles/*/configs/inference.json``) are the single source
of truth for the architectures; the helpers here only assemble pieces that a plain
``_target_`` config entry cannot express in one step (a ``RetinaNetDetector`` with
its box selector, matcher and sampler already configured).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.utils.anchor_utils import AnchorGenerator
from monai.bundle import ConfigParser
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.blocks.feature_pyramid_network import LastLevelMaxPool

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


def resnet_fpn_feature_extractor(
    backbone: torch.nn.Module,
    spatial_dims: int,
    returned_layers: Sequence[int] = (2, 3),
    out_channels: int = 64,
    trainable_layers: int = 5,
) -> BackboneWithFPN:
    """ResNet-FPN feature extractor like ``monai.apps.detection.networks.retinanet_network.resnet_fpn_feature_extractor``
    but with a configurable FPN width.

    MONAI's builder fixes the FPN (and so the RetinaNet heads) at 256 channels; a 64-channel
    FPN makes the heads about 16 times cheaper, which is what lets the detector train on a CPU.
    Same layer selection and ``LastLevelMaxPool`` extra level as MONAI's.
    """
    layers = [int(k) for k in returned_layers]
    if not layers or min(layers) < 1 or max(layers) > 4:
        raise ValueError(f"returned_layers must be in [1, 4], got {returned_layers!r}")
    if out_channels < 8 or out_channels % 8:
        raise ValueError(f"out_channels must be a multiple of 8 (GroupNorm in the heads), got {out_channels!r}")
    if not hasattr(backbone, "in_planes"):
        raise ValueError(f"backbone must be a monai.networks.nets.resnet.ResNet, got {type(backbone).__name__}")
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, parameter in backbone.named_parameters():
        if all(not name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)
    in_planes: int = backbone.in_planes  # type: ignore[assignment]
    in_channels_stage2 = in_planes // 8
    in_channels_list = [in_channels_stage2 * 2 ** (i - 1) for i in layers]
    return BackboneWithFPN(
        backbone,
        {f"layer{k}": str(v) for v, k in enumerate(layers)},
        in_channels_list,
        int(out_channels),
        extra_blocks=LastLevelMaxPool(spatial_dims),
        spatial_dims=spatial_dims,
    )


def build_detector(
    network: torch.nn.Module,
    anchor_generator: AnchorGenerator,
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.3,
    detections_per_img: int = 10,
    topk_candidates_per_level: int = 300,
    atss_num_candidates: int = 4,
    hard_negative_batch_size: int = 64,
    positive_fraction: float = 0.3,
) -> RetinaNetDetector:
    """A ``RetinaNetDetector`` around ``network`` with inference and training settings applied.

    Boxes in and out are in MONAI's 2-D order ``[row1, col1, row2, col2]`` in model-input pixels
    (bundle ``box_format: "monai"``); convert with :func:`xyxy_to_monai_boxes` / :func:`monai_boxes_to_xyxy`.
    """
    if not 0.0 <= score_thresh < 1.0:
        raise ValueError(f"score_thresh must be in [0, 1), got {score_thresh!r}")
    if not 0.0 < nms_thresh <= 1.0:
        raise ValueError(f"nms_thresh must be in (0, 1], got {nms_thresh!r}")
    if detections_per_img < 1:
        raise ValueError(f"detections_per_img must be >= 1, got {detections_per_img!r}")
    detector = RetinaNetDetector(network=network, anchor_generator=anchor_generator, debug=False)
    detector.set_target_keys(box_key=BOX_KEY, label_key=LABEL_KEY)
    detector.set_box_selector_parameters(
        score_thresh=score_thresh,
        topk_candidates_per_level=topk_candidates_per_level,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )
    detector.set_atss_matcher(num_candidates=atss_num_candidates, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=hard_negative_batch_size,
        positive_fraction=positive_fraction,
        pool_size=20,
        min_neg=16,
    )
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
