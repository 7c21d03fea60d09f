"""The seed-size bundles (bench/seed_bundles.py, issue 15 point 3) are what they claim: DenseNet121 at
224 px and a RetinaNet with a ResNet-50 backbone and 256-channel FPN at 512 px, loadable by the node."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from seed_bundles import VERSION_SUFFIX, seed_config, write_seed_bundles  # noqa: E402

from models.inference.bundle_loader import load_bundle  # noqa: E402


def test_seed_config_replaces_only_known_keys() -> None:
    shipped = {"image_size": [64, 64], "network_def": {"x": 1}}
    assert seed_config(shipped, {"image_size": [224, 224], "_comment": "c"}) == {
        "image_size": [224, 224],
        "network_def": {"x": 1},
    }
    with pytest.raises(ValueError, match="imagesize"):
        seed_config(shipped, {"imagesize": [1, 1]})


def test_seed_bundles_are_seed_sized_and_load(tmp_path: Path) -> None:
    cls_dir, det_dir = write_seed_bundles(tmp_path / "bundles")
    cls, det = load_bundle(cls_dir), load_bundle(det_dir)
    assert (cls.kind, cls.image_size, det.kind, det.image_size) == (
        "classification",
        (224, 224),
        "detection",
        (512, 512),
    )
    assert type(cls.network).__name__ == "DenseNet121"
    assert cls.model_info.version.endswith(VERSION_SUFFIX) and det.model_info.version.endswith(VERSION_SUFFIX)
    backbone = det.network.feature_extractor.body  # type: ignore[union-attr]
    blocks = [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)]
    assert blocks == [3, 4, 6, 3]  # ResNet-50
    assert type(backbone.layer1[0]).__name__ == "ResNetBottleneck"
    assert det.network.feature_extractor.out_channels == 256  # type: ignore[union-attr]
    params = sum(p.numel() for p in det.network.parameters())
    assert params > 25_000_000, params
    with torch.inference_mode():  # the detector runs at its input size
        out = det.detector(torch.rand(1, 1, 512, 512))  # type: ignore[misc]
    assert len(out) == 1 and "boxes" in out[0]
