"""Tests of the synthetic CXR phantoms (models.phantoms.synth) and of ``cxr-node synth``."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.cli import synth as cli_synth
from models.datasets.rsna_layout import read_rsna_labels
from models.findings import RSNA_CLASSES
from models.phantoms.synth import (
    CR_IMAGE_STORAGE,
    DX_IMAGE_STORAGE,
    SC_IMAGE_STORAGE,
    class_for_index,
    dx_phantom_dataset,
    make_phantom,
    patient_id_for,
    phantom_for_index,
    write_dx_phantom,
    write_rsna_dataset,
)

NORMAL, NOT_NORMAL, LUNG_OPACITY = RSNA_CLASSES


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synth")
    return write_rsna_dataset(out, 9, seed=11, size=256)


# --------------------------------------------------------------------------- make_phantom


@pytest.mark.parametrize("kind", RSNA_CLASSES)
def test_phantom_is_a_deterministic_uint8_frontal_image(kind: str) -> None:
    a = make_phantom(np.random.default_rng(5), size=256, kind=kind)
    b = make_phantom(np.random.default_rng(5), size=256, kind=kind)
    c = make_phantom(np.random.default_rng(6), size=256, kind=kind)
    assert a.image.dtype == np.uint8 and a.image.shape == (256, 256)
    assert a.klass == kind and a.view_position in ("PA", "AP")
    np.testing.assert_array_equal(a.image, b.image)
    assert a.boxes == b.boxes
    assert np.mean(np.abs(a.image.astype(int) - c.image.astype(int))) > 2.0
    assert bool(a.boxes) == (kind == LUNG_OPACITY)
    # uses most of the grey range, like a windowed radiograph
    assert int(a.image.max()) - int(a.image.min()) > 150


@pytest.mark.parametrize("seed", range(4))
def test_lung_fields_are_darker_than_the_mediastinum(seed: int) -> None:
    img = make_phantom(np.random.default_rng(seed), size=256, kind=NORMAL).image.astype(float)
    mid_rows = slice(int(0.3 * 256), int(0.5 * 256))
    right_lung = img[mid_rows, int(0.2 * 256):int(0.32 * 256)].mean()  # image left
    left_lung = img[mid_rows, int(0.68 * 256):int(0.8 * 256)].mean()
    mediastinum = img[mid_rows, int(0.47 * 256):int(0.53 * 256)].mean()
    abdomen = img[int(0.88 * 256):, int(0.3 * 256):int(0.7 * 256)].mean()
    assert mediastinum > max(right_lung, left_lung) + 40
    assert abdomen > max(right_lung, left_lung) + 40


def test_heart_is_bigger_in_cardiomegaly_than_in_normal() -> None:
    def dense_width(seed: int, **kw) -> float:
        img = make_phantom(np.random.default_rng(seed), size=256, view_position="PA", **kw).image.astype(float)
        row = img[int(0.6 * 256):int(0.66 * 256)].mean(axis=0)  # a band through the heart
        lung_level = np.percentile(img[int(0.3 * 256):int(0.5 * 256)], 20)
        return float(np.sum(row > lung_level + 0.5 * (row.max() - lung_level)))

    normal = [dense_width(s, kind=NORMAL) for s in range(4)]
    cardio = [dense_width(s, kind=NOT_NORMAL, abnormalities=["cardiomegaly"]) for s in range(4)]
    assert np.median(cardio) > np.median(normal) * 1.15, (cardio, normal)


@pytest.mark.parametrize("abnormality", ["effusion", "nodule", "line"])
def test_each_abnormality_changes_the_image(abnormality: str) -> None:
    base = make_phantom(np.random.default_rng(3), size=256, kind=NOT_NORMAL, abnormalities=["cardiomegaly"])
    other = make_phantom(np.random.default_rng(3), size=256, kind=NOT_NORMAL,
                         abnormalities=["cardiomegaly", abnormality])
    assert other.abnormalities == ("cardiomegaly", abnormality) and other.boxes == ()
    # the abnormality has its own random stream: the images differ only where it was drawn
    diff = other.image.astype(float) - base.image.astype(float)
    changed = diff > 3
    assert diff.min() >= -1 and diff.max() > 20
    assert 0.0002 < changed.mean() < {"effusion": 0.15, "nodule": 0.01, "line": 0.03}[abnormality]


def test_abnormalities_are_validated() -> None:
    with pytest.raises(ValueError, match="'pneumothorax'"):
        make_phantom(np.random.default_rng(0), size=128, kind=NOT_NORMAL, abnormalities=["pneumothorax"])
    with pytest.raises(ValueError, match="'Normal'"):
        make_phantom(np.random.default_rng(0), size=128, kind=NORMAL, abnormalities=["line"])


def test_view_position_can_be_forced_and_is_validated() -> None:
    assert make_phantom(np.random.default_rng(0), size=128, kind=NORMAL, view_position="AP").view_position == "AP"
    with pytest.raises(ValueError, match="'LL'"):
        make_phantom(np.random.default_rng(0), size=128, kind=NORMAL, view_position="LL")


def test_bad_kind_and_size_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="'Pneumonia'"):
        make_phantom(np.random.default_rng(0), size=128, kind="Pneumonia")
    with pytest.raises(ValueError, match="32"):
        make_phantom(np.random.default_rng(0), size=32, kind=NORMAL)


@pytest.mark.parametrize("seed", range(6))
def test_each_box_is_the_tight_extent_of_a_visible_opacity(seed: int) -> None:
    rng_args = dict(size=256, kind=LUNG_OPACITY)
    with_op = make_phantom(np.random.default_rng(seed), **rng_args)
    without = make_phantom(np.random.default_rng(seed), render_opacity=False, **rng_args)
    assert with_op.boxes == without.boxes and 1 <= len(with_op.boxes) <= 4
    diff = with_op.image.astype(float) - without.image.astype(float)
    assert diff.min() >= -1  # an opacity only ever brightens (up to rounding)
    inside_any = np.zeros(diff.shape, dtype=bool)
    for x, y, w, h in with_op.boxes:
        assert 0 <= x and 0 <= y and x + w <= 256 and y + h <= 256
        x0, y0, x1, y1 = int(x), int(y), int(np.ceil(x + w)), int(np.ceil(y + h))
        box = diff[y0:y1, x0:x1]
        inside_any[y0:y1, x0:x1] = True
        # the opacity is clearly visible inside its box ...
        assert box.mean() > 4.0, f"box {(x, y, w, h)} mean difference {box.mean():.2f}"
        # ... and the box is tight: each of its four borders touches the opacity
        edge = 0.1 * box.max()
        for strip in (box[:2], box[-2:], box[:, :2], box[:, -2:]):
            assert strip.max() >= edge
    # almost all of the added density lies inside the boxes
    assert diff[inside_any].sum() > 0.98 * diff[diff > 0].sum()


def test_box_sizes_follow_the_rsna_distribution() -> None:
    widths, heights = [], []
    for seed in range(14):
        for _x, _y, w, h in make_phantom(np.random.default_rng(100 + seed), size=256, kind=LUNG_OPACITY).boxes:
            widths.append(w * 4)  # in pixels at 1024
            heights.append(h * 4)
    assert 120 <= np.median(widths) <= 300, widths
    assert 200 <= np.median(heights) <= 420, heights
    assert min(widths) >= 60 and max(widths) <= 440
    assert min(heights) >= 80 and max(heights) <= 620
    assert np.median(np.array(heights) / np.array(widths)) > 1.1  # taller than wide, as in RSNA


# --------------------------------------------------------------------------- dataset layout


def test_class_sequence_follows_the_fractions_and_depends_on_the_seed() -> None:
    classes = [class_for_index(3, i) for i in range(200)]
    counts = [classes.count(k) for k in RSNA_CLASSES]
    assert abs(counts[0] - 80) <= 3 and abs(counts[1] - 60) <= 3 and abs(counts[2] - 60) <= 3
    assert classes != [class_for_index(4, i) for i in range(200)]
    only_opacity = {class_for_index(3, i, (0.0, 0.0, 1.0)) for i in range(20)}
    assert only_opacity == {LUNG_OPACITY}
    with pytest.raises(ValueError, match=r"\(0.5, 0.5, 0.5\)"):
        class_for_index(3, 0, (0.5, 0.5, 0.5))


def test_patient_ids_are_uuid_like_and_unique() -> None:
    ids = {patient_id_for(1, i) for i in range(500)} | {patient_id_for(2, i) for i in range(500)}
    assert len(ids) == 1000
    pid = patient_id_for(1, 0)
    assert len(pid) == 36 and pid.count("-") == 4 and pid == patient_id_for(1, 0)


def test_dataset_layout_and_csvs(dataset) -> None:
    root = dataset.out_dir
    assert (root / "stage_2_train_labels.csv").read_text().splitlines()[0] == "patientId,x,y,width,height,Target"
    assert (root / "stage_2_detailed_class_info.csv").read_text().splitlines()[0] == "patientId,class"
    files = sorted(p.name for p in (root / "stage_2_train_images").iterdir())
    assert files == sorted(f"{pid}.dcm" for pid in dataset.patient_ids)
    assert sum(dataset.class_counts.values()) == 9 and all(v >= 2 for v in dataset.class_counts.values())

    labels = read_rsna_labels(root)
    assert list(labels) == list(dataset.patient_ids)
    for case in dataset.cases:
        lab = labels[case.patient_id]
        assert lab.klass == case.klass
        assert lab.target == int(case.klass == LUNG_OPACITY)
        if case.boxes:
            np.testing.assert_allclose(lab.boxes, case.boxes, atol=0.051)  # CSV keeps 0.1 px
        else:
            assert lab.boxes == ()
        assert lab.image_path == case.image_path
    # one label row per box (or one row for a negative), one class row per label row
    n_label_rows = len((root / "stage_2_train_labels.csv").read_text().splitlines()) - 1
    n_class_rows = len((root / "stage_2_detailed_class_info.csv").read_text().splitlines()) - 1
    assert n_label_rows == n_class_rows == sum(max(1, len(c.boxes)) for c in dataset.cases)


def test_same_seed_same_bytes_different_seed_different_images(tmp_path: Path) -> None:
    a = write_rsna_dataset(tmp_path / "a", 4, seed=2, size=128)
    b = write_rsna_dataset(tmp_path / "b", 4, seed=2, size=128)
    c = write_rsna_dataset(tmp_path / "c", 4, seed=3, size=128)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert a.patient_ids == b.patient_ids
    assert not set(a.patient_ids) & set(c.patient_ids)
    pa = [pydicom.dcmread(x.image_path).pixel_array for x in a.cases]
    pc = [pydicom.dcmread(x.image_path).pixel_array for x in c.cases]
    assert all(np.mean(np.abs(x.astype(int) - y.astype(int))) > 2 for x, y in zip(pa, pc, strict=True))


def test_start_index_continues_the_same_sequence(tmp_path: Path) -> None:
    whole = write_rsna_dataset(tmp_path / "whole", 5, seed=9, size=96)
    tail = write_rsna_dataset(tmp_path / "tail", 2, seed=9, size=96, start_index=3)
    assert tail.patient_ids == whole.patient_ids[3:]
    for pid in tail.patient_ids:
        name = f"stage_2_train_images/{pid}.dcm"
        assert (tmp_path / "tail" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_dicom_is_like_the_rsna_files_and_decodes_to_the_phantom(dataset) -> None:
    for index, case in enumerate(dataset.cases[:4]):
        ds = pydicom.dcmread(case.image_path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
        assert ds.SOPClassUID == SC_IMAGE_STORAGE == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert (ds.Modality, ds.BodyPartExamined, ds.ConversionType) == ("CR", "CHEST", "WSD")
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (256, 256, 1)
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
        assert ds.PatientID == case.patient_id == str(ds.PatientName)
        assert ds.ViewPosition == case.view_position and ds.SeriesDescription == f"view: {case.view_position}"
        assert ds.PatientSex in ("M", "F") and ds.PatientAge.endswith("Y")
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.572, 0.572])  # 0.143 mm * 1024 / 256
        assert len({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}) == 3
        pixels = ds.pixel_array
        phantom = phantom_for_index(11, index, size=256)
        assert phantom.klass == case.klass and phantom.boxes == case.boxes
        assert pixels.dtype == np.uint8 and pixels.shape == (256, 256)
        assert np.mean(np.abs(pixels.astype(float) - phantom.image.astype(float))) < 2.0
    uids = [pydicom.dcmread(c.image_path, stop_before_pixels=True).SOPInstanceUID for c in dataset.cases]
    assert len(set(uids)) == len(uids)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not on PATH")
def test_dciodvfy_reports_no_errors(dataset) -> None:
    for case in dataset.cases[:3]:
        res = subprocess.run(["dciodvfy", str(case.image_path)], capture_output=True, text=True, timeout=60)
        out = res.stdout + res.stderr
        assert "SCImage" in out, out  # it recognised the IOD
        errors = [line for line in out.splitlines() if line.startswith("Error")]
        assert not errors, "\n".join(errors)


def test_write_rsna_dataset_validates_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="-1"):
        write_rsna_dataset(tmp_path, -1, seed=0, size=64)
    with pytest.raises(ValueError, match=r"\(1, 1, 1\)"):
        write_rsna_dataset(tmp_path, 1, seed=0, size=64, class_fractions=(1, 1, 1))


# --------------------------------------------------------------------------- full-size DX / CR


def test_dx_phantom_monochrome1_is_the_inverse_of_monochrome2(tmp_path: Path) -> None:
    m2 = pydicom.dcmread(write_dx_phantom(tmp_path / "m2.dcm", rows=300, columns=240, bits=12, seed=4))
    m1 = pydicom.dcmread(write_dx_phantom(tmp_path / "m1.dcm", rows=300, columns=240, bits=12, seed=4,
                                          photometric="MONOCHROME1"))
    a2, a1 = m2.pixel_array, m1.pixel_array
    assert a2.dtype == np.uint16 and a2.shape == (300, 240)
    assert (m2.BitsAllocated, m2.BitsStored, m2.HighBit) == (16, 12, 11) and int(a2.max()) <= 4095
    np.testing.assert_array_equal(a1.astype(int), 4095 - a2.astype(int))
    assert (m2.PresentationLUTShape, m1.PresentationLUTShape) == ("IDENTITY", "INVERSE")
    assert m2.SOPClassUID == DX_IMAGE_STORAGE and m2.Modality == "DX"
    assert [float(v) for v in m2.ImagerPixelSpacing] == pytest.approx([437.5 / 300] * 2)
    for ds, arr in ((m2, a2), (m1, a1)):  # the window covers the body, not the whole bit range
        lo = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
        hi = float(ds.WindowCenter) + float(ds.WindowWidth) / 2
        inside = np.mean((arr >= lo) & (arr <= hi))
        assert 0.85 < inside < 1.0 and float(ds.WindowWidth) < 4095
    # lungs darker than the mediastinum after display (MONOCHROME2 values)
    lung = a2[100:150, 40:70].mean()
    mediastinum = a2[100:150, 112:128].mean()
    assert mediastinum > lung + 300


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"])
def test_dx_phantom_lossless_transfer_syntaxes_round_trip(tmp_path: Path, ts: str) -> None:
    ref = dx_phantom_dataset(rows=200, columns=160, bits=16, seed=2)
    path = write_dx_phantom(tmp_path / "c.dcm", rows=200, columns=160, bits=16, seed=2, transfer_syntax=ts)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ts
    np.testing.assert_array_equal(ds.pixel_array, ref.pixel_array)


def test_cr_phantom_and_argument_checks(tmp_path: Path) -> None:
    ds = dx_phantom_dataset(rows=128, columns=128, bits=10, modality="CR")
    assert ds.SOPClassUID == CR_IMAGE_STORAGE and ds.Modality == "CR" and int(ds.pixel_array.max()) <= 1023
    with pytest.raises(ValueError, match="'MR'"):
        dx_phantom_dataset(rows=128, columns=128, modality="MR")
    with pytest.raises(ValueError, match="17"):
        dx_phantom_dataset(rows=128, columns=128, bits=17)
    with pytest.raises(ValueError, match="'RGB'"):
        dx_phantom_dataset(rows=128, columns=128, photometric="RGB")


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not on PATH")
@pytest.mark.parametrize(("modality", "photometric"), [("DX", "MONOCHROME1"), ("DX", "MONOCHROME2"), ("CR", "MONOCHROME2")])
def test_dx_phantom_dciodvfy_reports_no_errors(tmp_path: Path, modality: str, photometric: str) -> None:
    path = write_dx_phantom(tmp_path / "dx.dcm", rows=256, columns=200, bits=14, modality=modality,
                            photometric=photometric)
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert ("DXImageForPresentation" if modality == "DX" else "CRImage") in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


# --------------------------------------------------------------------------- CLI


def test_cli_writes_the_dataset_and_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli_synth.configure(parser)
    args = parser.parse_args(["--out", str(tmp_path / "ds"), "-n", "4", "--seed", "5", "--size", "96",
                              "--class-fractions", "0,0,1"])
    assert cli_synth.main(args) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert "4 images" in out and "Lung Opacity: 4" in out and "Normal: 0" in out and str(tmp_path / "ds") in out
    labels = read_rsna_labels(tmp_path / "ds")
    assert len(labels) == 4 and all(lab.target == 1 for lab in labels.values())


def test_cli_rejects_bad_fractions() -> None:
    parser = argparse.ArgumentParser()
    cli_synth.configure(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "-n", "1", "--seed", "0", "--class-fractions", "0.5,0.5"])
