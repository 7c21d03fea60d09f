"""Training code: short real CPU trainings on small phantoms, resume, augmentation geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.findings import LUNG_OPACITY_INDEX, RSNA_CLASSES
from models.training import TrainConfig, train
from models.training.augment import AffineParams, AugmentConfig, augment, draw_params, warp_boxes, warp_image
from models.training.data import load_pneumoniamnist, sample_weights

PNEUMONIAMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "pneumoniamnist.npz"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.phantoms.synth import write_rsna_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_rsna_dataset(root, 60, 4242, size=256)
    return root


@pytest.fixture(scope="module")
def trained_classifier(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, dict]:
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("cls_bundle")
    cfg = TrainConfig(task="classification", data_dirs=(phantoms,), out_dir=out, epochs=2, batch_size=8,
                      image_size=(64, 64), samples_per_epoch=96, seed=3, lr=2e-3, workers=0, progress=False)
    return cfg, train(cfg)


def test_classification_training_lowers_loss_and_writes_loadable_bundle(trained_classifier) -> None:
    from models.inference.bundle_loader import load_bundle

    cfg, summary = trained_classifier
    losses = [h["train_loss"] for h in summary["history"]]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    bundle = load_bundle(cfg.out_dir)
    assert bundle.kind == "classification"
    assert bundle.image_size == (64, 64)
    meta = json.loads((cfg.out_dir / "configs" / "metadata.json").read_text())
    training = meta["cxr_node"]["training"]
    sizes = training["split"]["sizes"]
    assert sizes["train"] + sizes["val"] + sizes["test"] == 60
    # the exact split ships with the bundle so that `cxr-node evaluate` tests on what training held out
    from models.datasets.split import read_split

    saved = read_split(cfg.out_dir / "split.json")
    assert {k: len(v) for k, v in saved.items()} == sizes
    assert not set(saved["train"]) & set(saved["test"])
    assert training["image_size"] == [64, 64]
    assert 0.0 <= training["val_metrics"]["auc"] <= 1.0
    assert (cfg.out_dir / "models" / "checkpoint.pt").is_file()


def test_resume_continues_epoch_counter(trained_classifier) -> None:
    cfg, first = trained_classifier
    ck = torch.load(cfg.checkpoint_path, map_location="cpu", weights_only=False)
    assert ck["epoch"] == 2
    more = TrainConfig(**{**cfg.__dict__, "epochs": 3, "resume": True})
    summary = train(more)
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["history"][:2] == first["history"]  # the first two epochs were not re-run
    assert torch.load(cfg.checkpoint_path, map_location="cpu", weights_only=False)["epoch"] == 3


def test_resume_refuses_a_checkpoint_of_another_image_size(trained_classifier) -> None:
    cfg, _ = trained_classifier
    with pytest.raises(ValueError, match="image_size"):
        train(TrainConfig(**{**cfg.__dict__, "epochs": 4, "resume": True, "image_size": (96, 96)}))


def test_detection_training_runs_and_writes_loadable_bundle(phantoms: Path, tmp_path: Path) -> None:
    from models.inference.bundle_loader import load_bundle

    torch.set_num_threads(2)
    cfg = TrainConfig(task="detection", data_dirs=(phantoms,), out_dir=tmp_path / "det", epochs=1,
                      batch_size=4, image_size=(128, 128), samples_per_epoch=16, seed=1, workers=0, progress=False)
    summary = train(cfg)
    assert summary["history"][0]["train_loss"] > 0
    bundle = load_bundle(cfg.out_dir)
    assert bundle.kind == "detection" and bundle.image_size == (128, 128)
    cfg_json = json.loads((cfg.out_dir / "configs" / "inference.json").read_text())
    assert 0.0 < cfg_json["score_threshold"] < 1.0
    assert summary["val_metrics"]["n_truth_boxes"] > 0


def _opacity_mask(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A phantom's opacity pixels (with minus without the opacity) and its boxes as xyxy."""
    from models.phantoms.synth import make_phantom

    with_op = make_phantom(np.random.default_rng(seed), size=256, kind="Lung Opacity")
    without = make_phantom(np.random.default_rng(seed), size=256, kind="Lung Opacity", render_opacity=False)
    diff = with_op.image.astype(np.float32) - without.image.astype(np.float32)
    mask = (diff > 8).astype(np.float32)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in with_op.boxes], np.float32)
    return mask, boxes


def _inside(mask: np.ndarray, boxes: np.ndarray) -> float:
    yy, xx = np.nonzero(mask > 0.5)
    cx, cy = xx + 0.5, yy + 0.5
    hit = np.zeros(len(cx), bool)
    for x1, y1, x2, y2 in boxes:
        hit |= (cx >= x1) & (cx <= x2) & (cy >= y1) & (cy <= y2)
    return float(hit.mean())


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_augmentation_keeps_boxes_on_the_opacity(seed: int) -> None:
    mask, boxes = _opacity_mask(seed)
    assert mask.sum() > 50 and _inside(mask, boxes) > 0.97  # the phantom itself is consistent
    rng = np.random.default_rng(100 + seed)
    for params in (AffineParams(angle_deg=7, zoom=1.1, shift_x=12, shift_y=-10),
                   AffineParams(angle_deg=-7, zoom=0.9, shift_x=-15, shift_y=15),
                   draw_params(rng, AugmentConfig(), 256, 256)):
        warped = warp_image(torch.from_numpy(mask)[None], params)[0].numpy()
        wboxes = warp_boxes(boxes, params, 256, 256)
        assert len(wboxes) == len(boxes)
        assert _inside(warped, wboxes) > 0.97, params
        # the boxes stay tight: not much larger than the warped opacity's own extent
        yy, xx = np.nonzero(warped > 0.5)
        extent = (xx.max() - xx.min() + 1) * (yy.max() - yy.min() + 1)
        area = sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in wboxes)
        assert area < 1.6 * extent * len(wboxes)


def test_augment_moves_image_and_boxes_together_and_changes_intensity() -> None:
    mask, boxes = _opacity_mask(7)
    img = torch.from_numpy(mask * 0.5 + 0.25)[None]
    out, out_boxes = augment(img, boxes, np.random.default_rng(0), AugmentConfig())
    assert out.shape == img.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert not torch.allclose(out, img)
    assert len(out_boxes) == len(boxes)


def test_no_horizontal_flip_by_default() -> None:
    rng = np.random.default_rng(0)
    assert not any(draw_params(rng, AugmentConfig(), 64, 64).flip for _ in range(200))
    rng = np.random.default_rng(0)
    assert any(draw_params(rng, AugmentConfig(horizontal_flip=True), 64, 64).flip for _ in range(50))


def test_augment_config_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom=(1.2, 0.9))
    with pytest.raises(ValueError, match="max_rotation_deg"):
        AugmentConfig(max_rotation_deg=90)


def test_sample_weights_balance_classes_and_sources() -> None:
    labels = np.array([0] * 90 + [2] * 10 + [2] * 50)
    groups = ["rsna"] * 100 + ["pneumoniamnist"] * 50
    w = sample_weights(labels, groups)
    assert w.sum() == pytest.approx(1.0)
    cells = {("rsna", 0): w[:90].sum(), ("rsna", 2): w[90:100].sum(), ("pm", 2): w[100:].sum()}
    for v in cells.values():
        assert v == pytest.approx(1 / 3)


def test_train_config_validates() -> None:
    with pytest.raises(ValueError, match="task"):
        TrainConfig(task="segmentation", data_dirs=("x",), out_dir="y")
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(task="detection", data_dirs=("x",), out_dir="y", image_size=(100, 100))
    with pytest.raises(ValueError, match="extra_npz"):
        TrainConfig(task="detection", data_dirs=("x",), out_dir="y", extra_npz="a.npz")


@pytest.mark.skipif(not PNEUMONIAMNIST.is_file(), reason="shared PneumoniaMNIST file not present")
def test_pneumoniamnist_training_images_equal_the_engine_path() -> None:
    """The training loader's upsampling of PneumoniaMNIST matches decode+prepare of the DICOM wrapper."""
    from models.evaluation.holdout import pneumoniamnist_dicom
    from models.imaging.dicom_image import load_source_image
    from models.imaging.preprocess import prepare

    data = load_pneumoniamnist(PNEUMONIAMNIST, "val", (96, 96))
    with np.load(PNEUMONIAMNIST) as z:
        raw, lab = z["val_images"][:5], z["val_labels"][:5].reshape(-1)
    assert list(data.labels[:5]) == [LUNG_OPACITY_INDEX if v == 1 else 0 for v in lab]
    for i in range(5):
        arr, _ = prepare(load_source_image(pneumoniamnist_dicom(raw[i], i, "val")), (96, 96))
        assert np.abs(arr[0] - data.images[i].astype(np.float32)).max() < 0.02
    assert set(np.unique(data.labels)) <= {0, RSNA_CLASSES.index("Lung Opacity")}


def test_prepared_cache_roundtrip_and_boxes_per_image(phantoms: Path) -> None:
    """All boxes of a patient land on its one image (scaled to the model size); the cache returns the same data."""
    from models.datasets.rsna_layout import read_rsna_labels
    from models.training.data import CACHE_DIR_NAME, load_rsna_prepared

    labels = read_rsna_labels(phantoms)
    first = load_rsna_prepared(phantoms, (128, 128), labels=labels, workers=0)
    assert list((phantoms / CACHE_DIR_NAME).glob("prepared_128x128_*.npz"))
    second = load_rsna_prepared(phantoms, (128, 128), labels=labels, workers=0)
    assert first.ids == second.ids == tuple(sorted(labels))
    assert np.array_equal(first.images, second.images)
    for pid, boxes in zip(first.ids, first.boxes, strict=True):
        truth = labels[pid].boxes
        assert len(boxes) == len(truth)
        for (x1, y1, x2, y2), (x, y, w, h) in zip(boxes, truth, strict=True):  # 256 px source -> 128 px model
            assert (x1, y1, x2 - x1, y2 - y1) == pytest.approx((x / 2, y / 2, w / 2, h / 2), abs=1e-3)
    assert (first.labels == LUNG_OPACITY_INDEX).sum() == sum(1 for v in labels.values() if v.boxes)


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PneumoniaMNIST-layout file: the first 160 train and 60 val images of the real one (test: none)."""
    if not PNEUMONIAMNIST.is_file():
        pytest.skip("shared PneumoniaMNIST file not present")
    out = tmp_path_factory.mktemp("npz") / "small.npz"
    with np.load(PNEUMONIAMNIST) as z:
        np.savez(out, train_images=z["train_images"][:160], train_labels=z["train_labels"][:160],
                 val_images=z["val_images"][:60], val_labels=z["val_labels"][:60])
    return out


def test_pneumoniamnist_alone_trains_the_two_class_head_and_picks_a_threshold_on_val(
    small_npz: Path, tmp_path: Path
) -> None:
    """The trainer's PneumoniaMNIST-only mode: no RSNA folder, the shipped Normal / Pneumonia head,
    the bundle's own centre-crop preprocessing, the decision threshold chosen on the val split."""
    from models.inference.bundle_loader import load_bundle

    torch.set_num_threads(2)
    out = tmp_path / "cls"
    cfg = TrainConfig(task="classification", data_dirs=(), extra_npz=small_npz, out_dir=out, epochs=1,
                      batch_size=16, samples_per_epoch=48, seed=5, workers=0, progress=False)
    summary = train(cfg)
    bundle = load_bundle(out)
    assert bundle.class_names == ("Normal", "Pneumonia") and bundle.positive_class == "Pneumonia"
    assert bundle.finding is not None and bundle.finding.value == "233604007"
    assert bundle.preprocessing.method == "centre-crop" and bundle.preprocessing.bottleneck == 28
    assert summary["split"]["sizes"] == {"train": 160, "val": 60}
    assert summary["data"]["extra_npz"]["label_map"] == {"1": "Pneumonia", "0": "Normal"}
    decision = summary["decision_threshold"]
    assert decision["rule"].startswith("Youden")
    config = json.loads((out / "configs" / "inference.json").read_text())
    assert config["decision_threshold"] == pytest.approx(decision["threshold"], abs=1e-6)
    assert bundle.decision_threshold == pytest.approx(decision["threshold"], abs=1e-6)
    assert not (out / "split.json").exists()  # the official PneumoniaMNIST splits, nothing to record


def test_rsna_data_switches_the_bundle_to_the_three_class_head(tmp_path: Path) -> None:
    from models.training.bundle_io import ensure_bundle
    from models.training.head import ClassifierHead, apply_rsna_head

    out = ensure_bundle("classification", tmp_path / "cls")
    before = json.loads((out / "configs" / "inference.json").read_text())
    changed = apply_rsna_head(out)
    after = json.loads((out / "configs" / "inference.json").read_text())
    assert changed == (tuple(before["class_names"]) != RSNA_CLASSES)
    head = ClassifierHead.from_config(after)
    assert head.is_rsna and head.positive_index == LUNG_OPACITY_INDEX
    assert after["network_def"]["out_channels"] == 3 and after["finding"]["value"] == "112001"
    assert not apply_rsna_head(out)  # idempotent


def test_pneumoniamnist_alone_refuses_a_head_with_classes_it_has_no_labels_for(small_npz: Path, tmp_path: Path) -> None:
    from models.training.bundle_io import ensure_bundle
    from models.training.head import apply_rsna_head

    out = ensure_bundle("classification", tmp_path / "cls")
    apply_rsna_head(out)
    cfg = TrainConfig(task="classification", data_dirs=(), extra_npz=small_npz, out_dir=out, epochs=1,
                      samples_per_epoch=16, workers=0, progress=False)
    with pytest.raises(ValueError, match="No Lung Opacity / Not Normal"):
        train(cfg)


def test_bottleneck_training_images_equal_the_engine_path(small_npz: Path) -> None:
    """With the shipped preprocessing, a training image is what the engine makes of its DICOM wrapper."""
    from models.evaluation.holdout import pneumoniamnist_dicom
    from models.imaging.dicom_image import load_source_image
    from models.imaging.preprocess import Preprocessing, prepare

    spec = Preprocessing(method="centre-crop", bottleneck=28, quantise_levels=256, normalise="standardise")
    data = load_pneumoniamnist(small_npz, "val", (64, 64), preprocessing=spec, class_names=("Normal", "Pneumonia"),
                               positive_class="Pneumonia")
    with np.load(small_npz) as z:
        raw, lab = z["val_images"][:5], z["val_labels"][:5].reshape(-1)
    assert list(data.labels[:5]) == [int(v) for v in lab]
    for i in range(5):
        arr, _ = prepare(load_source_image(pneumoniamnist_dicom(raw[i], i, "val")), (64, 64), spec)
        assert np.abs(arr[0] - data.images[i].astype(np.float32)).max() < 0.01
