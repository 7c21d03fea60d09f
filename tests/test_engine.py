"""Tests of models.inference.engine.InferenceEngine with the real bundles (whatever weights monai_bundles/ ships)."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import ExplicitVRLittleEndian

from models.errors import ImageDecodeError
from models.findings import Findings
from models.imaging.dicom_image import SourceImage, load_source_image
from models.imaging.geometry import ResizeGeometry
from models.inference.engine import (
    InferenceEngine,
    boxes_to_source,
    monai_box_to_xyxy,
    resolve_device,
    xyxy_to_monai_box,
)
from models.phantoms.synth import write_rsna_dataset

REPO = Path(__file__).resolve().parent.parent
BUNDLES = Path(os.environ.get("CXR_NODE_BUNDLES_DIR") or REPO / "monai_bundles")
CLS, DET = "cxr_classification", "cxr_opacity_detection"

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("rsna")
    summary = write_rsna_dataset(out, 12, seed=7, size=256)
    return [c.image_path for c in summary.cases]


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    eng = InferenceEngine(BUNDLES, device="cpu", max_batch_size=8, max_wait_ms=200.0, decode_workers=2)
    yield eng
    eng.close()


def _read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


def _non_square(path: Path, rows: int = 1100, cols: int = 900) -> pydicom.Dataset:
    """The phantom padded (black) / cropped to rows x cols, uncompressed, anisotropic spacing."""
    ds = pydicom.dcmread(path)
    src = ds.pixel_array
    canvas = np.zeros((rows, cols), dtype=src.dtype)
    h, w = min(rows, src.shape[0]), min(cols, src.shape[1])
    top, left = (rows - h) // 2, (cols - w) // 2
    canvas[top : top + h, left : left + w] = src[:h, :w]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = canvas.tobytes()
    ds.PixelSpacing = [0.2, 0.3]  # row spacing, column spacing
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    return ds


def _check_findings(f: Findings, rows: int, cols: int) -> None:
    assert f.analysed and f.not_analysed_reason is None
    assert (f.rows, f.columns) == (rows, cols)
    config = json.loads((BUNDLES / CLS / "configs" / "inference.json").read_text())
    assert tuple(f.class_probabilities) == tuple(config["class_names"])
    assert math.isclose(sum(f.class_probabilities.values()), 1.0, abs_tol=1e-4)
    assert f.probability == f.class_probabilities[config["positive_class"]]
    assert f.finding is not None and f.finding.value == config["finding"]["value"]
    assert f.positive == (f.probability >= f.threshold)
    if f.box_gating == "positive-only" and not f.positive:
        assert f.boxes == ()  # one decision: no boxes on a negative image
    if f.heatmap is not None:
        assert f.positive and f.heatmap.values.min() >= 0.0 and f.heatmap.values.max() <= 1.0
    assert [m.name for m in f.models] == [CLS, DET]
    for key in ("decode", "queue", "classify", "detect", "total"):
        assert f.timing_ms[key] >= 0.0, key
    assert f.timing_ms["total"] >= f.timing_ms["decode"]
    for b in f.boxes:
        assert 0.0 <= b.x < b.x2 <= cols + 1e-6 and 0.0 <= b.y < b.y2 <= rows + 1e-6, b
    json.dumps(f.to_json())


def test_models_and_device(engine: InferenceEngine) -> None:
    assert engine.ready
    assert engine.device == torch.device("cpu")
    for info, name in zip(engine.models, (CLS, DET), strict=True):
        meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
        assert (info.name, info.version) == (name, meta["version"])


def test_phantoms_give_well_formed_findings(engine: InferenceEngine, phantom_files: list[Path]) -> None:
    results = engine.analyse_many([_read(p) for p in phantom_files[:4]])
    assert len(results) == 4
    for path, f in zip(phantom_files[:4], results, strict=True):
        ds = _read(path)
        assert f.sop_instance_uid == ds.SOPInstanceUID
        _check_findings(f, ds.Rows, ds.Columns)


def test_same_image_same_result_alone_or_batched(engine: InferenceEngine, phantom_files: list[Path]) -> None:
    alone = engine.analyse(_read(phantom_files[0]))
    batched = engine.analyse_many([_read(p) for p in phantom_files[:6]])[0]
    assert list(alone.class_probabilities) == list(batched.class_probabilities)
    for k in alone.class_probabilities:
        assert alone.class_probabilities[k] == pytest.approx(batched.class_probabilities[k], abs=1e-4)


def test_non_square_image_boxes_in_source_pixels(engine: InferenceEngine, phantom_files: list[Path]) -> None:
    ds = _non_square(phantom_files[1])
    f = engine.analyse(ds)
    _check_findings(f, 1100, 900)


def test_concurrent_submits_are_batched(engine: InferenceEngine, phantom_files: list[Path]) -> None:
    before = engine.stats()
    datasets = [_read(p) for p in phantom_files]
    futures: list[Future[Findings] | None] = [None] * len(datasets)
    barrier = threading.Barrier(len(datasets))

    def worker(i: int) -> None:
        barrier.wait()
        futures[i] = engine.submit(datasets[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(datasets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    results = [f.result(timeout=120) for f in futures if f is not None]
    assert len(results) == 12
    assert [r.sop_instance_uid for r in results] == [d.SOPInstanceUID for d in datasets]
    for ds, r in zip(datasets, results, strict=True):
        _check_findings(r, ds.Rows, ds.Columns)
    after = engine.stats()
    assert after["analysed"] - before["analysed"] == 12
    new_batches = {
        size: n - before["batch_sizes"].get(size, 0)
        for size, n in after["batch_sizes"].items()
        if n > before["batch_sizes"].get(size, 0)
    }
    assert sum(size * n for size, n in new_batches.items()) == 12
    assert max(new_batches) > 1, new_batches
    assert max(new_batches) <= 8


def test_lateral_is_not_analysed_and_skips_the_models(
    engine: InferenceEngine, phantom_files: list[Path]
) -> None:
    ds = _read(phantom_files[2])
    ds.ViewPosition = "LL"
    batches_before = engine.stats()["batches"]
    f = engine.analyse(ds)
    assert not f.analysed
    assert f.not_analysed_reason and "lateral" in f.not_analysed_reason.lower()
    assert f.probability is None and not f.class_probabilities and not f.boxes
    assert f.finding == engine.finding  # what was not evaluated: the "not evaluated" SR names it
    assert "classify" not in f.timing_ms and "detect" not in f.timing_ms
    assert engine.stats()["batches"] == batches_before
    assert engine.stats()["not_analysed"] >= 1


def test_corrupt_pixel_data_fails_only_that_future(
    engine: InferenceEngine, phantom_files: list[Path]
) -> None:
    bad = _non_square(phantom_files[3], rows=300, cols=200)
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 3]  # truncated
    errors_before = engine.stats()["decode_errors"]
    with pytest.raises(ImageDecodeError) as ei:
        engine.analyse(bad)
    assert bad.SOPInstanceUID in str(ei.value)
    assert engine.stats()["decode_errors"] == errors_before + 1
    assert engine.ready
    good = _read(phantom_files[3])
    _check_findings(engine.analyse(good), good.Rows, good.Columns)


@pytest.mark.filterwarnings("ignore:.*is NaN or Inf:UserWarning")
def test_poisoned_item_in_a_batch_fails_alone(engine: InferenceEngine, phantom_files: list[Path]) -> None:
    """A NaN image makes the models output NaN; only its future fails, its batch-mates succeed."""
    images = [load_source_image(_read(p)) for p in phantom_files[:4]]
    px = images[0].pixels.copy()
    px[:, :] = np.nan
    poisoned = SourceImage(px, images[0].rows, images[0].columns, "1.2.3.999.1", None, None)
    before = engine.stats()
    futures = [engine.submit_array(img) for img in images[1:3]]
    futures.insert(1, engine.submit_array(poisoned))
    futures.append(engine.submit_array(images[3]))
    with pytest.raises(Exception, match="1.2.3.999.1"):
        futures[1].result(timeout=120)
    for i in (0, 2, 3):
        _check_findings(futures[i].result(timeout=120), 256, 256)
    after = engine.stats()
    failed = (after["batch_errors"] + after["decode_errors"]) - (
        before["batch_errors"] + before["decode_errors"]
    )
    assert failed == 1
    assert engine.ready
    _check_findings(engine.analyse(_read(phantom_files[5])), 256, 256)


def test_monai_box_order_matches_the_detector_anchors(engine: InferenceEngine) -> None:
    """MONAI boxes follow the tensor's spatial axes ([row1, col1, row2, col2] for B×C×H×W)."""
    detector = engine.bundles[1].detector
    assert detector is not None
    img = torch.zeros(1, 1, 64, 192)  # H=64, W=192
    with torch.inference_mode():
        feature_maps = detector.network(img)[detector.cls_key]
        anchors = detector.anchor_generator(img, feature_maps)[0].numpy()
    xyxy = np.array([monai_box_to_xyxy(a) for a in anchors])
    cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
    assert cx.max() > 150 and cy.max() < 64, (cx.max(), cy.max())
    assert xyxy_to_monai_box(*monai_box_to_xyxy([1, 2, 3, 4])) == (1, 2, 3, 4)


def test_boxes_to_source_undoes_the_letterbox() -> None:
    """1100 rows × 900 columns letterboxed into 256×256: the content spans columns
    [pad_left, pad_left + resized_width) of the model input; boxes map back exactly."""
    geom = ResizeGeometry.letterbox(
        1100, 900, (256, 256), pixel_spacing_mm=(0.2, 0.3), spacing_source="PixelSpacing"
    )
    assert geom.pad_left > 0 and geom.pad_top == 0
    left, right = geom.pad_left, geom.pad_left + geom.resized_width
    model_boxes = np.array(
        [
            [left, 0.0, right, 256.0],  # the whole image content
            [0.0, 0.0, 256.0, 256.0],  # includes the black pads: clipped to the image
            [0.0, 10.0, left, 20.0],  # entirely in the left pad: dropped
            [left + 10.0, 64.0, left + 30.0, 128.0],  # a box inside
            [left, 0.0, right, 256.0],  # below the threshold: dropped
        ]
    )
    scores = np.array([0.9, 0.8, 0.95, 0.7, 0.1])
    boxes = boxes_to_source(model_boxes, scores, geom, box_format="xyxy", score_threshold=0.5)
    assert [b.score for b in boxes] == pytest.approx([0.9, 0.8, 0.7])
    full, clipped, inner = boxes
    for b in (full, clipped):
        assert (b.x, b.y, b.width, b.height) == pytest.approx((0.0, 0.0, 900.0, 1100.0))
    sx, sy = 900 / geom.resized_width, 1100 / geom.resized_height
    assert (inner.x, inner.y, inner.width, inner.height) == pytest.approx(
        (10 * sx, 64 * sy, 20 * sx, 64 * sy)
    )
    assert inner.mm is not None
    assert (inner.mm.x, inner.mm.y, inner.mm.width, inner.mm.height) == pytest.approx(
        (inner.x * 0.3, inner.y * 0.2, inner.width * 0.3, inner.height * 0.2)
    )
    # the same box given in MONAI order ([row1, col1, row2, col2]) maps to the same place
    monai = boxes_to_source(
        np.array([xyxy_to_monai_box(*model_boxes[3])]),
        scores[3:4],
        geom,
        box_format="monai",
        score_threshold=0.5,
    )
    assert (monai[0].x, monai[0].y, monai[0].width, monai[0].height) == pytest.approx(
        (inner.x, inner.y, inner.width, inner.height)
    )
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        boxes_to_source(model_boxes[:2], scores[:1], geom, box_format="xyxy", score_threshold=0.5)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        InferenceEngine(BUNDLES, max_batch_size=0)
    with pytest.raises(ValueError, match="decode_workers"):
        InferenceEngine(BUNDLES, decode_workers=0)


@pytest.fixture(scope="module")
def forced_box_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped bundles, with the detector's box selector keeping every box (score_thresh 0)."""
    root = tmp_path_factory.mktemp("bundles")
    shutil.copytree(BUNDLES / CLS, root / CLS)
    shutil.copytree(BUNDLES / DET, root / DET)
    cfg_file = root / DET / "configs" / "inference.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["box_selector"]["score_thresh"] = 0.0
    cfg["box_selector"]["detections_per_img"] = 5
    cfg_file.write_text(json.dumps(cfg))
    return root


def test_boxes_map_to_source_pixels_and_mm(forced_box_bundles: Path, phantom_files: list[Path]) -> None:
    """With every box reported, boxes of a 1100×900 image lie inside it; mm uses (row, column) spacing."""
    eng = InferenceEngine(
        forced_box_bundles, device="cpu", detection_score_threshold=0.0, box_gating="all", warmup=True
    )
    try:
        assert eng.detection_score_threshold == 0.0
        ds = _non_square(phantom_files[4])
        f = eng.analyse(ds)
        _check_findings(f, 1100, 900)
        assert len(f.boxes) > 0
        scores = [b.score for b in f.boxes]
        assert scores == sorted(scores, reverse=True)
        for b in f.boxes:
            assert b.mm is not None and b.mm.spacing_source == "PixelSpacing"
            assert b.mm.x == pytest.approx(b.x * 0.3) and b.mm.width == pytest.approx(b.width * 0.3)
            assert b.mm.y == pytest.approx(b.y * 0.2) and b.mm.height == pytest.approx(b.height * 0.2)
    finally:
        eng.close()
    # close() is idempotent and the engine refuses new work afterwards
    eng.close()
    assert not eng.ready
    with pytest.raises(RuntimeError, match="closed"):
        eng.submit(ds)


def test_context_manager_drains_pending_work(phantom_files: list[Path]) -> None:
    with InferenceEngine(BUNDLES, device="cpu", max_batch_size=4, max_wait_ms=5.0) as eng:
        futures = [eng.submit(_read(p)) for p in phantom_files[:5]]
        # close() from a done-callback (an engine thread) must not deadlock
        futures[0].add_done_callback(lambda _f: eng.close())
    assert not eng.ready
    assert all(f.done() for f in futures)
    assert [f.result().sop_instance_uid for f in futures] == [
        _read(p).SOPInstanceUID for p in phantom_files[:5]
    ]


class _Panic(BaseException):
    """Stands in for pyo3's PanicException (a Rust decoder panic), which is not an Exception."""


def test_decoder_panic_fails_the_future_instead_of_hanging(phantom_files: list[Path]) -> None:
    """Regression: a BaseException from the decoder escaped the decode task and left the future
    unresolved for ever (the node's job stayed in flight)."""
    import pydicom

    eng = InferenceEngine(BUNDLES, device="cpu", max_batch_size=2, max_wait_ms=10.0, decode_workers=1)
    try:
        def panicking_loader(ds, **kw):
            raise _Panic("called `Result::unwrap()` on an `Err` value")

        eng._load_source_image = panicking_loader
        ds = pydicom.dcmread(phantom_files[0])
        fut = eng.submit(ds)
        with pytest.raises(ImageDecodeError, match=str(ds.SOPInstanceUID)):
            fut.result(timeout=30)
        # the engine keeps working for the next image
        eng._load_source_image = __import__("models.imaging.dicom_image", fromlist=["x"]).load_source_image
        assert eng.submit(ds).result(timeout=60).analysed
    finally:
        eng.close()


@pytest.mark.parametrize("gating", ["positive-only", "all"])
def test_one_decision_boxes_follow_the_image_level_result(
    forced_box_bundles: Path, phantom_files: list[Path], gating: str
) -> None:
    """A negative image never carries boxes under "positive-only" (the SR cannot say "Absent" next to
    an opacity box); a positive one carries the detector's boxes and a heatmap."""
    ds = _read(phantom_files[1])
    seen = {}
    for name, threshold in (("negative", 0.999999), ("positive", 1e-6)):
        eng = InferenceEngine(forced_box_bundles, device="cpu", detection_score_threshold=0.0,
                              decision_threshold=threshold, box_gating=gating)
        try:
            f = eng.analyse(ds)
        finally:
            eng.close()
        assert f.threshold == threshold and f.box_gating == gating and f.detection_threshold == 0.0
        seen[name] = f
    neg, pos = seen["negative"], seen["positive"]
    assert neg.positive is False and pos.positive is True
    assert len(pos.boxes) > 0 and pos.heatmap is not None
    assert neg.heatmap is None
    if gating == "positive-only":
        assert neg.boxes == ()
    else:
        assert len(neg.boxes) == len(pos.boxes)


def test_heatmap_covers_what_the_classifier_saw(forced_box_bundles: Path, phantom_files: list[Path]) -> None:
    from models.imaging.preprocess import CropGeometry

    eng = InferenceEngine(forced_box_bundles, device="cpu", decision_threshold=1e-6)
    try:
        ds = _non_square(phantom_files[4])  # 1100 rows x 900 columns
        f = eng.analyse(ds)
        cls = eng.bundles[0]
    finally:
        eng.close()
    assert f.heatmap is not None
    region = (f.heatmap.x, f.heatmap.y, f.heatmap.width, f.heatmap.height)
    if cls.preprocessing.method == "centre-crop":
        assert region == CropGeometry.centre_square(1100, 900).region()  # the central 900 x 900 square
    else:  # letterbox: the whole model input, padding included, in source pixels
        assert region[2] >= 900 and region[3] >= 1100
    assert f.heatmap.values.max() == pytest.approx(1.0) or f.heatmap.values.max() == 0.0


def test_heatmaps_can_be_switched_off(forced_box_bundles: Path, phantom_files: list[Path]) -> None:
    eng = InferenceEngine(forced_box_bundles, device="cpu", decision_threshold=1e-6, heatmaps=False)
    try:
        f = eng.analyse(_read(phantom_files[0]))
    finally:
        eng.close()
    assert f.positive and f.heatmap is None


def test_engine_settings_are_validated(forced_box_bundles: Path) -> None:
    with pytest.raises(ValueError, match="1.5"):
        InferenceEngine(forced_box_bundles, device="cpu", decision_threshold=1.5)
    with pytest.raises(ValueError, match="'some'"):
        InferenceEngine(forced_box_bundles, device="cpu", box_gating="some")
