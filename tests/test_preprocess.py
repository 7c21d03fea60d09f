"""Per-bundle preprocessing (models.imaging.preprocess): the centre-crop bottleneck of the shipped classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.imaging.dicom_image import SourceImage
from models.imaging.preprocess import (
    LETTERBOX,
    CropGeometry,
    Preprocessing,
    downsample_antialiased,
    prepare,
    upsample_bilinear,
)

BOTTLENECK = Preprocessing(method="centre-crop", bottleneck=28, quantise_levels=256, normalise="standardise")


def _image(pixels: np.ndarray, uid: str = "1.2.3") -> SourceImage:
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    return SourceImage(pixels, pixels.shape[0], pixels.shape[1], uid)


def _chest_like(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """A smooth image with fine detail (what a sharp radiograph has and a 28-px one has not)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns] / max(rows, columns)
    base = 0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y)
    return np.clip(base + 0.15 * rng.standard_normal((rows, columns)), 0, 1).astype(np.float32)


def test_config_round_trip_and_validation() -> None:
    assert Preprocessing.from_config(None) == LETTERBOX
    assert Preprocessing.from_config(BOTTLENECK.to_config()) == BOTTLENECK
    for bad, word in (
        ({"method": "stretch"}, "stretch"),
        ({"method": "centre-crop", "normalise": "zscore"}, "zscore"),
        ({"method": "centre-crop", "bottleneck": 2}, "bottleneck"),
        ({"method": "letterbox", "bottleneck": 28}, "centre-crop only"),
        ({"method": "centre-crop", "colour": True}, "colour"),
    ):
        with pytest.raises(ValueError, match=word):
            Preprocessing.from_config(bad)


def test_centre_crop_geometry_is_the_central_square() -> None:
    assert CropGeometry.centre_square(300, 200).region() == (0.0, 50.0, 200.0, 200.0)
    assert CropGeometry.centre_square(200, 301).region() == (50.0, 0.0, 200.0, 200.0)
    arr, geometry = prepare(_image(_chest_like(300, 200)), (64, 64), BOTTLENECK)
    assert arr.shape == (1, 64, 64) and arr.dtype == np.float32
    assert isinstance(geometry, CropGeometry) and geometry.region() == (0.0, 50.0, 200.0, 200.0)
    assert 0.0 <= arr.min() and arr.max() <= 1.0


def test_a_28_px_training_image_passes_the_bottleneck_unchanged() -> None:
    """PneumoniaMNIST images (28 px, 8 bit) only get upsampled: training sees what MedMNIST stored."""
    rng = np.random.default_rng(3)
    img8 = rng.integers(0, 256, (28, 28)).astype(np.uint8)
    arr, _ = prepare(_image(img8 / np.float32(255)), (64, 64), BOTTLENECK)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(img8.astype(np.float32) / 255)[None, None], size=(64, 64), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(arr[0], expected, atol=1e-6)


def test_the_bottleneck_is_quantised_to_8_bits() -> None:
    small = downsample_antialiased(_chest_like(512, 512), 28)
    arr, _ = prepare(_image(_chest_like(512, 512)), (28, 28), BOTTLENECK)
    levels = arr[0] * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert np.abs(arr[0] - small).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("full", [1024, 2048])
def test_full_resolution_and_256_px_give_nearly_the_same_input(full: int) -> None:
    """The bottleneck makes the network input independent of the input resolution (issue 16)."""
    big = _chest_like(full, full, seed=full)
    small = np.asarray(Image.fromarray(big).resize((256, 256), Image.Resampling.LANCZOS), dtype=np.float32)
    a, _ = prepare(_image(big), (64, 64), BOTTLENECK)
    b, _ = prepare(_image(np.clip(small, 0, 1)), (64, 64), BOTTLENECK)
    assert np.abs(a - b).mean() < 2 / 255
    # without the bottleneck the sharp and the small image differ far more
    a_sharp, _ = prepare(_image(big), (64, 64), Preprocessing(method="centre-crop"))
    assert np.abs(a_sharp - a).mean() > 4 * np.abs(a - b).mean()


def test_standardise_removes_brightness_and_contrast() -> None:
    x = torch.from_numpy(_chest_like(64, 64))[None, None]
    y = BOTTLENECK.network_input(x)
    torch.testing.assert_close(BOTTLENECK.network_input(0.5 * x + 0.2), y, atol=1e-5, rtol=1e-5)
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std()) - 1) < 1e-4
    flat = BOTTLENECK.network_input(torch.full((1, 1, 8, 8), 0.3))
    assert float(flat.abs().max()) < 1e-3  # a flat image is not blown up into noise
    assert LETTERBOX.network_input(x) is x


def test_upsample_matches_torch_bilinear() -> None:
    a = np.random.default_rng(1).random((28, 28)).astype(np.float32)
    up = upsample_bilinear(a, 64, 64)
    assert up.shape == (64, 64) and abs(float(up.mean()) - float(a.mean())) < 0.02


def test_inputs_of_one_image_do_not_depend_on_the_order_or_the_cache() -> None:
    """prepare() keeps the last image's Pillow copy per thread (one copy for all the model inputs):
    every input equals the one prepared from a fresh image, and a new image is never served the old one."""
    from models.imaging.preprocess import Preprocessing, prepare

    rng = np.random.default_rng(3)
    specs = [((256, 256), Preprocessing()), ((64, 64), Preprocessing("centre-crop", 28, 256, "standardise")),
             ((96, 128), Preprocessing("centre-crop")), ((64, 64), Preprocessing())]  # fmt: skip
    for shape in [(300, 300), (330, 270), (270, 330)]:
        pixels = rng.random(shape).astype(np.float32)
        image = SourceImage(pixels, shape[0], shape[1], "1.2.3.4")
        for size, spec in specs:
            fresh = SourceImage(pixels.copy(), shape[0], shape[1], "1.2.3.4")
            np.testing.assert_array_equal(prepare(image, size, spec)[0], prepare(fresh, size, spec)[0])
            np.testing.assert_array_equal(prepare(image, size, spec)[0], prepare(fresh, size, spec)[0])
        other = SourceImage(1.0 - pixels, shape[0], shape[1], "1.2.3.5")  # same shape, other pixels
        assert not np.array_equal(prepare(other, (64, 64))[0], prepare(image, (64, 64))[0])
