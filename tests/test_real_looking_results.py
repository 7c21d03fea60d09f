"""Issue 16's "done when": the SR and SC of a positive real-looking CXR carry gated boxes and the heatmap,
and a negative one carries neither - with the shipped bundles, through the real engine.

Real-looking CXRs: PneumoniaMNIST test images (real paediatric radiographs, read from ../shared, never
used in training or selection) upsampled to 1024 px and wrapped as CR DICOMs, as the demo pushes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_node.results.build import build_results
from dicom_node.results.sr.read import read_sr
from models.bundle_run import BUNDLES_DIR
from models.evaluation.holdout import DEFAULT_NPZ, pneumoniamnist_dicom

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DEFAULT_NPZ.is_file(), reason="../shared/data/pneumoniamnist.npz not present"),
]

N_EACH = 12  # test images of each label looked at (bounded)


def _real_looking(image: np.ndarray, index: int) -> pydicom.Dataset:
    ds = pneumoniamnist_dicom(image, index, "test")
    big = np.asarray(Image.fromarray(image).resize((1024, 1024), Image.Resampling.BICUBIC), np.uint8)
    ds.Rows, ds.Columns = big.shape
    ds.PixelData = big.tobytes()
    ds.Modality, ds.ViewPosition = "CR", "PA"
    return ds


@pytest.fixture(scope="module")
def analysed() -> list[tuple[int, pydicom.Dataset, object, object]]:
    """(label, source, findings, decoded image) of N_EACH pneumonia and N_EACH normal test CXRs."""
    from models.inference.engine import InferenceEngine, source_image_of

    with np.load(DEFAULT_NPZ) as z:
        images, labels = z["test_images"], z["test_labels"].reshape(-1)
    chosen = [i for lab in (1, 0) for i in np.flatnonzero(labels == lab)[:N_EACH]]
    out = []
    with InferenceEngine(BUNDLES_DIR, device="cpu", num_threads=2) as engine:
        for i in chosen:
            ds = _real_looking(images[i], int(i))
            future = engine.submit(ds, keep_image=True)
            out.append((int(labels[i]), ds, future.result(timeout=300), source_image_of(future)))
    return out


def test_the_classifier_separates_real_looking_cxrs(analysed: list) -> None:
    positives = [f.positive for lab, _, f, _ in analysed if lab == 1]
    negatives = [f.positive for lab, _, f, _ in analysed if lab == 0]
    assert sum(positives) >= 0.75 * N_EACH, positives  # sensitivity on this sample
    assert sum(negatives) <= 0.5 * N_EACH, negatives  # most normals stay negative


def test_a_positive_real_looking_cxr_gets_gated_boxes_and_the_heatmap(analysed: list, tmp_path: Path) -> None:
    with_boxes = [(ds, f, im) for lab, ds, f, im in analysed if lab == 1 and f.positive and f.boxes]
    assert with_boxes, "no pneumonia CXR came back positive with a box"
    ds, findings, image = with_boxes[0]
    assert findings.heatmap is not None
    sr, sc = build_results(ds, findings, image=image)
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    read = read_sr(sr_path)
    assert read.decision == "Present" and read.finding == "Pneumonia"
    assert read.probability == pytest.approx(findings.probability, abs=1e-6)
    assert len(read.boxes) == len(findings.boxes)
    for got, box in zip(sorted(read.boxes, key=lambda b: -b.probability), findings.boxes, strict=True):
        np.testing.assert_allclose(got.polyline, np.asarray(box.polyline()), atol=1e-3)
    # the SC: the heatmap's colours are over the image (not only the boxes' amber)
    rgb = sc.pixel_array.astype(int)
    colourful = (np.abs(rgb[..., 0] - rgb[..., 2]) > 60).sum()
    assert colourful > 0.01 * rgb.shape[0] * rgb.shape[1]


def test_negative_cxrs_carry_no_boxes_and_no_heatmap(analysed: list) -> None:
    negatives = [f for _, _, f, _ in analysed if not f.positive]
    assert negatives, "every image came back positive"
    for f in negatives:
        assert f.boxes == () and f.heatmap is None
