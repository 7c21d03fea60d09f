"""The SR document made from the per-process template (dicom_node.results.template) equals the one
highdicom's constructor builds for the same source and content, element by element."""

from __future__ import annotations

import copy

import pydicom
import pytest
from _results_data import (
    MODELS,
    NAMES_BY_CHARSET,
    charset_value,
    dx_source,
    findings_for,
    not_analysed_for,
    rsna_source,
    three_boxes,
)
from pydicom.valuerep import DA, TM

from dicom_node.results.sr import document
from dicom_node.results.sr.build import build_not_evaluated_sr, build_sr
from dicom_node.results.sr.codes import NotEvaluatedReason
from dicom_node.storage.spool import dataset_bytes
from models.findings import ModelInfo

#: what highdicom stamps with the time of the call: set equal in both before comparing
_STAMPED = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _sources() -> list[pydicom.Dataset]:
    bare = dx_source(300, 200, seed=5, monochrome1=False)
    for keyword in ("PatientName", "PatientSex", "PatientBirthDate", "AccessionNumber", "StudyID",
                    "ReferringPhysicianName", "PatientAge", "StudyDate", "StudyTime"):  # fmt: skip
        if keyword in bare:
            delattr(bare, keyword)
    out = [rsna_source(128), dx_source(320, 256), bare]
    for i, (charset, name) in enumerate(NAMES_BY_CHARSET.items()):
        src = rsna_source(96, seed=20 + i)
        src.SpecificCharacterSet = charset_value(charset)
        src.PatientName = name
        out.append(src)
    return out


def _builds(src: pydicom.Dataset) -> list:
    boxes = three_boxes(int(src.Rows), int(src.Columns))
    other_models = (ModelInfo("cxr_classification", "2.0.0", "0" * 64), MODELS[1])
    return [
        lambda: build_sr(src, findings_for(src, ())),
        lambda: build_sr(src, findings_for(src, boxes, two_class=True)),
        lambda: build_sr(src, findings_for(src, boxes[:1], p=0.2, threshold=0.3, box_gating="all", with_mm=False)),
        lambda: build_sr(src, findings_for(src, boxes[:2], models=other_models)),
        lambda: build_sr(src, not_analysed_for(src)),
        lambda: build_not_evaluated_sr(src, NotEvaluatedReason.ANALYSIS_FAILED, models=MODELS, attempts=3),
        lambda: build_not_evaluated_sr(src, NotEvaluatedReason.NOT_CHEST, models=(), attempts=1),
    ]


def _normalised(sr: pydicom.Dataset) -> bytes:
    sr = copy.deepcopy(sr)
    for keyword in _STAMPED:
        if keyword in sr:
            setattr(sr, keyword, DA("20260101") if keyword.endswith("Date") else TM("120000"))
    for item in sr.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = "20260101120000"
    return dataset_bytes(sr)


@pytest.mark.parametrize("source_index", range(6))
def test_template_document_equals_highdicoms(source_index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _sources()[source_index]
    for build in _builds(src):
        made = build()
        with monkeypatch.context() as m:
            m.setattr(document, "sr_document", document.highdicom_document)
            reference = build()
        assert type(made) is type(reference)
        assert made.file_meta == reference.file_meta
        assert [e.tag for e in made] == [e.tag for e in reference]
        for element in reference:
            if element.keyword not in (*_STAMPED, "ContributingEquipmentSequence"):
                assert made[element.tag] == element, element.keyword
        assert _normalised(made) == _normalised(reference)
        assert "ContributionDateTime" in made.ContributingEquipmentSequence[0]


def test_a_later_document_leaves_earlier_ones_and_the_template_unchanged() -> None:
    first_src, second_src = rsna_source(128), dx_source(320, 256)
    first = build_sr(first_src, findings_for(first_src, three_boxes(128, 128)[:1]))
    before = dataset_bytes(first)
    templates = {key: dataset_bytes(t) for key, t in document._templates.items()}
    assert templates, "the SR was not made from a template"
    second = build_sr(second_src, findings_for(second_src, three_boxes(320, 256)))
    build_not_evaluated_sr(second_src, NotEvaluatedReason.ANALYSIS_FAILED, models=MODELS, attempts=2)
    assert dataset_bytes(first) == before
    assert {key: dataset_bytes(document._templates[key]) for key in templates} == templates
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert second.file_meta.MediaStorageSOPInstanceUID == second.SOPInstanceUID
    assert first.PatientID != second.PatientID and first.StudyInstanceUID != second.StudyInstanceUID


def _raw(ds: pydicom.Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def test_image_library_descriptors_shared_only_between_equal_detector_set_ups() -> None:
    a, b = dx_source(320, 256, seed=1), dx_source(320, 256, seed=2)  # same detector set-up
    b.FrameOfReferenceUID = "1.2.3.4"
    c = dx_source(320, 256, seed=3)
    c.PatientOrientation = ["A", "F"]
    c.ImagerPixelSpacing = [0.2, 0.15]
    built = [build_sr(s, findings_for(s, ())) for s in (a, b, c)]
    document._device_descriptors.cache_clear()
    fresh = [build_sr(s, findings_for(s, ())) for s in (a, b, c)]
    for x, y in zip(built, fresh, strict=True):
        assert _raw(_library(x)) == _raw(_library(y))
    la, lb, lc = (_library(x).ContentSequence[0].ContentSequence[0].ContentSequence for x in fresh)
    assert la[0] is lb[0]  # Modality: one item for the set-up
    assert [i.ConceptNameCodeSequence[0].CodeValue for i in lb][:2] == ["121139", "112227"]  # then b's own FoR
    assert lc[0] is not la[0] and lc[1] is not la[1]
    values = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in lc}
    assert values["Patient Orientation Row"].TextValue == "A"
    assert float(values["Horizontal Pixel Spacing"].MeasuredValueSequence[0].NumericValue) == 0.15


def _library(sr: pydicom.Dataset) -> pydicom.Dataset:
    return next(item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111028")


def _meanings(sr: pydicom.Dataset, code_value: str) -> set[str]:
    found: set[str] = set()

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            for key in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
                for code in item.get(key, []):
                    if code.CodeValue == code_value:
                        found.add(str(code.CodeMeaning))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def test_items_built_once_keep_each_concepts_own_meaning() -> None:
    """Cached content items are keyed by the exact code: highdicom's CodedConcept equality ignores the
    meaning, so the qualitative evaluation built for one finding's meaning was reused for another."""
    import dataclasses

    from models.findings import FindingCode

    src = rsna_source(96, seed=40)
    plain = findings_for(src, three_boxes(96, 96)[:1], two_class=True)
    for meaning in ("Pneumonia", "Pneumonia (disorder)"):
        findings = dataclasses.replace(plain, finding=FindingCode("233604007", "SCT", meaning))
        assert _meanings(build_sr(src, findings), "233604007") == {meaning}
