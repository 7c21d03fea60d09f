"""Tests of models.evaluation.evaluate / dicom_node.cli.evaluate.

The end-to-end tests run the real ``InferenceEngine`` (CPU) on small phantoms written by
``models.phantoms.synth`` with copies of the shipped bundle configs and seeded random weights (the
detector's class bias is raised so that it returns boxes), then recompute every figure of
``report.json`` from ``predictions.csv`` with ``models.evaluation.metrics``. They take ~1–2 min on 2 CPU cores
(marked ``slow``); the pure parts at the end run in well under a second.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.datasets.split import split_patients, write_split
from models.evaluation import metrics as M
from models.evaluation.evaluate import (
    PLOT_FILES,
    REFERENCE_CAVEAT,
    ImagePrediction,
    compute_report,
    read_predictions_csv,
    select_patients,
    write_predictions_csv,
)
from models.findings import RSNA_CLASSES

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "monai_bundles"
NPZ = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_BOOT = 200

torch.set_num_threads(2)


def _bundle_copy(root: Path, name: str, *, cls_bias: float | None = None) -> None:
    from monai.bundle import ConfigParser

    dst = root / name
    (dst / "configs").mkdir(parents=True)
    (dst / "models").mkdir()
    shutil.copy(SHIPPED / name / "configs" / "inference.json", dst / "configs" / "inference.json")
    (dst / "configs" / "metadata.json").write_text(json.dumps({"version": "0.0.1-eval-test", "name": name}))
    if name == "cxr_classification":  # RSNA-layout evaluation is the RSNA three-class head's job
        from models.training.head import RSNA_HEAD_FILE, apply_rsna_head

        shutil.copy(SHIPPED / name / "configs" / RSNA_HEAD_FILE, dst / "configs" / RSNA_HEAD_FILE)
        apply_rsna_head(dst)
    parser = ConfigParser()
    parser.read_config(str(dst / "configs" / "inference.json"))
    torch.manual_seed(1)
    net = parser.get_parsed_content("network_def")
    sd = net.state_dict()
    if cls_bias is not None:
        key = "classification_head.cls_logits.bias"
        sd[key] = torch.full_like(sd[key], cls_bias)
    torch.save(sd, dst / "models" / "model.pt")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    _bundle_copy(root, "cxr_classification")
    _bundle_copy(root, "cxr_opacity_detection", cls_bias=0.0)  # scores around 0.5: boxes above the floor
    return root


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.phantoms.synth import write_rsna_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_rsna_dataset(root, 30, 5, size=256)
    return root


def _run_cli(argv: list[str]) -> int:
    from dicom_node.cli import evaluate as cli_evaluate

    parser = argparse.ArgumentParser(prog="cxr-node evaluate")
    cli_evaluate.configure(parser)
    return cli_evaluate.main(parser.parse_args(argv))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def phantom_report(bundles: Path, phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    rc = _run_cli(
        [
            "--data", str(phantoms), "--split", "all", "--bundles", str(bundles), "--device", "cpu",
            "--out", str(out), "--n-boot", str(N_BOOT), "--threads", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    return out


@pytest.mark.slow
def test_report_files_exist_and_pngs_are_valid(phantom_report: Path) -> None:
    assert (phantom_report / "report.json").stat().st_size > 0
    assert (phantom_report / "predictions.csv").stat().st_size > 0
    md = (phantom_report / "report.md").read_text()
    assert REFERENCE_CAVEAT in md
    for published in ("0.895", "0.63", "0.72", "0.55", "0.85", "0.73", "0.52", "0.383"):
        assert published in md
    report = json.loads((phantom_report / "report.json").read_text())
    assert report["data"]["synthetic"] is True
    assert set(report["files"]["plots"]) == set(PLOT_FILES)
    for name in PLOT_FILES.values():
        data = (phantom_report / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 2000, name
        assert f"]({name})" in md


@pytest.mark.slow
def test_predictions_cover_the_split(phantom_report: Path, phantoms: Path) -> None:
    from models.datasets.rsna_layout import read_rsna_labels

    labels = read_rsna_labels(phantoms)
    rows = _read_csv(phantom_report / "predictions.csv")
    assert sorted(r["patient_id"] for r in rows) == sorted(labels)
    for r in rows:
        lab = labels[r["patient_id"]]
        assert int(r["target"]) == lab.target
        assert r["class"] == lab.klass
        assert [tuple(b) for b in json.loads(r["gt_boxes"])] == [tuple(b) for b in lab.boxes]
        assert r["status"] == "analysed"  # phantoms are frontal: the view gate lets them through
        cells = [r[k] for k in ("p_normal", "p_not_normal", "p_lung_opacity")]
        if all(cells):  # a three-class RSNA head: its probabilities are written out
            probs = [float(c) for c in cells]
            assert sum(probs) == pytest.approx(1.0, abs=1e-4)
            assert float(r["pneumonia_probability"]) == pytest.approx(probs[2], abs=1e-6)
        else:  # another head (the shipped Normal / Pneumonia one): only its positive-class probability
            assert not any(cells)
            assert 0.0 <= float(r["pneumonia_probability"]) <= 1.0
    assert any(json.loads(r["pred_boxes"]) for r in rows)  # the biased detector did return boxes


@pytest.mark.slow
def test_report_numbers_equal_metrics_on_saved_predictions(phantom_report: Path) -> None:
    report = json.loads((phantom_report / "report.json").read_text())
    rows = [r for r in _read_csv(phantom_report / "predictions.csv") if r["status"] == "analysed"]
    y = np.array([int(r["target"]) for r in rows])
    s = np.array([float(r["pneumonia_probability"]) for r in rows])
    cls = report["classification"]
    assert report["n_images"] == 30 and cls["n"] == len(rows)
    assert cls["roc_auc"] == pytest.approx(M.roc_auc(y, s), abs=1e-12)
    assert cls["roc_auc_ci95"] == pytest.approx(
        list(M.bootstrap_auc_ci(y, s, n_boot=N_BOOT, seed=0)), abs=1e-12
    )
    assert cls["average_precision"] == pytest.approx(M.average_precision(y, s), abs=1e-12)
    assert cls["brier_score"] == pytest.approx(M.brier_score(y, s), abs=1e-12)
    youden = M.youden_threshold(y, s)
    assert cls["youden_threshold"] == pytest.approx(youden, abs=1e-12)
    for key, t in (("0.5", 0.5), ("0.25", 0.25), ("youden", youden)):
        expected = M.binary_report(y, s, t)
        got = cls["at_threshold"][key]
        assert got["confusion_matrix"] == expected["confusion_matrix"]
        for k in ("precision", "recall", "specificity", "f1", "accuracy"):
            assert got[k] == pytest.approx(expected[k], abs=1e-12)
    y3 = np.array([RSNA_CLASSES.index(r["class"]) for r in rows])
    p3 = np.array([[float(r[k]) for k in ("p_normal", "p_not_normal", "p_lung_opacity")] for r in rows])
    mc = M.multiclass_report(y3, p3, RSNA_CLASSES)
    assert cls["multiclass"]["confusion_matrix"] == mc["confusion_matrix"]
    assert cls["multiclass"]["accuracy"] == pytest.approx(mc["accuracy"])

    det = report["detection"]
    op = det["operating_threshold"]
    shipped = json.loads((SHIPPED / "cxr_opacity_detection" / "configs" / "inference.json").read_text())
    assert op == pytest.approx(shipped["score_threshold"])  # the detection config's reporting threshold
    gt = [[tuple(b) for b in json.loads(r["gt_boxes"])] for r in rows]
    pred = [[tuple(b) for b in json.loads(r["pred_boxes"])] for r in rows]
    at_op = [(g, [b for b in p if b[4] >= op]) for g, p in zip(gt, pred, strict=True)]
    everything = list(zip(gt, pred, strict=True))
    assert det["rsna_map"] == pytest.approx(M.rsna_map(at_op), abs=1e-12)
    assert det["map_at_iou_0.5"] == pytest.approx(M.map_at_iou(everything, iou=0.5), abs=1e-12)
    assert det["recall_at_iou_0.4"] == pytest.approx(
        M.detection_recall(everything, iou=0.4, score_threshold=op), abs=1e-12
    )
    assert det["n_gt_boxes"] == sum(len(g) for g in gt)
    assert det["n_pred_boxes_at_operating_threshold"] == sum(len(p) for _, p in at_op)


@pytest.mark.slow
def test_saved_probabilities_are_the_engines(phantom_report: Path, phantoms: Path, bundles: Path) -> None:
    import pydicom

    from models.inference.engine import InferenceEngine

    rows = _read_csv(phantom_report / "predictions.csv")[:3]
    with InferenceEngine(bundles, device="cpu", detection_score_threshold=0.05, num_threads=2) as engine:
        for r in rows:
            f = engine.analyse(pydicom.dcmread(r["image"]), timeout=120)
            assert f.sop_instance_uid == r["sop_instance_uid"]
            assert f.probability == pytest.approx(float(r["pneumonia_probability"]), abs=1e-4)
            assert len(f.boxes) == len(json.loads(r["pred_boxes"]))


@pytest.mark.slow
def test_split_file_and_max_images(bundles: Path, phantoms: Path, tmp_path: Path) -> None:
    from models.datasets.rsna_layout import read_rsna_labels

    labels = read_rsna_labels(phantoms)
    split = split_patients(labels, seed=2, fractions=(0.5, 0.2, 0.3))
    split_file = write_split(tmp_path / "split.json", split, seed=2)
    out = tmp_path / "rep"
    rc = _run_cli(
        [
            "--data", str(phantoms), "--split", "test", "--split-file", str(split_file), "--bundles", str(bundles),
            "--device", "cpu", "--out", str(out), "--n-boot", "50", "--max-images", "6", "--threads", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    rows = _read_csv(out / "predictions.csv")
    assert [r["patient_id"] for r in rows] == sorted(split["test"])[:6]
    report = json.loads((out / "report.json").read_text())
    assert report["split"]["source"] == "split_file"
    assert (out / "samples.png").read_bytes()[:8] == PNG_SIGNATURE


def test_bundle_split_json_is_used_by_default(bundles: Path, phantoms: Path, tmp_path: Path) -> None:
    """Regression: evaluation used to recompute the split from seed/fractions, which is not the split
    training held out when training saw another patient set (--max-images, several --data folders)."""
    from models.datasets.rsna_layout import read_rsna_labels

    labels = read_rsna_labels(phantoms)
    # a split that no seed of split_patients over this folder reproduces: every other patient, sorted
    ids = sorted(labels)
    split = {"train": ids[0::3], "val": ids[1::3], "test": ids[2::3]}
    root = tmp_path / "bundles"
    shutil.copytree(bundles, root)
    write_split(root / "cxr_classification" / "split.json", split, seed=123)
    out = tmp_path / "rep"
    rc = _run_cli(
        [
            "--data", str(phantoms), "--split", "test", "--bundles", str(root),
            "--device", "cpu", "--out", str(out), "--n-boot", "20", "--max-images", "5", "--threads", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    rows = _read_csv(out / "predictions.csv")
    assert [r["patient_id"] for r in rows] == sorted(split["test"])[:5]
    report = json.loads((out / "report.json").read_text())
    assert report["split"]["source"] == "bundle split.json"


@pytest.mark.slow
@pytest.mark.skipif(not NPZ.is_file(), reason=f"{NPZ} not present")
def test_pneumoniamnist_npz(bundles: Path, tmp_path: Path) -> None:
    out = tmp_path / "npz"
    rc = _run_cli(
        [
            "--npz", str(NPZ), "--npz-split", "test", "--bundles", str(bundles), "--device", "cpu",
            "--out", str(out), "--n-boot", "50", "--max-images", "40", "--threads", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["detection"] is None
    assert report["classification"]["multiclass"] is None
    with np.load(NPZ) as d:
        labels = d["test_labels"].reshape(-1)[:40]
    rows = _read_csv(out / "predictions.csv")
    assert [int(r["target"]) for r in rows] == labels.tolist()
    y = labels.astype(int)
    s = np.array([float(r["pneumonia_probability"]) for r in rows])
    assert report["classification"]["roc_auc"] == pytest.approx(M.roc_auc(y, s), abs=1e-12)
    for key in ("roc", "pr", "calibration", "confusion_0.5", "samples"):
        assert (out / PLOT_FILES[key]).read_bytes()[:8] == PNG_SIGNATURE


# --------------------------------------------------------------------------- pure parts (no engine)


def _pred(pid: str, target: int, p: float, gt=(), boxes=(), klass=None) -> ImagePrediction:
    return ImagePrediction(
        patient_id=pid,
        sop_instance_uid=f"1.2.3.{pid}",
        image=f"/nowhere/{pid}.dcm",
        target=target,
        klass=klass,
        status="analysed",
        rows=100,
        columns=100,
        class_probabilities=(1 - p, 0.0, p),
        pneumonia_probability=p,
        gt_boxes=gt,
        pred_boxes=boxes,
    )


def test_compute_report_uses_operating_threshold_for_rsna_metric() -> None:
    preds = [
        _pred("a", 1, 0.9, gt=((0, 0, 10, 10),), boxes=((0, 0, 10, 10, 0.8), (50, 50, 10, 10, 0.2))),
        _pred("b", 0, 0.2, boxes=((5, 5, 10, 10, 0.25),)),
        _pred("c", 0, 0.1),
        ImagePrediction("d", "1.2.3.d", "/nowhere/d.dcm", 0, None, "not_analysed", reason="lateral view"),
    ]
    r = compute_report(preds, operating_threshold=0.3, n_boot=20)
    assert (r["n_images"], r["n_analysed"], r["n_not_analysed"]) == (4, 3, 1)
    # at 0.3: a = exact match only -> 1; b: its box is below 0.3 -> no truth, no prediction -> skipped; c skipped
    assert r["detection"]["rsna_map"] == pytest.approx(1.0)
    assert r["detection"]["rsna_n_images_scored"] == 1
    r_low = compute_report(preds, operating_threshold=0.1, n_boot=20)
    # at 0.1: a = TP 1, FP 1 -> 1/2 at every IoU threshold; b = FP only -> 0; mean 0.25
    assert r_low["detection"]["rsna_map"] == pytest.approx(0.25)
    assert r["classification"]["roc_auc"] == pytest.approx(1.0)


def test_compute_report_with_one_class_says_why() -> None:
    r = compute_report([_pred("a", 1, 0.9), _pred("b", 1, 0.4)], operating_threshold=None, detection=False)
    assert r["classification"]["available"] is False
    assert "2 positives of 2" in r["classification"]["reason"]
    assert r["detection"] is None


def test_predictions_csv_round_trip_is_exact(tmp_path: Path) -> None:
    preds = [
        _pred(
            "a",
            1,
            0.1 + 0.2,
            gt=((1.5, 2.25, 10, 10),),
            boxes=((0.1, 0.2, 3.3, 4.4, 1 / 3),),
            klass="Lung Opacity",
        ),
        ImagePrediction("b", "", "/x/b.dcm", 0, "Normal", "failed", reason='ImageDecodeError: bad, "quoted"'),
    ]
    path = write_predictions_csv(tmp_path / "p.csv", preds)
    assert read_predictions_csv(path) == preds


def test_select_patients_matches_split_and_limits() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Lab:
        target: int
        klass: str | None

    labels = {f"p{i:03d}": Lab(i % 2, None) for i in range(50)}
    pids, info = select_patients(labels, split="val", seed=3, fractions=(0.6, 0.2, 0.2))
    assert pids == split_patients(labels, seed=3, fractions=(0.6, 0.2, 0.2))["val"]
    assert info["source"] == "split_patients" and info["seed"] == 3
    pids_all, _ = select_patients(labels, split="all", max_images=7)
    assert pids_all == sorted(labels)[:7]
    with pytest.raises(ValueError, match="'val'"):
        select_patients({}, split="val")


def test_training_split_from_metadata(tmp_path: Path) -> None:
    from models.evaluation.evaluate import training_split_from_metadata

    cfg = tmp_path / "cxr_classification" / "configs"
    cfg.mkdir(parents=True)
    assert training_split_from_metadata(tmp_path) == {}  # no metadata at all
    (cfg / "metadata.json").write_text(
        json.dumps({"version": "1", "cxr_node": {"training_data": "text only"}})
    )
    assert training_split_from_metadata(tmp_path) == {}
    training = {"split": {"seed": 7, "fractions": [0.7, 0.15, 0.15]}, "data": {"n_patients": 120}}
    (cfg / "metadata.json").write_text(json.dumps({"version": "1", "cxr_node": {"training": training}}))
    got = training_split_from_metadata(tmp_path)
    assert got["seed"] == 7 and got["fractions"] == (0.7, 0.15, 0.15) and got["n_patients"] == 120
