"""The SR and SC pass dicom3tools' dciodvfy with no Error line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from _results_data import (
    MODELS,
    NAMES_BY_CHARSET,
    charset_value,
    dciodvfy,
    dx_source,
    findings_for,
    not_analysed_for,
    rsna_source,
    three_boxes,
)

from dicom_node.results.build import build_results
from dicom_node.results.sr.build import PRIVATE_SCHEME, build_not_evaluated_sr
from dicom_node.results.sr.codes import NotEvaluatedReason

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not on PATH"),
]

#: Warnings dciodvfy may print for our objects: an empty Study ID (type 2, copied) and a
#: one-component name like "pat0" (a valid PN value), both caused by the *source's* values,
#: and the designator of our private coding scheme, which dciodvfy knows only as "not a
#: standard designator" (it is declared in the Coding Scheme Identification Sequence, checked below).
ACCEPTED_WARNINGS = (
    "Study ID",
    "Retired Person Name form",
    f"Unrecognized defined term <{PRIVATE_SCHEME}> for value 1 of attribute <Coding Scheme Designator>",
)


def _source(kind: str) -> pydicom.Dataset:
    return rsna_source(256) if kind == "rsna" else dx_source(320, 256)


def _used_designators(ds: pydicom.Dataset) -> set[str]:
    """Every Coding Scheme Designator in the code items of ``ds`` (nested), not in its declarations."""
    found: set[str] = set()
    for elem in ds:
        if elem.VR != "SQ" or elem.keyword == "CodingSchemeIdentificationSequence":
            continue
        for item in elem.value:
            if "CodingSchemeDesignator" in item:
                found.add(str(item.CodingSchemeDesignator))
            found |= _used_designators(item)
    return found


def _check(datasets: list[pydicom.Dataset], tmp_path: Path) -> None:
    for i, ds in enumerate(datasets):
        path = tmp_path / f"{i}_{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        errors, warnings = dciodvfy(path)
        assert errors == [], f"{ds.Modality}: {errors}"
        unexpected = [w for w in warnings if not any(a in w for a in ACCEPTED_WARNINGS)]
        assert unexpected == [], f"{ds.Modality}: {unexpected}"
        # PS3.3 C.12.1.1.4: a private designator (the reserved "99" prefix) must be declared;
        # dciodvfy does not check it
        back = pydicom.dcmread(path)
        declared = {str(i.CodingSchemeDesignator) for i in back.get("CodingSchemeIdentificationSequence", [])}
        undeclared = {d for d in _used_designators(back) if d.startswith("99")} - declared
        assert undeclared == set(), f"{ds.Modality}: undeclared coding schemes {undeclared}"


@pytest.mark.parametrize("n_boxes", [0, 1, 3])
@pytest.mark.parametrize("kind", ["rsna", "dx"])
def test_sr_and_sc_pass_dciodvfy(tmp_path: Path, kind: str, n_boxes: int) -> None:
    src = _source(kind)
    findings = findings_for(src, three_boxes(int(src.Rows), int(src.Columns))[:n_boxes])
    results = build_results(src, findings)
    assert [d.Modality for d in results] == ["SR", "OT"]
    assert PRIVATE_SCHEME in _used_designators(results[0])  # the display concepts, per-class probabilities
    _check(results, tmp_path)


@pytest.mark.parametrize("with_models", [True, False])
@pytest.mark.parametrize("kind", ["rsna", "dx"])
def test_not_analysed_sr_passes_dciodvfy(tmp_path: Path, kind: str, with_models: bool) -> None:
    src = _source(kind)
    findings = not_analysed_for(src, "lateral view", **({} if with_models else {"models": ()}))
    results = build_results(src, findings)
    assert [d.Modality for d in results] == ["SR"]
    _check(results, tmp_path)


@pytest.mark.parametrize("charset", list(NAMES_BY_CHARSET))
def test_non_ascii_charsets_pass_dciodvfy(tmp_path: Path, charset: str) -> None:
    src = dx_source(128, 128)
    src.SpecificCharacterSet = charset_value(charset)
    src.PatientName = NAMES_BY_CHARSET[charset]
    results = build_results(src, findings_for(src, three_boxes(128, 128)[:1]))
    _check(results, tmp_path)


@pytest.mark.parametrize("reason", list(NotEvaluatedReason))
def test_not_evaluated_sr_passes_dciodvfy(tmp_path: Path, reason: NotEvaluatedReason) -> None:
    src = dx_source(320, 256)
    sr = build_not_evaluated_sr(src, reason, models=MODELS, attempts=2)
    assert PRIVATE_SCHEME in _used_designators(sr)  # the reason category
    _check([sr], tmp_path)


@pytest.mark.parametrize(
    ("orientation", "kept"),
    [
        (
            ["P", "FL"],
            ["P", "FL"],
        ),  # oblique column direction: valid DICOM, highdicom takes single letters only
        (["RA", "F"], ["RA", "F"]),
        (["X", "F"], []),  # not a direction
        (["L", "FH"], []),  # a direction with its opposite
        (["L"], []),  # one value
    ],
)
def test_results_of_a_source_with_an_unusual_orientation(
    tmp_path: Path, orientation: list[str], kept: list[str]
) -> None:
    """An analysed CXR whose Patient Orientation is oblique or malformed still gets its SR and SC: the
    SC keeps a valid value and leaves a malformed one empty (Type 2), the SR's image library likewise.
    Before, highdicom refused both kinds for the SC, and the image's results were never built."""
    src = dx_source(320, 256)
    src.PatientOrientation = orientation
    results = build_results(src, findings_for(src, three_boxes(320, 256)[:1]))
    assert [str(ds.Modality) for ds in results] == ["SR", "OT"]
    sr, sc = results
    assert list(sc.PatientOrientation) == kept
    assert _orientation_items(sr) == kept  # TID 1603 Patient Orientation Row, Column
    _check(results, tmp_path)


def _orientation_items(ds: pydicom.Dataset) -> list[str]:
    """The values of the SR's Patient Orientation Row and Column content items (DCM 111044, 111043), in order."""
    found: list[str] = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue in ("111044", "111043"):
            found.append(str(item.TextValue))
        found += _orientation_items(item)
    return found
