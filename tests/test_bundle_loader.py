"""Tests of models.inference.bundle_loader on copies of the shipped bundle configs with freshly saved weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from models.errors import BundleError
from models.findings import RSNA_CLASSES, ModelInfo
from models.inference.bundle_loader import (
    DEFAULT_BOX_FORMAT,
    DEFAULT_DETECTION_SCORE_THRESHOLD,
    LoadedBundle,
    bundle_digest,
    detector_box_to_xyxy,
    load_bundle,
    monai_box_to_xyxy,
    xyxy_to_monai_box,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "monai_bundles"
CLS = "cxr_classification"
DET = "cxr_opacity_detection"

torch.set_num_threads(2)


def _instantiate_network(config_file: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    return parser.get_parsed_content("network_def")


def _make_bundle(tmp_path: Path, name: str, *, version: str = "0.0.1-test", half: bool = False) -> Path:
    """A bundle folder with the shipped inference.json, a small metadata.json and new random weights."""
    dst = tmp_path / name
    (dst / "configs").mkdir(parents=True)
    (dst / "models").mkdir()
    shutil.copy(SHIPPED / name / "configs" / "inference.json", dst / "configs" / "inference.json")
    (dst / "configs" / "metadata.json").write_text(json.dumps({"version": version, "name": name}))
    torch.manual_seed(0)
    net = _instantiate_network(dst / "configs" / "inference.json")
    sd = {k: (v.half() if half and v.is_floating_point() else v) for k, v in net.state_dict().items()}
    torch.save(sd, dst / "models" / "model.pt")
    return dst


@pytest.fixture(scope="module")
def cls_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_bundle(tmp_path_factory.mktemp("b"), CLS)


@pytest.fixture(scope="module")
def det_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_bundle(tmp_path_factory.mktemp("b"), DET)


def test_classification_bundle_loads_weights_in_eval_mode(cls_bundle: Path) -> None:
    b = load_bundle(cls_bundle, device="cpu")
    assert isinstance(b, LoadedBundle)
    assert b.kind == "classification"
    assert b.name == CLS and b.version == "0.0.1-test"
    assert b.model_info == ModelInfo(CLS, "0.0.1-test", b.digest)
    assert len(b.digest) == 12 and b.digest == bundle_digest(cls_bundle)
    cfg = json.loads((cls_bundle / "configs" / "inference.json").read_text())
    assert b.class_names == tuple(cfg["class_names"]) and b.positive_class == cfg["positive_class"]
    assert b.decision_threshold == cfg["decision_threshold"] and b.preprocessing.to_config() == cfg["preprocessing"]
    assert b.image_size == tuple(cfg["image_size"])
    assert b.detector is None and b.score_threshold is None
    assert not b.network.training
    saved = torch.load(cls_bundle / "models" / "model.pt", weights_only=True)
    state = b.network.state_dict()
    assert set(state) == set(saved)
    for k, v in saved.items():
        assert torch.equal(state[k].cpu(), v), k
    assert all(p.device.type == "cpu" and not p.requires_grad for p in b.network.parameters())
    with torch.inference_mode():
        out = b.network(torch.zeros(2, 1, *b.image_size))
    assert out.shape == (2, len(b.class_names))


def test_the_shipped_classifier_outputs_only_classes_it_had_real_data_for() -> None:
    """Issue 16: the shipped head is Normal / Pneumonia (PneumoniaMNIST's labels), finding SCT Pneumonia;
    the RSNA three-class head stays available for RSNA training (configs/rsna_head.json)."""
    b = load_bundle(SHIPPED / CLS, device="cpu")
    assert b.class_names == ("Normal", "Pneumonia") and b.positive_class == "Pneumonia"
    assert (b.finding.value, b.finding.scheme) == ("233604007", "SCT") if b.finding else False
    assert b.preprocessing.method == "centre-crop" and b.preprocessing.bottleneck == 28
    assert b.heatmap_layer == "features.denseblock3"
    rsna = json.loads((SHIPPED / CLS / "configs" / "rsna_head.json").read_text())
    assert tuple(rsna["class_names"]) == RSNA_CLASSES and rsna["positive_class"] == "Lung Opacity"


def test_detection_bundle_has_detector_around_the_loaded_network(det_bundle: Path) -> None:
    b = load_bundle(det_bundle, device="cpu")
    assert b.kind == "detection"
    assert b.detector is not None and b.detector.network is b.network
    assert not b.detector.training and not b.network.training
    cfg = json.loads((det_bundle / "configs" / "inference.json").read_text())
    assert b.score_threshold == cfg.get("score_threshold", DEFAULT_DETECTION_SCORE_THRESHOLD)
    saved = torch.load(det_bundle / "models" / "model.pt", weights_only=True)
    for k, v in saved.items():
        assert torch.equal(b.network.state_dict()[k], v), k
    with torch.inference_mode():
        dets = b.detector(torch.rand(2, 1, *b.image_size))
    assert len(dets) == 2 and all({"boxes", "labels_scores"} <= set(d) for d in dets)


def test_fp16_weights_are_cast_to_fp32(tmp_path: Path) -> None:
    bundle = _make_bundle(tmp_path, CLS, half=True)
    b = load_bundle(bundle, device="cpu")
    saved = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert any(v.dtype == torch.float16 for v in saved.values())
    for k, v in b.network.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float32, k
            assert torch.equal(v, saved[k].float()), k


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle folder missing") as ei:
        load_bundle(tmp_path / "nope", device="cpu")
    assert str(tmp_path / "nope") in str(ei.value)


@pytest.mark.parametrize("rel", ["configs/metadata.json", "configs/inference.json", "models/model.pt"])
def test_missing_file_is_named(cls_bundle: Path, tmp_path: Path, rel: str) -> None:
    bundle = tmp_path / CLS
    shutil.copytree(cls_bundle, bundle)
    (bundle / rel).unlink()
    with pytest.raises(BundleError, match="missing") as ei:
        load_bundle(bundle, device="cpu")
    assert str(bundle / rel) in str(ei.value)


def test_bad_json(cls_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / CLS
    shutil.copytree(cls_bundle, bundle)
    (bundle / "configs" / "inference.json").write_text('{"image_size": [128, 128],')
    with pytest.raises(BundleError, match="bad JSON") as ei:
        load_bundle(bundle, device="cpu")
    assert "inference.json" in str(ei.value)


def test_weights_that_do_not_match_the_network(cls_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / CLS
    shutil.copytree(cls_bundle, bundle)
    sd = torch.load(bundle / "models" / "model.pt", weights_only=True)
    sd.pop(next(iter(sd)))  # a missing key fails the strict load
    torch.save(sd, bundle / "models" / "model.pt")
    with pytest.raises(BundleError, match="do not match") as ei:
        load_bundle(bundle, device="cpu")
    assert str(bundle / "models" / "model.pt") in str(ei.value)


def test_detection_weights_in_classification_bundle(
    cls_bundle: Path, det_bundle: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / CLS
    shutil.copytree(cls_bundle, bundle)
    shutil.copy(det_bundle / "models" / "model.pt", bundle / "models" / "model.pt")
    with pytest.raises(BundleError, match="do not match"):
        load_bundle(bundle, device="cpu")


def test_garbage_weights_file(cls_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / CLS
    shutil.copytree(cls_bundle, bundle)
    (bundle / "models" / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(BundleError, match="cannot read weights"):
        load_bundle(bundle, device="cpu")


def test_wrong_class_names(cls_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / CLS
    shutil.copytree(cls_bundle, bundle)
    cfg_file = bundle / "configs" / "inference.json"
    cfg = json.loads(cfg_file.read_text())
    for names in (["Normal"], ["Normal", "Normal", "Lung Opacity"], "Normal,Lung Opacity"):
        cfg["class_names"] = names
        cfg_file.write_text(json.dumps(cfg))
        with pytest.raises(BundleError, match="class_names") as ei:
            load_bundle(bundle, device="cpu")
        assert "Normal" in str(ei.value)


def test_positive_class_finding_and_threshold_are_checked(cls_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / CLS
    shutil.copytree(cls_bundle, bundle)
    cfg_file = bundle / "configs" / "inference.json"
    good = json.loads(cfg_file.read_text())
    for change, message in (
        ({"positive_class": "No Such Class"}, "positive_class"),
        ({"finding": {"value": "233604007", "scheme": "SCT"}}, "finding"),
        ({"decision_threshold": 1.5}, "decision_threshold"),
        ({"heatmap_layer": "features.nosuchblock"}, "heatmap_layer"),
        ({"preprocessing": {"method": "stretch"}}, "preprocessing"),
    ):
        cfg_file.write_text(json.dumps({**good, **change}))
        with pytest.raises(BundleError, match=message):
            load_bundle(bundle, device="cpu")


def test_missing_version(cls_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / CLS
    shutil.copytree(cls_bundle, bundle)
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"name": CLS}))
    with pytest.raises(BundleError, match="version"):
        load_bundle(bundle, device="cpu")


def test_bad_image_size(cls_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / CLS
    shutil.copytree(cls_bundle, bundle)
    cfg_file = bundle / "configs" / "inference.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["image_size"] = [128]
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match=r"image_size .*\[128\]"):
        load_bundle(bundle, device="cpu")


def test_bad_detection_threshold(det_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / DET
    shutil.copytree(det_bundle, bundle)
    cfg_file = bundle / "configs" / "inference.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["score_threshold"] = 1.5
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="1.5"):
        load_bundle(bundle, device="cpu")


@pytest.mark.parametrize("name", [CLS, DET])
def test_shipped_bundles_load(name: str) -> None:
    """The bundles in monai_bundles/ (whatever weights they ship) load strictly."""
    b = load_bundle(SHIPPED / name, device="cpu")
    meta = json.loads((SHIPPED / name / "configs" / "metadata.json").read_text())
    assert b.version == meta["version"]
    assert b.kind == ("classification" if name == CLS else "detection")


def test_box_format_from_config(det_bundle: Path, tmp_path: Path) -> None:
    # the shipped detector declares MONAI's [r1, c1, r2, c2] order (trained that way)
    assert load_bundle(det_bundle, device="cpu").box_format == "monai"
    bundle = tmp_path / DET
    shutil.copytree(det_bundle, bundle)
    cfg_file = bundle / "configs" / "inference.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["box_format"]  # a bundle that says nothing gets the documented default
    cfg_file.write_text(json.dumps(cfg))
    assert load_bundle(bundle, device="cpu").box_format == DEFAULT_BOX_FORMAT == "xyxy"
    cfg["box_format"] = "monai"
    cfg_file.write_text(json.dumps(cfg))
    b = load_bundle(bundle, device="cpu")
    assert b.box_format == "monai"
    assert b.box_to_xyxy([10.0, 20.0, 30.0, 60.0]) == (
        20.0,
        10.0,
        60.0,
        30.0,
    )  # [r1, c1, r2, c2] -> x = column
    cfg["box_format"] = "yxyx"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="yxyx"):
        load_bundle(bundle, device="cpu")


def test_box_conversions() -> None:
    assert detector_box_to_xyxy([1, 2, 3, 4], "xyxy") == (1.0, 2.0, 3.0, 4.0)
    assert detector_box_to_xyxy([1, 2, 3, 4], "monai") == (2.0, 1.0, 4.0, 3.0)
    assert xyxy_to_monai_box(*monai_box_to_xyxy([1, 2, 3, 4])) == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match="cxcywh"):
        detector_box_to_xyxy([1, 2, 3, 4], "cxcywh")


def test_wrong_detection_class_names(det_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / DET
    shutil.copytree(det_bundle, bundle)
    cfg_file = bundle / "configs" / "inference.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["class_names"] = ["Opacity"]
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="'Opacity'"):
        load_bundle(bundle, device="cpu")
