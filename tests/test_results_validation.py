"""The SR and SC pass dicom3tools' dciodvfy with no Error line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from _results_data import (
    NAMES_BY_CHARSET,
    charset_value,
    dciodvfy,
    dx_source,
    findings_for,
    not_analysed_for,
    rsna_source,
    three_boxes,
)

from dicom_node.results import build_results

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not on PATH"),
]

#: Warnings dciodvfy may print for our objects, all caused by the *source's* values:
#: an empty Study ID (type 2, copied) and a one-component name like "pat0" (a valid PN value).
ACCEPTED_WARNINGS = ("Study ID", "Retired Person Name form")


def _source(kind: str) -> pydicom.Dataset:
    return rsna_source(256) if kind == "rsna" else dx_source(320, 256)


def _check(datasets: list[pydicom.Dataset], tmp_path: Path) -> None:
    for i, ds in enumerate(datasets):
        path = tmp_path / f"{i}_{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        errors, warnings = dciodvfy(path)
        assert errors == [], f"{ds.Modality}: {errors}"
        unexpected = [w for w in warnings if not any(a in w for a in ACCEPTED_WARNINGS)]
        assert unexpected == [], f"{ds.Modality}: {unexpected}"


@pytest.mark.parametrize("n_boxes", [0, 1, 3])
@pytest.mark.parametrize("kind", ["rsna", "dx"])
def test_sr_and_sc_pass_dciodvfy(tmp_path: Path, kind: str, n_boxes: int) -> None:
    src = _source(kind)
    findings = findings_for(src, three_boxes(int(src.Rows), int(src.Columns))[:n_boxes])
    results = build_results(src, findings, threshold=0.5)
    assert [d.Modality for d in results] == ["SR", "OT"]
    _check(results, tmp_path)


@pytest.mark.parametrize("with_models", [True, False])
@pytest.mark.parametrize("kind", ["rsna", "dx"])
def test_not_analysed_sr_passes_dciodvfy(tmp_path: Path, kind: str, with_models: bool) -> None:
    src = _source(kind)
    findings = not_analysed_for(src, "lateral view", **({} if with_models else {"models": ()}))
    results = build_results(src, findings, threshold=0.5)
    assert [d.Modality for d in results] == ["SR"]
    _check(results, tmp_path)


@pytest.mark.parametrize("charset", list(NAMES_BY_CHARSET))
def test_non_ascii_charsets_pass_dciodvfy(tmp_path: Path, charset: str) -> None:
    src = dx_source(128, 128)
    src.SpecificCharacterSet = charset_value(charset)
    src.PatientName = NAMES_BY_CHARSET[charset]
    results = build_results(src, findings_for(src, three_boxes(128, 128)[:1]), threshold=0.5)
    _check(results, tmp_path)
