"""dicom_node.storage.fast_write: the same bytes as pydicom's dcmwrite, for every data set (fast or not)."""

from __future__ import annotations

import io
from copy import deepcopy
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
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
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from pydicom.valuerep import DA, DSdecimal

from dicom_node.results.build import build_results
from dicom_node.results.sr.build import build_not_evaluated_sr, build_sr
from dicom_node.results.sr.codes import NotEvaluatedReason
from dicom_node.storage import fast_write
from dicom_node.storage.fast_write import encode_file
from dicom_node.storage.spool import dataset_bytes


def _pydicom(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _same_as_pydicom(ds: Dataset) -> bytes:
    """encode_file(ds) after checking it equals dcmwrite's bytes (each on its own copy)."""
    ours = encode_file(deepcopy(ds))
    assert ours == _pydicom(deepcopy(ds))
    return ours


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if encode_file hands the whole data set to dcmwrite (the fast path must write it)."""

    def refuse(ds: Dataset) -> bytes:
        raise AssertionError("fell back to dcmwrite")

    monkeypatch.setattr(fast_write, "_pydicom_bytes", refuse)


def _every_sr() -> list[tuple[str, Dataset]]:
    out = []
    for kind, src in (("rsna", rsna_source(256)), ("dx", dx_source(320, 256))):
        for n in (0, 1, 3):
            boxes = three_boxes(int(src.Rows), int(src.Columns))[:n]
            out.append((f"{kind}-{n}-boxes", build_sr(src, findings_for(src, boxes))))
            out.append(
                (
                    f"{kind}-{n}-boxes-2-class-all",
                    build_sr(src, findings_for(src, boxes, two_class=True, box_gating="all")),
                )
            )
        out.append((f"{kind}-lateral", build_sr(src, not_analysed_for(src))))
        for reason in NotEvaluatedReason:
            out.append(
                (f"{kind}-{reason.value}", build_not_evaluated_sr(src, reason, models=MODELS, attempts=2))
            )
    return out


@pytest.mark.parametrize("name,sr", _every_sr(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_sr_shape_is_written_by_the_fast_path_as_pydicom_writes_it(
    name: str, sr: Dataset, no_fallback: None
) -> None:
    sr.file_meta = sr.file_meta if "file_meta" in sr.__dict__ else FileMetaDataset()
    assert dataset_bytes(deepcopy(sr)) == _pydicom(deepcopy(sr))


@pytest.mark.parametrize("charset", sorted(NAMES_BY_CHARSET))
def test_sr_of_a_source_with_a_non_ascii_name_matches(charset: str) -> None:
    src = dx_source(320, 256)
    src.SpecificCharacterSet = charset_value(charset)
    src.PatientName = NAMES_BY_CHARSET[charset]
    sr = build_sr(src, findings_for(src, three_boxes(320, 256)))
    data = _same_as_pydicom(sr)
    assert pydicom.dcmread(io.BytesIO(data)).PatientName == NAMES_BY_CHARSET[charset]


@pytest.mark.parametrize("positive", [True, False])
def test_results_sr_and_sc_match(positive: bool) -> None:
    src = rsna_source(256)
    findings = findings_for(src, three_boxes(256, 256) if positive else (), p=0.9 if positive else 0.1)
    for result in build_results(src, findings):
        _same_as_pydicom(result)


def _small_testdata_files() -> list[str]:
    """The test files bundled in pydicom's wheel (``get_testdata_files`` would try to download more)."""
    root = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(str(f) for f in root.rglob("*.dcm") if f.stat().st_size < 1_500_000)


def test_pydicom_test_files_re_encoded_as_explicit_vr_little_endian() -> None:
    """Every small bundled pydicom test file, as read (raw elements: pydicom's writer) and fully
    parsed (the fast path, with whatever it hands to pydicom), written as Explicit VR Little Endian."""
    checked = 0
    for path in _small_testdata_files():
        try:
            ds = pydicom.dcmread(path, force=True)
            meta = getattr(ds, "file_meta", None) or FileMetaDataset()
            ts = meta.get("TransferSyntaxUID")
            if ts is not None and (
                ts.is_compressed or not ts.is_little_endian or ts == DeflatedExplicitVRLittleEndian
            ):
                continue  # values stay as encoded: not re-encodable as native little endian
            for elem in ds.iterall():  # parse every raw element (also those in sequences)
                _ = elem.value
            ds.file_meta = meta
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID = ds.get("SOPClassUID") or "1.2.840.10008.5.1.4.1.1.7"
            ds.SOPInstanceUID = ds.get("SOPInstanceUID") or generate_uid()
            expected = _pydicom(deepcopy(ds))
        except Exception:  # noqa: BLE001 - a file pydicom itself cannot write this way
            continue
        assert encode_file(deepcopy(ds)) == expected, path
        raw = pydicom.dcmread(path, force=True)
        raw.file_meta = deepcopy(meta)
        try:
            expected_raw = _pydicom(deepcopy(raw))
        except Exception:  # noqa: BLE001
            continue
        assert encode_file(deepcopy(raw)) == expected_raw, path
        checked += 1
    assert checked >= 20  # 27 of the bundled files with pydicom 3.0.2


def _edge_case_dataset() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5"  # odd length: NUL padding
    ds.StudyInstanceUID = "1.2.3"
    ds.PatientName = "Doe^John"
    ds.PatientID = ""  # empty
    ds.AccessionNumber = None
    ds.StudyDescription = "odd"  # odd length: space padding
    ds.ImageType = ["ORIGINAL", "PRIMARY", "X"]  # multi-valued CS
    ds.PixelSpacing = [0.1, 0.25]  # multi-valued DS
    ds.SliceThickness = "1.50"  # DS from a string keeps its text
    ds.InstanceNumber = 7
    ds.ReferencedFrameNumber = [1, 2, 3]
    ds.Rows, ds.Columns = 2, 3
    ds.WindowCenter = DSdecimal("40.5")
    ds.StudyDate = DA("20240102")
    ds.ContentDate = "20240103"
    ds.StudyTime = "101112.5"
    ds.FrameIncrementPointer = 0x00181063  # AT
    ds.add_new(0x00091010, "LO", "Private creator")
    ds.add_new(0x00091001, "UN", b"\x01\x02\x03")
    ds.add_new(0x00290010, "LO", "X")
    ds.ImagePositionPatient = [0.0, -1.5, 1e-9]
    ds.add_new(0x00700084, "PN", "")
    ds.add_new(0x00081030, "LO", "x" * 70000)  # too long for a 16-bit length: pydicom writes UN
    ds.LargestMonochromePixelValue = 3
    ds.add_new(0x00189219, "FD", [1.5, 2.5])
    ds.add_new(0x00660040, "OL", b"\x01\x00\x00\x00")
    ds.add_new(0x00700001, "SQ", Sequence())  # empty sequence
    item = Dataset()
    item.CodeValue = "1"
    empty_item = Dataset()
    undefined_item = Dataset()
    undefined_item.CodeMeaning = "undefined-length item"
    undefined_item.is_undefined_length_sequence_item = True
    ds.ConceptNameCodeSequence = [item, empty_item, undefined_item]
    ds.ContentSequence = [Dataset()]
    ds["ContentSequence"].is_undefined_length = True
    nested = Dataset()
    nested.SpecificCharacterSet = "ISO_IR 100"
    nested.TextValue = "Jürgen, odd"
    nested.ContentSequence = [Dataset()]
    nested.ContentSequence[0].TextValue = "Ünïcode inherited"
    ds.ContentSequence.append(nested)
    ds.PixelData = b"\x00\x01\x02\x03\x04\x05"
    ds["PixelData"].VR = "OB"
    ds.add_new(0x00200052, "UI", "1.2.840.10008.5.1.4.1.1.7.1")
    return ds


def test_edge_cases_match(no_fallback: None) -> None:
    _same_as_pydicom(_edge_case_dataset())


@pytest.mark.parametrize("charset", sorted(NAMES_BY_CHARSET))
def test_non_ascii_character_sets_match(charset: str) -> None:
    ds = _edge_case_dataset()
    ds.SpecificCharacterSet = charset_value(charset)
    ds.PatientName = NAMES_BY_CHARSET[charset]
    ds.StudyDescription = NAMES_BY_CHARSET[charset].replace("^", " ")
    ds.ContentSequence[0].PatientComments = "plain ascii text"
    _same_as_pydicom(ds)


def test_ambiguous_vr_and_raw_elements_go_to_pydicom() -> None:
    ds = _edge_case_dataset()
    ds.PixelRepresentation = 1
    ds.add_new(0x00280106, "US or SS", 5)  # SmallestImagePixelValue: pydicom resolves the VR (SS)
    ds.BitsAllocated = 16
    ds.add_new(0x7FE00010, "OB or OW", b"\x00\x01" * 6)
    data = _same_as_pydicom(ds)
    assert pydicom.dcmread(io.BytesIO(data))["SmallestImagePixelValue"].VR == "SS"
    raw = pydicom.dcmread(io.BytesIO(data))  # raw elements
    assert encode_file(deepcopy(raw)) == _pydicom(deepcopy(raw)) == data


def test_encapsulated_pixel_data_of_a_compressed_transfer_syntax_matches(no_fallback: None) -> None:
    ds = _edge_case_dataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8 frame one \xff\xd9", b"\xff\xd8 two \xff\xd9"])
    copy = deepcopy(ds)
    data = _same_as_pydicom(ds)
    encode_file(copy)
    assert copy["PixelData"].is_undefined_length  # set from the transfer syntax, as dcmwrite does
    assert pydicom.dcmread(io.BytesIO(data)).PixelData == ds.PixelData


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
)
def test_other_transfer_syntaxes_are_written_by_pydicom(syntax: str) -> None:
    ds = _edge_case_dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    del ds[0x00081030]  # the UN conversion warns differently per syntax; not the point here
    del ds[0x00091001]
    ds.PixelData = b"\x00\x01\x02\x03"
    assert encode_file(deepcopy(ds)) == _pydicom(deepcopy(ds))


def test_file_meta_is_left_unchanged_and_errors_are_pydicom_s() -> None:
    ds = _edge_case_dataset()
    before = deepcopy(ds.file_meta)
    encode_file(ds)
    assert ds.file_meta == before
    bad = _edge_case_dataset()
    bad.add_new(0x00020010, "UI", ExplicitVRLittleEndian)  # file meta in the data set
    with pytest.raises(ValueError, match="File Meta Information Group"):
        encode_file(bad)
    arr = _edge_case_dataset()
    arr.add_new(0x00189219, "FD", np.array([1.0, 2.0]))
    for write in (encode_file, _pydicom):  # pydicom cannot write a numpy FD value: neither can we
        with pytest.raises(ValueError, match="truth value of an array"):
            write(deepcopy(arr))


def test_shared_items_are_encoded_once_and_their_bytes_reused_exactly() -> None:
    """The SR builders' shared content items are registered as immutable; the writer reuses their
    encoded bytes (per character set) and the files stay what dcmwrite writes."""
    sources = [rsna_source(128), dx_source(320, 256)]
    for charset in sorted(NAMES_BY_CHARSET):
        src = dx_source(320, 256, seed=7)
        src.SpecificCharacterSet = charset_value(charset)
        src.PatientName = NAMES_BY_CHARSET[charset]
        sources.append(src)
    fast_write._encoded_items.clear()
    for src in sources:
        boxes = three_boxes(int(src.Rows), int(src.Columns))
        for sr in (
            build_sr(src, findings_for(src, boxes)),
            build_sr(src, findings_for(src, boxes[:1], two_class=True, box_gating="all")),
            build_not_evaluated_sr(src, NotEvaluatedReason.ANALYSIS_FAILED, models=MODELS, attempts=2),
        ):
            expected = _pydicom(deepcopy(sr))  # (a deep copy holds no registered item)
            assert encode_file(sr) == expected  # the items' bytes are made here or earlier...
            assert encode_file(sr) == expected  # ...and reused here
    charsets = {key[1] for key in fast_write._encoded_items}
    assert len(fast_write._encoded_items) > 20 and len(charsets) >= 3


def test_the_immutable_registry_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_write, "MAX_IMMUTABLE", 3)
    monkeypatch.setattr(fast_write, "_immutable", {})
    monkeypatch.setattr(fast_write, "_encoded_items", {})
    items = [Dataset() for _ in range(5)]
    fast_write.register_immutable(*items[:3])
    assert len(fast_write._immutable) == 3
    fast_write.register_immutable(items[3])
    assert list(fast_write._immutable) == [id(items[3])]  # emptied, then this one


@pytest.mark.parametrize("case", ["as-is", "group-length", "empty-version-and-class", "other-uids", "no-uids"])
def test_file_meta_elements_are_never_changed_in_place(case: str) -> None:
    """The writer works on its own copy of the file meta's element table: whatever pydicom sets there
    (group length, an empty version or implementation class, the Media Storage UIDs) is a new element."""
    ds = _edge_case_dataset()
    meta = ds.file_meta
    if case == "group-length":
        meta.FileMetaInformationGroupLength = 12345
    elif case == "empty-version-and-class":
        meta.FileMetaInformationVersion = b""
        meta.ImplementationClassUID = ""
    elif case == "other-uids":
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = "9.9.9"
    elif case == "no-uids":
        for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
            if keyword in meta:
                delattr(meta, keyword)
    elements = {tag: (element, element.value) for tag, element in meta._dict.items()}
    expected = _pydicom(deepcopy(ds))
    assert encode_file(ds) == expected
    assert {tag: (element, element.value) for tag, element in meta._dict.items()} == elements
    assert all(meta._dict[tag] is element for tag, (element, _) in elements.items())


def test_file_meta_group_of_a_read_file_meta_is_pydicoms() -> None:
    """Raw elements (a file meta as read from a file) go to pydicom's writer; the bytes are the same."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    path = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
    ours_meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    theirs_meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    assert any(type(e) is not pydicom.dataelem.DataElement for e in ours_meta._dict.values())
    theirs = DicomBytesIO()
    theirs.is_implicit_VR, theirs.is_little_endian = False, True
    write_file_meta_info(theirs, theirs_meta, enforce_standard=True)
    assert fast_write.file_meta_group(ours_meta) == theirs.getvalue()
