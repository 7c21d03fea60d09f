"""Tests of the RSNA-layout reader (models.datasets.rsna_layout) on hand-written CSVs in the real RSNA format."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from models.datasets.rsna_layout import PatientLabels, RsnaLayoutError, read_rsna_labels
from models.findings import RSNA_CLASSES

# Rows in the exact format of the challenge's stage_2 CSVs (one row per box, floats, negatives
# with empty coordinates; class info repeated once per label row). Made-up patient ids.
LABELS = """patientId,x,y,width,height,Target
0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0
00313ee0-9eaa-42f4-b0ab-c148ed3241cd,,,,,0
00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1
00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1
00569f44-917d-4c86-a842-81832af98c30,,,,,0
00704310-78a8-4b38-8475-49f4573b2dbb,323.0,577.0,160.0,104.0,1
00704310-78a8-4b38-8475-49f4573b2dbb,695.0,575.0,162.0,137.0,1
"""
CLASSES = """patientId,class
0004cfab-14fd-4e49-80ba-63a80b6bddd6,No Lung Opacity / Not Normal
00313ee0-9eaa-42f4-b0ab-c148ed3241cd,No Lung Opacity / Not Normal
00436515-870c-4b36-a041-de91049b9ab4,Lung Opacity
00436515-870c-4b36-a041-de91049b9ab4,Lung Opacity
00569f44-917d-4c86-a842-81832af98c30,Normal
00704310-78a8-4b38-8475-49f4573b2dbb,Lung Opacity
00704310-78a8-4b38-8475-49f4573b2dbb,Lung Opacity
"""


def _make(root: Path, labels: str = LABELS, classes: str | None = CLASSES, *, images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "stage_2_train_labels.csv").write_text(labels)
    if classes is not None:
        (root / "stage_2_detailed_class_info.csv").write_text(classes)
    if images:
        img_dir = root / "stage_2_train_images"
        img_dir.mkdir(exist_ok=True)
        for line in labels.splitlines()[1:]:
            (img_dir / f"{line.split(',')[0]}.dcm").write_bytes(b"")  # the reader only checks existence
    return root


def test_reads_the_real_rsna_format(tmp_path: Path) -> None:
    labels = read_rsna_labels(_make(tmp_path))
    assert list(labels) == [
        "0004cfab-14fd-4e49-80ba-63a80b6bddd6",
        "00313ee0-9eaa-42f4-b0ab-c148ed3241cd",
        "00436515-870c-4b36-a041-de91049b9ab4",
        "00569f44-917d-4c86-a842-81832af98c30",
        "00704310-78a8-4b38-8475-49f4573b2dbb",
    ]
    pos = labels["00436515-870c-4b36-a041-de91049b9ab4"]
    assert pos.target == 1 and pos.klass == "Lung Opacity" and pos.class_index == 2
    assert pos.boxes == ((264.0, 152.0, 213.0, 379.0), (562.0, 152.0, 256.0, 453.0))
    assert pos.image_path == tmp_path / "stage_2_train_images" / "00436515-870c-4b36-a041-de91049b9ab4.dcm"
    neg = labels["00569f44-917d-4c86-a842-81832af98c30"]
    assert (neg.target, neg.klass, neg.boxes, neg.class_index) == (0, "Normal", (), 0)
    assert labels["0004cfab-14fd-4e49-80ba-63a80b6bddd6"].klass == RSNA_CLASSES[1]
    assert sum(len(p.boxes) for p in labels.values()) == 4


def test_class_info_is_optional(tmp_path: Path) -> None:
    labels = read_rsna_labels(_make(tmp_path, classes=None))
    assert len(labels) == 5 and all(p.klass is None and p.class_index is None for p in labels.values())
    assert [p.target for p in labels.values()] == [0, 0, 1, 0, 1]


def test_unknown_class_is_rejected_with_its_value(tmp_path: Path) -> None:
    bad = CLASSES.replace("00569f44-917d-4c86-a842-81832af98c30,Normal", "00569f44-917d-4c86-a842-81832af98c30,Pneumonia")
    with pytest.raises(RsnaLayoutError, match="'Pneumonia'"):
        read_rsna_labels(_make(tmp_path, classes=bad))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("00569f44-917d-4c86-a842-81832af98c30,,,,,1", "Target 1 row needs"),
        ("00569f44-917d-4c86-a842-81832af98c30,10.0,20.0,30.0,40.0,0", "Target 0 row has a box"),
        ("00569f44-917d-4c86-a842-81832af98c30,10.0,20.0,0.0,40.0,1", "width/height must be > 0"),
        ("00569f44-917d-4c86-a842-81832af98c30,10.0,abc,30.0,40.0,1", "'abc'"),
        ("00569f44-917d-4c86-a842-81832af98c30,,,,,yes", "'yes'"),
    ],
)
def test_inconsistent_or_malformed_label_rows_are_rejected(tmp_path: Path, row: str, message: str) -> None:
    text = LABELS.replace("00569f44-917d-4c86-a842-81832af98c30,,,,,0", row)
    with pytest.raises(RsnaLayoutError, match=message) as info:
        read_rsna_labels(_make(tmp_path, text, classes=None))
    assert "stage_2_train_labels.csv:6" in str(info.value)  # names the file and line


def test_patient_with_mixed_targets_is_rejected(tmp_path: Path) -> None:
    text = LABELS + "00436515-870c-4b36-a041-de91049b9ab4,,,,,0\n"
    with pytest.raises(RsnaLayoutError, match="00436515-870c-4b36-a041-de91049b9ab4 has rows with Target 1 and 0"):
        read_rsna_labels(_make(tmp_path, text, classes=None))


def test_class_disagreeing_with_target_is_rejected(tmp_path: Path) -> None:
    bad = CLASSES.replace("00569f44-917d-4c86-a842-81832af98c30,Normal",
                          "00569f44-917d-4c86-a842-81832af98c30,Lung Opacity")
    with pytest.raises(RsnaLayoutError, match="'Lung Opacity' is inconsistent with Target 0"):
        read_rsna_labels(_make(tmp_path, classes=bad))


def test_class_row_for_an_unknown_patient_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(RsnaLayoutError, match="ffffffff-0000"):
        read_rsna_labels(_make(tmp_path, classes=CLASSES + "ffffffff-0000-4000-8000-000000000000,Normal\n"))


def test_missing_column_is_reported(tmp_path: Path) -> None:
    text = LABELS.replace("patientId,x,y,width,height,Target", "patientId,x,y,w,h,Target")
    with pytest.raises(RsnaLayoutError, match=r"missing column\(s\) \['width', 'height'\]"):
        read_rsna_labels(_make(tmp_path, text, classes=None))


def test_missing_image_raises_naming_the_patient(tmp_path: Path) -> None:
    root = _make(tmp_path)
    (root / "stage_2_train_images" / "00704310-78a8-4b38-8475-49f4573b2dbb.dcm").unlink()
    with pytest.raises(FileNotFoundError, match="00704310-78a8-4b38-8475-49f4573b2dbb"):
        read_rsna_labels(root)


def test_missing_image_can_be_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _make(tmp_path)
    (root / "stage_2_train_images" / "00704310-78a8-4b38-8475-49f4573b2dbb.dcm").unlink()
    with caplog.at_level(logging.WARNING, logger="models.datasets.rsna_layout"):
        labels = read_rsna_labels(root, missing="skip")
    assert len(labels) == 4 and "00704310-78a8-4b38-8475-49f4573b2dbb" not in labels
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].n_skipped == 1 and warnings[0].n_read == 4
    # patient IDs are never logged (not in the message, not in a structured field)
    assert all("00704310" not in str(vars(r)) for r in caplog.records)


def test_missing_labels_csv_and_bad_missing_mode(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="stage_2_train_labels.csv"):
        read_rsna_labels(tmp_path)
    with pytest.raises(ValueError, match="'ignore'"):
        read_rsna_labels(_make(tmp_path), missing="ignore")  # type: ignore[arg-type]


def test_patient_labels_validates_itself(tmp_path: Path) -> None:
    ok = PatientLabels("p1", 1, "Lung Opacity", ((1, 2, 3, 4),), tmp_path / "p1.dcm")
    assert ok.boxes == ((1.0, 2.0, 3.0, 4.0),)
    with pytest.raises(ValueError, match="Target 1 is inconsistent with 0 box"):
        PatientLabels("p1", 1, None, (), tmp_path / "p1.dcm")
    with pytest.raises(ValueError, match="'Opacity'"):
        PatientLabels("p1", 0, "Opacity", (), tmp_path / "p1.dcm")
    with pytest.raises(ValueError, match="2"):
        PatientLabels("p1", 2, None, (), tmp_path / "p1.dcm")
