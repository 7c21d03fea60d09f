"""Tests of ``cxr-node infer`` (dicom_node.cli.infer) on synthetic phantoms, run as a real subprocess."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.cli import infer as cli_infer
from models.phantoms.synth import write_rsna_dataset

REPO = Path(__file__).resolve().parent.parent
BUNDLES = Path(os.environ.get("CXR_NODE_BUNDLES_DIR") or REPO / "monai_bundles")
#: the class whose probability is the finding's, from the shipped classifier's config
POSITIVE_CLASS = json.loads((BUNDLES / "cxr_classification" / "configs" / "inference.json").read_text())["positive_class"]


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], str]:
    """4 phantoms in a nested folder, a non-DICOM file, and one DICOM whose pixel data is truncated."""
    root = tmp_path_factory.mktemp("infer")
    summary = write_rsna_dataset(root / "rsna", 4, seed=3, size=256)
    (root / "rsna" / "notes.txt").write_text("not a DICOM file\n")
    bad = pydicom.dcmread(summary.cases[0].image_path)
    arr = bad.pixel_array
    bad.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    bad.PixelData = np.ascontiguousarray(arr).tobytes()[:1000]
    bad.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.424242"
    bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
    bad.save_as(root / "rsna" / "corrupt.dcm")
    uids = [pydicom.dcmread(c.image_path).SOPInstanceUID for c in summary.cases]
    return root, uids, bad.SOPInstanceUID


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["CXR_NODE_BUNDLES_DIR"] = str(BUNDLES)
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "infer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def test_infer_dir_json_one_line_per_image(dicom_dir: tuple[Path, list[str], str], tmp_path: Path) -> None:
    root, uids, bad_uid = dicom_dir
    out = tmp_path / "findings"
    proc = _run(str(root), "--json", "--device", "cpu", "--batch-size", "4", "--out", str(out))
    # the corrupt file makes the exit code non-zero, but every other image is still reported
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]
    assert len(records) == 4
    assert sorted(r["sop_instance_uid"] for r in records) == sorted(uids)
    for r in records:
        assert Path(r["file"]).is_file() and r["file"].endswith(".dcm")
        assert r["analysed"] is True
        assert abs(sum(r["class_probabilities"].values()) - 1.0) < 1e-3
        assert r["probability"] == r["class_probabilities"][POSITIVE_CLASS]
        assert r["positive"] == (r["probability"] >= r["threshold"])
        if not r["positive"]:
            assert r["boxes"] == []  # the node's rule: boxes only on positive images
        assert [m["name"] for m in r["models"]] == ["cxr_classification", "cxr_opacity_detection"]
        written = json.loads((out / f"{r['sop_instance_uid']}.json").read_text())
        assert written == r
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{u}.json" for u in uids)
    # the error line names the file and its SOP Instance UID
    err_lines = [ln for ln in proc.stderr.splitlines() if bad_uid in ln]
    assert len(err_lines) == 1, proc.stderr
    err = json.loads(err_lines[0])
    assert err["file"].endswith("corrupt.dcm") and err["sop_instance_uid"] == bad_uid and err["error"]
    assert "notes.txt" not in proc.stdout + proc.stderr


def test_infer_readable_lines_in_process(
    dicom_dir: tuple[Path, list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, uids, bad_uid = dicom_dir
    good = sorted((root / "rsna" / "stage_2_train_images").glob("*.dcm"))
    parser = argparse.ArgumentParser()
    cli_infer.configure(parser)
    args = parser.parse_args(
        [
            *map(str, good[:2]),
            str(root / "rsna" / "corrupt.dcm"),
            "--device",
            "cpu",
            "--bundles",
            str(BUNDLES),
        ]
    )
    rc = cli_infer.main(args)
    captured = capsys.readouterr()
    assert rc == 1
    out_lines = captured.out.splitlines()
    assert len(out_lines) == 2
    for path, line in zip(good[:2], out_lines, strict=True):
        assert re.match(rf"{re.escape(str(path))}: \w[\w ]* \d\.\d{{3}} \((positive|negative) at \d\.\d{{3}}\) \| ", line), line
        assert "box(es)" in line
    assert f"corrupt.dcm (SOP Instance UID {bad_uid})" in captured.err


def test_infer_missing_path_is_an_error(tmp_path: Path) -> None:
    proc = _run(str(tmp_path / "nope.dcm"), "--device", "cpu")
    assert proc.returncode == 1
    assert "nope.dcm" in proc.stderr and "no such file" in proc.stderr


def test_iter_dicom_files_skips_non_dicom(dicom_dir: tuple[Path, list[str], str]) -> None:
    root, uids, _ = dicom_dir
    found = [p for p, err in cli_infer.iter_dicom_files([root]) if err is None]
    assert len(found) == 5  # 4 phantoms + corrupt.dcm (readable header), not notes.txt
    assert all(p.suffix == ".dcm" for p in found)
    assert found == sorted(found)


def test_infer_with_missing_bundles_is_a_clear_error(
    dicom_dir: tuple[Path, list[str], str], tmp_path: Path
) -> None:
    root, _, _ = dicom_dir
    proc = _run(str(root), "--device", "cpu", "--bundles", str(tmp_path / "no_bundles"))
    assert proc.returncode == 2
    assert "cannot start the inference engine" in proc.stderr and "no_bundles" in proc.stderr
    assert "Traceback" not in proc.stderr
