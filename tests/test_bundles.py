"""The two MONAI bundles: layout, configs, weights, and ``python -m monai.bundle run``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from models.bundle_run import BUNDLES_DIR
from models.networks import bundle_detector, load_bundle_parser, load_state_dict_file

REPO = BUNDLES_DIR.parent
TRAINING_CONFIGS = REPO / "models" / "training" / "configs"
BUNDLES = ("cxr_classification", "cxr_opacity_detection")
MAX_WEIGHTS_BYTES = 50 * 1024 * 1024


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_layout_and_metadata(name: str) -> None:
    root = BUNDLES_DIR / name
    for rel in ("configs/metadata.json", "configs/inference.json", "scripts/__init__.py",
                "scripts/inference.py", "models/model.pt", "docs/README.md"):
        assert (root / rel).is_file(), rel
    assert (root / "models/model.pt").stat().st_size <= MAX_WEIGHTS_BYTES
    meta = json.loads((root / "configs/metadata.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]) and meta["version"] in meta["changelog"]
    assert {"inputs", "outputs"} <= set(meta["network_data_format"])
    node = meta["cxr_node"]
    assert "not a clinical model" in node["training_data"].lower()
    assert "metrics" in node
    cfg = json.loads((root / "configs/inference.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == cfg["image_size"]


@pytest.mark.parametrize("name", BUNDLES)
def test_every_config_parses(name: str) -> None:
    parser = load_bundle_parser(BUNDLES_DIR / name, "inference.json")
    assert "run" in parser
    assert isinstance(parser.get_parsed_content("bundle_root"), str)
    for config in ("train.json", "evaluate.json"):  # the project's trainers: models/training/configs/<bundle>/
        parser = ConfigParser()
        parser.read_config(str(TRAINING_CONFIGS / name / config))
        assert "run" in parser
        assert parser.get_parsed_content("bundle_root") == str(BUNDLES_DIR / name)


def test_classification_network_and_weights() -> None:
    parser = load_bundle_parser(BUNDLES_DIR / "cxr_classification")
    classes = tuple(parser.get_parsed_content("class_names"))
    assert classes == ("Normal", "Pneumonia")  # the shipped head: only classes it had real data for
    net = parser.get_parsed_content("network_def")
    assert type(net).__name__ == "DenseNet121"
    net.load_state_dict(load_state_dict_file(BUNDLES_DIR / "cxr_classification/models/model.pt"), strict=True)
    h, w = parser.get_parsed_content("image_size")
    with torch.no_grad():
        out = net.eval()(torch.rand(2, 1, h, w))
    assert out.shape == (2, len(classes))


def test_detection_network_detector_and_weights() -> None:
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet

    parser = load_bundle_parser(BUNDLES_DIR / "cxr_opacity_detection")
    det = bundle_detector(parser)
    assert isinstance(det, RetinaNetDetector) and isinstance(det.network, RetinaNet)
    assert det.network is parser.get_parsed_content("network_def")
    det.network.load_state_dict(load_state_dict_file(BUNDLES_DIR / "cxr_opacity_detection/models/model.pt"))
    h, w = parser.get_parsed_content("image_size")
    assert h % 32 == 0 and w % 32 == 0
    assert 0.0 < parser.get_parsed_content("score_threshold") < 1.0
    with torch.no_grad():
        out = det.eval()([torch.rand(1, h, w)])
    boxes = out[0]["boxes"]
    assert boxes.ndim == 2 and boxes.shape[1] == 4
    if len(boxes):  # xyxy inside the model input
        assert bool((boxes[:, 2] >= boxes[:, 0]).all()) and float(boxes[:, 2].max()) <= w + 1e-3


def _training_run(name: str, config: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of the project's training/evaluation config of bundle ``name``."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           f"models/training/configs/{name}/{config}", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_monai_bundle_run_train_json_trains_a_bundle(tmp_path: Path) -> None:
    from models.inference.bundle_loader import load_bundle
    from models.phantoms.synth import write_rsna_dataset

    data = tmp_path / "data"
    write_rsna_dataset(data, 30, 778, size=128)
    out = tmp_path / "trained"
    proc = _training_run("cxr_classification", "train.json", "--dataset_dir", str(data),
                       "--output_dir", str(out), "--epochs", "1", "--batch_size", "4",
                       "--image_size", "[64,64]", "--samples_per_epoch", "8", "--device", "cpu", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = load_bundle(out)
    assert bundle.image_size == (64, 64)
    meta = json.loads((out / "configs/metadata.json").read_text())
    assert meta["cxr_node"]["training"]["epochs"] == 1
    assert "monai.bundle run" in meta["cxr_node"]["training"]["command"]


def _matched_anchor_boxes_xyxy(gt_xyxy: list[float], convert: bool) -> torch.Tensor:
    """Anchors the shipped detector's ATSS matcher assigns to one GT box on a non-square 128x256 image."""
    from models.networks import monai_boxes_to_xyxy, xyxy_to_monai_boxes

    det = bundle_detector(load_bundle_parser(BUNDLES_DIR / "cxr_opacity_detection"))
    images = torch.zeros(1, 1, 128, 256)
    gt = torch.tensor([gt_xyxy], dtype=torch.float32)
    boxes = xyxy_to_monai_boxes(gt) if convert else gt
    with torch.no_grad():
        head = det.network(images)
    det.generate_anchors(images, head)
    locs = [x.shape[2:].numel() for x in head[det.cls_key]]
    matched = det.compute_anchor_matched_idxs(det.anchors, [{"boxes": boxes, "labels": torch.zeros(1, dtype=torch.int64)}], locs)
    return monai_boxes_to_xyxy(det.anchors[0][matched[0] >= 0])


def test_detector_targets_use_monai_axis_order() -> None:
    """GT boxes given as xyxy (x = column) must be converted so matched anchors sit on the box.

    Regression test for the row/column swap: MONAI reads a 2-D box as [row1, col1, row2, col2].
    """
    from monai.data.box_utils import box_iou

    gt = [180.0, 20.0, 230.0, 60.0]  # cols 180-230, rows 20-60 of a 128 x 256 (H x W) image
    anchors = _matched_anchor_boxes_xyxy(gt, convert=True)
    assert len(anchors) > 0
    centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centres_y = (anchors[:, 1] + anchors[:, 3]) / 2
    assert bool(((centres_x > 170) & (centres_x < 240) & (centres_y > 10) & (centres_y < 70)).all()), anchors
    assert float(box_iou(anchors, torch.tensor([gt])).mean()) > 0.2
    # without the conversion the matcher would put the anchors on the transposed box, off the opacity
    wrong = _matched_anchor_boxes_xyxy(gt, convert=False)
    if len(wrong):
        assert float(box_iou(wrong, torch.tensor([gt])).max()) < 0.05
