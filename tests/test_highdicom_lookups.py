"""The memoised highdicom IOD lookup (dicom_node.results.highdicom_lookups) answers as highdicom does."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import highdicom._standard_utils as standard_utils
import pytest

import dicom_node.results.common  # noqa: F401 - installs the memoised lookup, as the node does
from dicom_node.results import highdicom_lookups

KEYWORDS = ("PixelData", "FloatPixelData", "ContentDate", "ContentTime", "NumberOfFrames",
            "FrameOfReferenceUID", "PatientOrientation", "ImagerPixelSpacing")  # fmt: skip


def test_same_answer_as_highdicom_for_every_sop_class() -> None:
    answered = 0
    for sop_class_uid in standard_utils.get_sop_class_iod_map():
        for keyword in KEYWORDS:
            for exclude in (None, ["IconImageSequence"], ("ReferencedImageSequence", "IconImageSequence")):
                expected = _answer(highdicom_lookups.ORIGINAL, keyword, sop_class_uid, exclude)
                got = _answer(highdicom_lookups.is_attribute_in_iod, keyword, sop_class_uid, exclude)
                assert got == expected, (keyword, sop_class_uid, exclude)
                answered += isinstance(expected, bool)
    assert answered > 1000  # most classes are in highdicom's tables (a few IODs lack modules: KeyError)


def _answer(fn: Callable[..., bool], keyword: str, uid: str, exclude: Sequence[str] | None) -> bool | str:
    try:
        return fn(keyword, uid, exclude_path_elements=exclude)
    except KeyError as exc:
        return f"KeyError {exc}"


def test_unknown_sop_class_raises_as_highdicom_does() -> None:
    with pytest.raises(KeyError, match="No IOD found for SOP Class UID: 1.2.3.4"):
        highdicom_lookups.is_attribute_in_iod("PixelData", "1.2.3.4")
    with pytest.raises(KeyError):  # not cached: raised again
        highdicom_lookups.is_attribute_in_iod("PixelData", "1.2.3.4")


def test_installed_where_highdicom_calls_it() -> None:
    patched = highdicom_lookups.install()
    assert {"highdicom._standard_utils", "highdicom.base", "highdicom.sr.content"} <= set(patched)
    assert standard_utils.is_attribute_in_iod is highdicom_lookups.is_attribute_in_iod
    assert highdicom_lookups.install() == patched  # idempotent
    # highdicom's does_iod_have_pixel_data goes through the memoised function
    before = highdicom_lookups._lookup.cache_info()
    assert standard_utils.does_iod_have_pixel_data("1.2.840.10008.5.1.4.1.1.7") is True  # Secondary Capture
    assert standard_utils.does_iod_have_pixel_data("1.2.840.10008.5.1.4.1.1.88.34") is False  # Comprehensive 3D SR
    after = highdicom_lookups._lookup.cache_info()
    assert after.hits + after.misses > before.hits + before.misses


def test_building_an_sr_uses_the_memo() -> None:
    from _results_data import findings_for, rsna_source, three_boxes  # type: ignore[import-not-found]

    from dicom_node.results.sr.build import build_sr

    source = rsna_source(256)
    findings = findings_for(source, boxes=three_boxes(256, 256))
    build_sr(source, findings)
    before = highdicom_lookups._lookup.cache_info()
    build_sr(source, findings)
    after = highdicom_lookups._lookup.cache_info()
    assert after.hits > before.hits
    assert after.misses == before.misses  # the second SR asked nothing new


def _concepts() -> list:
    from highdicom.sr.coding import CodedConcept
    from pydicom.sr.codedict import codes

    made = [
        CodedConcept("121071", "DCM", "Finding"),
        CodedConcept("x" * 20, "99LONG", "a long code value"),  # > 16 characters: LongCodeValue
        CodedConcept("urn:oid:1.2.3", "99URN", "a URN code value"),  # URNCodeValue
        CodedConcept.from_code(codes.SCT.Lung),
    ]
    empty = CodedConcept("1", "DCM", "none")
    del empty.CodeValue  # none of the three
    both = CodedConcept("c1", "DCM", "both")
    both.LongCodeValue = "L" * 20  # CodeValue first, as highdicom answers
    read = _read_back(CodedConcept("233604007", "SCT", "Pneumonia"))  # raw elements until first read
    return [*made, empty, both, read]


def _read_back(concept):  # type: ignore[no-untyped-def]
    """``concept`` with its code value and designator as pydicom raw elements (as read from a file,
    before their first access)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    for tag, text in ((0x00080100, concept.CodeValue), (0x00080102, concept.CodingSchemeDesignator)):
        data = text.encode() + (b" " if len(text) % 2 else b"")
        concept._dict[tag] = RawDataElement(Tag(tag), "SH", len(data), data, 0, False, True)
    return concept


def test_coded_concept_value_answers_as_highdicom_does() -> None:
    from highdicom.sr.coding import CodedConcept

    assert CodedConcept.__dict__["value"] is highdicom_lookups.CODED_CONCEPT_VALUE  # installed by results.common
    assert CodedConcept.__dict__["__hash__"] is not highdicom_lookups.ORIGINAL_HASH
    values = []
    for concept in _concepts():
        got = concept.value  # first: the last concept's elements are still raw here
        expected = highdicom_lookups.ORIGINAL_VALUE.fget(concept)
        assert got == expected, expected
        if expected is None:  # highdicom's hash of a concept without a value raises TypeError; so does ours
            with pytest.raises(TypeError):
                highdicom_lookups.ORIGINAL_HASH(concept)
            with pytest.raises(TypeError):
                hash(concept)
        else:
            assert hash(concept) == highdicom_lookups.ORIGINAL_HASH(concept) == hash(concept.scheme_designator + expected)
        values.append(expected)
    assert values == ["121071", "x" * 20, "urn:oid:1.2.3", "39607008", None, "c1", "233604007"]
    no_scheme = CodedConcept("1", "DCM", "x")
    del no_scheme.CodingSchemeDesignator
    with pytest.raises(AttributeError):
        hash(no_scheme)


def _every_content_item() -> list:
    """Every content item of a few built SRs, and of one read back from its bytes (raw elements)."""
    import io

    from _results_data import findings_for, not_analysed_for, rsna_source, three_boxes
    from highdicom.sr import Comprehensive3DSR
    from highdicom.sr.value_types import ContentItem
    from pydicom import dcmread

    from dicom_node.results.sr.build import build_sr
    from dicom_node.storage.spool import dataset_bytes

    src = rsna_source(96, seed=3)
    built = [build_sr(src, findings_for(src, three_boxes(96, 96))), build_sr(src, not_analysed_for(src))]
    read = Comprehensive3DSR.from_dataset(dcmread(io.BytesIO(dataset_bytes(built[0]))), copy=False)
    items = []

    def walk(sequence) -> None:  # type: ignore[no-untyped-def]
        for item in sequence:
            items.append(item)
            walk(item.get("ContentSequence", []))

    for sr in [*built, read]:
        walk(sr.ContentSequence)
    no_relationship = ContentItem("TEXT", _late_concept("1", "DCM", "x"), None)
    return [*items, no_relationship]


def _late_concept(*args):  # type: ignore[no-untyped-def]  # (imported late: results.common installs first)
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(*args)


def test_content_item_name_and_relationship_type_answer_as_highdicom_does() -> None:
    from highdicom.sr.value_types import ContentItem

    assert ContentItem.__dict__["name"] is highdicom_lookups.CONTENT_ITEM_NAME
    assert ContentItem.__dict__["relationship_type"] is highdicom_lookups.CONTENT_ITEM_RELATIONSHIP_TYPE
    items = _every_content_item()
    assert len(items) > 60
    for item in items:
        name, relationship = item.name, item.relationship_type  # first: raw elements still raw here
        assert name is highdicom_lookups.ORIGINAL_NAME.fget(item)
        assert relationship == highdicom_lookups.ORIGINAL_RELATIONSHIP_TYPE.fget(item)
    assert items[-1].relationship_type is None
    nameless = ContentItem("TEXT", _late_concept("1", "DCM", "x"), "CONTAINS")
    del nameless.ConceptNameCodeSequence
    with pytest.raises(AttributeError):
        highdicom_lookups.ORIGINAL_NAME.fget(nameless)
    with pytest.raises(AttributeError):
        _ = nameless.name
