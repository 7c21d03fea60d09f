"""The SC's attributes from a per-process template (dicom_node.results.sc.attributes, results.dataset_copy):
the same dataset as highdicom's constructor makes per overlay, and no change ever reaching the template."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import io
import time
from collections.abc import Callable, Iterator

import pydicom
import pytest
from _results_data import NAMES_BY_CHARSET, charset_value, dx_source, findings_for, rsna_source, three_boxes
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import DA, DT, TM

from dicom_node.results.dataset_copy import fresh_copy
from dicom_node.results.sc import attributes, build
from dicom_node.results.sc.encode import ScEncoding

#: the values highdicom takes from the clock on every call: the only ones allowed to differ
CLOCK = {
    "InstanceCreationDate": DA("20240101"),
    "InstanceCreationTime": TM("101010.000001"),
    "ContentDate": DA("20240101"),
    "ContentTime": TM("101010.000001"),
    "DateOfSecondaryCapture": DA("20240101"),
    "TimeOfSecondaryCapture": TM("101010.000002"),
    "ContributionDateTime": DT("20240101101010.000003"),
}


def _dx_without_orientation() -> Dataset:
    ds = dx_source(200, 160, seed=3)
    del ds.PatientOrientation
    return ds


def _dx_laterality_lossy() -> Dataset:
    ds = dx_source(160, 200, seed=4, monochrome1=False)
    ds.Laterality = "L"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = ["8.5", "2.1"]
    ds.LossyImageCompressionMethod = ["ISO_10918_1", "ISO_14495_1"]
    ds.InstanceNumber = 0  # not a positive integer: the SC gets 1
    return ds


def _charset_source(charset: str) -> Callable[[], Dataset]:
    def make() -> Dataset:
        ds = dx_source(128, 128, seed=5)
        ds.SpecificCharacterSet = charset_value(charset)
        ds.PatientName = NAMES_BY_CHARSET[charset]
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return pydicom.dcmread(io.BytesIO(buf.getvalue()))  # values read back, as the node gets them

    return make


SOURCES: dict[str, Callable[[], Dataset]] = {
    "cr-sc-jpeg-lossy": lambda: rsna_source(128, seed=2),
    "dx-orientation": lambda: dx_source(160, 128, seed=1),
    "dx-no-orientation": _dx_without_orientation,
    "dx-laterality-lossy-history": _dx_laterality_lossy,
    **{f"charset-{c.strip(chr(92))}": _charset_source(c) for c in NAMES_BY_CHARSET},
}
ENCODINGS = {"jpeg": ScEncoding(), "uncompressed": ScEncoding("explicit-vr-little-endian")}


def _build(
    source: Dataset, encoding: ScEncoding, monkeypatch: pytest.MonkeyPatch, *, reference: bool
) -> Dataset:
    """build_sc as it is (template copies) or with highdicom's constructor run for this overlay."""
    with monkeypatch.context() as m:
        if reference:
            m.setattr(build, "sc_image", attributes.highdicom_sc)
        return build.build_sc(source, findings_for(source, three_boxes(int(source.Rows), int(source.Columns))[:1]),
                              encoding=encoding)  # fmt: skip


def _differences(a: Dataset, b: Dataset, where: str = "") -> Iterator[str]:
    """Every difference between two datasets: class, state, elements (tag, VR, value and its type,
    length encoding), recursively through sequences; File Meta Information too."""
    if type(a) is not type(b):
        yield f"{where}class {type(a).__name__} != {type(b).__name__}"
    state = [{k: v for k, v in vars(d).items() if k not in ("_dict", "file_meta")} for d in (a, b)]
    if repr(state[0]) != repr(state[1]):
        yield f"{where}state {state[0]!r} != {state[1]!r}"
    if "file_meta" in vars(a) or "file_meta" in vars(b):
        yield from _differences(a.file_meta, b.file_meta, f"{where}file_meta.")
    if list(a.keys()) != list(b.keys()):
        yield f"{where}tags {sorted(set(a.keys()) ^ set(b.keys()))}"
    for tag in a.keys() & b.keys():
        x, y = a[tag], b[tag]
        name = f"{where}{x.keyword or tag}"
        if (x.VR, x.is_undefined_length, x.private_creator) != (
            y.VR,
            y.is_undefined_length,
            y.private_creator,
        ):
            yield f"{name}: VR/length/creator {x.VR} {y.VR}"
        if type(x.value) is not type(y.value):
            yield f"{name}: type {type(x.value).__name__} != {type(y.value).__name__}"
        elif isinstance(x.value, Sequence):
            if len(x.value) != len(y.value):
                yield f"{name}: {len(x.value)} != {len(y.value)} items"
            for i, (p, q) in enumerate(zip(x.value, y.value, strict=False)):
                yield from _differences(p, q, f"{name}[{i}].")
        elif x.value != y.value:
            yield f"{name}: {x.value!r} != {y.value!r}"
        elif isinstance(x.value, MultiValue) and [type(v) for v in x.value] != [type(v) for v in y.value]:
            yield f"{name}: item types differ"


def _set_clock(ds: Dataset) -> None:
    for d in (ds, *ds.ContributingEquipmentSequence):
        for keyword, value in CLOCK.items():
            if keyword in d:
                setattr(d, keyword, value)


def _written(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("source", list(SOURCES))
def test_template_copy_is_highdicoms_sc(source: str, encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole overlays, built both ways: every element, value type, sequence item, the File Meta
    Information and the bytes written are the same, but for the clock's values."""
    src = SOURCES[source]()
    expected = _build(src, ENCODINGS[encoding], monkeypatch, reference=True)
    got = _build(src, ENCODINGS[encoding], monkeypatch, reference=False)
    for ds in (expected, got):
        for keyword in CLOCK:  # highdicom's types, with the clock's values
            for d in (ds, *ds.ContributingEquipmentSequence):
                if keyword in d:
                    assert type(d[keyword].value) is type(CLOCK[keyword]), keyword
    _set_clock(expected)
    _set_clock(got)
    assert list(_differences(expected, got)) == []
    assert _written(got) == _written(expected)


def _arguments(**changes: object) -> attributes.ScArguments:
    args = attributes.ScArguments(
        "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6", 1, ("L", "F"), "a+b", ("node 1", "a 1+0123")
    )
    return dataclasses.replace(args, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("length", range(20, 65))
def test_group_length_is_highdicoms_for_every_uid_length(length: int) -> None:
    uid = ("2.25." + "1234567890" * 7)[:length].rstrip(".")
    args = _arguments(sop_instance_uid=uid, instance_number=3, patient_orientation=("P", "F"))
    expected, got = attributes.highdicom_sc(args), attributes.sc_image(args)
    _set_clock(expected)
    _set_clock(got)
    assert list(_differences(expected, got)) == []


def test_clock_values_are_the_time_of_each_overlay() -> None:
    """Dates and times are taken when the overlay is made, as highdicom takes them (not the template's)."""
    args = _arguments(manufacturer_model_name="clock")
    attributes.sc_image(args)  # the template
    time.sleep(0.01)
    before = datetime.datetime.now()
    sc = attributes.sc_image(args)
    after = datetime.datetime.now()
    pairs = [("InstanceCreationDate", "InstanceCreationTime"), ("ContentDate", "ContentTime"),
             ("DateOfSecondaryCapture", "TimeOfSecondaryCapture")]  # fmt: skip
    taken = [datetime.datetime.combine(sc[d].value, sc[t].value) for d, t in pairs]
    taken.append(sc.ContributingEquipmentSequence[0].ContributionDateTime.replace(tzinfo=None))
    assert all(before <= t <= after for t in taken), (before, taken, after)


@pytest.mark.parametrize("orientation", [("P", "FL"), ("X", "F")])
def test_orientations_highdicom_refuses_are_refused_the_same(orientation: tuple[str, str]) -> None:
    args = _arguments(patient_orientation=orientation)
    with pytest.raises(ValueError) as expected:
        attributes.highdicom_sc(args)
    with pytest.raises(ValueError) as got:
        attributes.sc_image(args)
    assert str(got.value) == str(expected.value)


def _mutables(ds: Dataset) -> Iterator[object]:
    """Every mutable object reachable from ``ds``: itself, its File Meta, elements, multi-values, sequences."""
    yield ds
    if "file_meta" in vars(ds):
        yield from _mutables(ds.file_meta)
    for elem in ds.values():
        yield elem
        if isinstance(elem.value, (MultiValue, Sequence)):
            yield elem.value
        if isinstance(elem.value, Sequence):
            for item in elem.value:
                yield from _mutables(item)


def test_overlays_share_nothing_with_the_template_or_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom changes an existing element in place (``ds.X = v``): a second overlay, and any change to
    it, leave the first overlay and the template as they were."""
    first_src, second_src = dx_source(160, 128, seed=1), _dx_laterality_lossy()
    first = _build(first_src, ENCODINGS["jpeg"], monkeypatch, reference=False)
    template = attributes._template(str(first.ManufacturerModelName), tuple(first.SoftwareVersions))
    first_before, template_before = _written(first), copy.deepcopy(template)
    second = _build(second_src, ENCODINGS["uncompressed"], monkeypatch, reference=False)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    # change everything that could be shared, in place
    second.PhotometricInterpretation = "MONOCHROME2"
    second.ImageType[0] = "ORIGINAL"
    second.SoftwareVersions[0] = "changed"
    second.ContributingEquipmentSequence[0].Manufacturer = "changed"
    second.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue = "1"
    second.ContributingEquipmentSequence.append(Dataset())
    second.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    second.Manufacturer = "changed"
    assert _written(first) == first_before
    _set_clock(template_before)
    template_now = copy.deepcopy(template)
    _set_clock(template_now)
    assert list(_differences(template_before, template_now)) == []
    shared = {id(o) for o in _mutables(first)} & {id(o) for o in _mutables(second)}
    assert not shared
    assert not {id(o) for o in _mutables(template)} & (
        {id(o) for o in _mutables(first)} | {id(o) for o in _mutables(second)}
    )


def _elements_as_read(data: bytes) -> Dataset:
    """A plain Dataset holding the elements of ``data`` as pydicom read them (raw until accessed)."""
    ds = Dataset()
    for elem in pydicom.dcmread(io.BytesIO(data)).values():
        ds[elem.tag] = elem
    return ds


def test_fresh_copy_of_a_read_dataset_is_equal_and_independent() -> None:
    """Elements as read (raw until accessed), private ones, nested sequences, multi-values."""
    ds = dx_source(64, 64, seed=7)
    block = ds.private_block(0x0011, "CXR TEST", create=True)
    block.add_new(0x01, "LO", "private value")
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "1", "99X", "x"
    inner = Dataset()
    inner.ImageType = ["A", "B"]
    item.ConceptCodeSequence = [inner]
    ds.AnatomicRegionSequence = [item]
    read, reference = (_elements_as_read(_written(ds)) for _ in range(2))
    assert any(isinstance(e, RawDataElement) for e in read.values())
    copied = fresh_copy(read)
    reference.walk(lambda d, e: None)  # converted as those of ``read`` were by copying them
    assert list(_differences(reference, copied)) == []
    copied.AnatomicRegionSequence[0].ConceptCodeSequence[0].ImageType[1] = "C"
    copied[0x0011, 0x1001].value = "changed"
    copied.PatientName = "Changed^Name"
    assert list(_differences(reference, read)) == []
    assert (
        isinstance(copied[0x0011, 0x1001], DataElement)
        and copied[0x0011, 0x1001].private_creator == "CXR TEST"
    )
