"""Wrap a TID 1500 content tree (built with highdicom templates) into a Comprehensive 3D SR document.

``highdicom.sr.Comprehensive3DSR(content=tree)`` deep-copies the whole tree, re-parses the copy
into highdicom objects (only to answer its ``.content`` property) and walks the tree to collect
the evidence: ~70 % of the CPU an SR cost (BENCHMARKS.md). Here the document is built by the
same highdicom constructor from the root container *without its children*, and the children
are attached afterwards. Safe because every SR of the node references exactly one instance,
the source, which is always passed as evidence (``tests/test_results_sr.py`` checks the
evidence against the tree with highdicom's own ``collect_evidence``).

Also here: the TID 1600 Image Library of the source, built from content items (not
``highdicom.sr.ImageLibrary``, which requires Patient Orientation and Imager Pixel Spacing for
every CR/DX image, which many CXRs lack).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from highdicom import ContributingEquipment
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    ImageContentItem,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
    UIDRefContentItem,
)
from highdicom.sr.utils import collect_evidence
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.results.common import (
    MANUFACTURER,
    PATIENT_STUDY_OPTIONAL,
    PATIENT_STUDY_TYPE2,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    copy_patient_study,
    patient_orientation,
)
from dicom_node.results.sr.codes import PIXELS, SOURCE
from dicom_node.results.template import (
    drop,
    instance_from_template,
    set_media_storage_instance,
    shared,
    stamp_creation,
)
from dicom_node.storage.fast_write import set_fresh
from models.imaging.spacing import RECEPTOR_PLANE, pixel_spacing

_MODALITY_CODES = {
    "CR": CodedConcept("CR", "DCM", "Computed Radiography"),
    "DX": CodedConcept("DX", "DCM", "Digital Radiography"),
    "RG": CodedConcept("RG", "DCM", "Radiographic imaging"),
    "OT": CodedConcept("OT", "DCM", "Other"),
}
_ACQ = RelationshipTypeValues.HAS_ACQ_CONTEXT
_CONTAINS = RelationshipTypeValues.CONTAINS
#: DCM 126010 "Imaging Measurements": the Image Library goes just before it (TID 1500 row order)
_IMAGING_MEASUREMENTS = "126010"


def evidence_view(source: Dataset) -> Dataset:
    """The identifying attributes highdicom needs from the source (no pixels, no patient data).

    Patient and study attributes are copied afterwards by :func:`copy_patient_study`, verbatim,
    so highdicom's value checks never reject a source with unusual values.
    """
    view = Dataset()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        setattr(view, keyword, source[keyword].value)
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
        setattr(view, keyword, None)
    view.StudyDate = None
    view.StudyTime = None
    return view


def _library_descriptors(source: Dataset) -> list:
    """The TID 1602/1603 descriptors of the source: Modality, [Frame of Reference UID], Rows, Columns,
    [Patient Orientation], [Pixel Spacing]. All but the Frame of Reference are the same for every image
    of a detector model, so they are built once per distinct set of values (:func:`_device_descriptors`)."""
    orientation = patient_orientation(source)
    spacing, _ = pixel_spacing(source, RECEPTOR_PLANE)  # DCM 111026/111066: at the image receptor
    modality, *rest = _device_descriptors(
        str(source.get("Modality") or "OT"),
        int(source.Rows),
        int(source.Columns),
        orientation,
        None if spacing is None else (float(spacing[0]), float(spacing[1])),
    )
    items: list = [modality]
    if source.get("FrameOfReferenceUID"):
        items.append(UIDRefContentItem(name=codes.DCM.FrameOfReferenceUID, value=source.FrameOfReferenceUID,
                                       relationship_type=_ACQ))  # fmt: skip
    items.extend(rest)
    return items


#: distinct detector set-ups whose descriptors are kept (a site has a handful of detector models)
_DEVICE_DESCRIPTORS_KEPT = 256


@functools.lru_cache(maxsize=_DEVICE_DESCRIPTORS_KEPT)
def _device_descriptors(
    modality: str, rows: int, columns: int, orientation: tuple[str, str] | None, spacing: tuple[float, float] | None
) -> tuple:
    """Modality, Rows, Columns, [orientation row, column], [horizontal, vertical spacing] content items
    (shared by every SR with these values: content items are never changed after construction)."""
    code = _MODALITY_CODES[modality] if modality in _MODALITY_CODES else CodedConcept(modality, "DCM", modality)
    items: list = [CodeContentItem(name=codes.DCM.Modality, value=code, relationship_type=_ACQ)]
    items.append(NumContentItem(name=codes.DCM.PixelDataRows, value=rows, unit=PIXELS, relationship_type=_ACQ))
    items.append(NumContentItem(name=codes.DCM.PixelDataColumns, value=columns, unit=PIXELS, relationship_type=_ACQ))
    if orientation is not None:
        items.append(TextContentItem(name=codes.DCM.PatientOrientationRow, value=orientation[0], relationship_type=_ACQ))
        items.append(TextContentItem(name=codes.DCM.PatientOrientationColumn, value=orientation[1],
                                     relationship_type=_ACQ))  # fmt: skip
    if spacing is not None:
        mm = codes.UCUM.Millimeter
        items.append(NumContentItem(name=codes.DCM.HorizontalPixelSpacing, value=spacing[1], unit=mm,
                                    relationship_type=_ACQ))  # fmt: skip
        items.append(NumContentItem(name=codes.DCM.VerticalPixelSpacing, value=spacing[0], unit=mm,
                                    relationship_type=_ACQ))  # fmt: skip
    return shared(tuple(items))


def image_library(source: Dataset) -> ContainerContentItem:
    """TID 1600 Image Library with one entry, the source, and its TID 1602/1603 descriptors."""
    image_item = ImageContentItem(
        name=SOURCE,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=_CONTAINS,
    )
    image_item.ContentSequence = ContentSequence(_library_descriptors(source))
    group = ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=_CONTAINS)
    group.ContentSequence = ContentSequence([image_item])
    library = ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=_CONTAINS)
    library.ContentSequence = ContentSequence([group])
    return library


def insert_image_library(root: Dataset, source: Dataset) -> None:
    """Insert :func:`image_library` into a TID 1500 root container, just before Imaging Measurements."""
    items = root.ContentSequence
    position = next(i for i, item in enumerate(items)
                    if item.ConceptNameCodeSequence[0].CodeValue == _IMAGING_MEASUREMENTS)  # fmt: skip
    items.insert(position, image_library(source))


def sr_document(
    source: Dataset,
    root: Dataset,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    model_name: str,
    software_versions: Sequence[str],
    coding_schemes: Sequence[CodingSchemeIdentificationItem] | None = None,
) -> Comprehensive3DSR:
    """A Comprehensive 3D SR in the source's study holding ``root`` (a TID 1500 root container).

    ``root``'s children are attached after highdicom's constructor ran on the childless root
    (see the module docstring); the source is the document's one evidence item. Patient and
    study attributes are the source's, copied verbatim. ``root`` is consumed (its children move).
    The returned object's highdicom ``.content`` property knows only the childless root: to walk
    the tree as highdicom objects, read the document back (``highdicom.sr.srread`` / ``from_dataset``).

    The document's image-independent attributes come from a per-process template that highdicom's
    constructor built once (:func:`highdicom_document` with a placeholder source; see
    :mod:`dicom_node.results.template`); the per-image ones are set here as highdicom sets them
    (``tests/test_results_sr_template.py`` compares the two element by element).
    """
    stub = _childless(root)
    sr = instance_from_template(_document_template(stub, model_name, software_versions, coding_schemes))
    stamp_creation(sr)
    set_fresh(sr, "SOPInstanceUID", sop_instance_uid)
    set_media_storage_instance(sr, sop_instance_uid)
    set_fresh(sr, "SeriesInstanceUID", series_instance_uid)
    set_fresh(sr, "InstanceNumber", instance_number)
    set_fresh(sr, "ContributingEquipmentSequence", [ContributingEquipment.for_highdicom()])
    same_study, _ = collect_evidence([evidence_view(source)], stub, study_instance_uid=source.StudyInstanceUID)
    set_fresh(sr, "CurrentRequestedProcedureEvidenceSequence", same_study)
    set_fresh(sr, "ContentSequence", root.ContentSequence)
    drop(sr, _COPIED)  # copy_patient_study sets some of them in place
    copy_patient_study(source, sr)
    return sr


def highdicom_document(
    source: Dataset,
    root: Dataset,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    model_name: str,
    software_versions: Sequence[str],
    coding_schemes: Sequence[CodingSchemeIdentificationItem] | None = None,
) -> Comprehensive3DSR:
    """:func:`sr_document` built by highdicom's constructor alone (what the template is made with)."""
    children = root.ContentSequence
    sr = Comprehensive3DSR(
        evidence=[evidence_view(source)],
        content=_childless(root),
        series_instance_uid=series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=model_name,
        software_versions=list(software_versions),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=None,
        coding_schemes=list(coding_schemes) if coding_schemes else None,
    )
    sr.ContentSequence = children
    copy_patient_study(source, sr)
    return sr


def _childless(root: Dataset) -> Dataset:
    stub = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            stub.add(element)
    stub.ContentSequence = []
    return stub


def _key(dataset: Dataset) -> tuple:
    """What ``dataset`` holds, as a hashable key (its elements' tags and values, nested)."""
    return tuple((element.tag, _frozen(element.value)) for element in dataset)


def _frozen(value: object) -> object:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return tuple(_key(v) if isinstance(v, Dataset) else _frozen(v) for v in value)
    return str(value)


#: what copy_patient_study writes; every one of them is the source's, never the template's
_COPIED = ("SpecificCharacterSet", "StudyInstanceUID", *PATIENT_STUDY_TYPE2, *PATIENT_STUDY_OPTIONAL)
_PLACEHOLDER_UID = "2.25.1"
#: templates kept per process (one per set of models, coding schemes and root: a handful in practice)
_MAX_TEMPLATES = 32
_templates: dict[tuple, Comprehensive3DSR] = {}


def _document_template(
    stub: Dataset,
    model_name: str,
    software_versions: Sequence[str],
    coding_schemes: Sequence[CodingSchemeIdentificationItem] | None,
) -> Comprehensive3DSR:
    """The document highdicom builds for a placeholder source with these image-independent inputs,
    built on first use and kept (``stub``: the childless root container)."""
    key = (_key(stub), model_name, tuple(software_versions), tuple(_key(item) for item in coding_schemes or ()))
    template = _templates.get(key)
    if template is None:
        placeholder = Dataset()
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(placeholder, keyword, _PLACEHOLDER_UID)
        placeholder.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        template = highdicom_document(placeholder, _childless(stub), series_instance_uid=_PLACEHOLDER_UID,
                                      sop_instance_uid=_PLACEHOLDER_UID, instance_number=1, model_name=model_name,
                                      software_versions=software_versions, coding_schemes=coding_schemes)  # fmt: skip
        if len(_templates) >= _MAX_TEMPLATES:
            _templates.clear()
        _templates[key] = template
    return template
