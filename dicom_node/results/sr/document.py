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

from collections.abc import Sequence

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
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.results.common import (
    MANUFACTURER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    copy_patient_study,
)
from dicom_node.results.sr.codes import PIXELS, SOURCE
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


def _modality_code(source: Dataset) -> CodedConcept:
    modality = str(source.get("Modality") or "OT")
    return _MODALITY_CODES.get(modality, CodedConcept(modality, "DCM", modality))


def _library_descriptors(source: Dataset) -> list:
    items: list = [CodeContentItem(name=codes.DCM.Modality, value=_modality_code(source), relationship_type=_ACQ)]
    if source.get("FrameOfReferenceUID"):
        items.append(UIDRefContentItem(name=codes.DCM.FrameOfReferenceUID, value=source.FrameOfReferenceUID,
                                       relationship_type=_ACQ))  # fmt: skip
    items.append(NumContentItem(name=codes.DCM.PixelDataRows, value=int(source.Rows), unit=PIXELS, relationship_type=_ACQ))
    items.append(NumContentItem(name=codes.DCM.PixelDataColumns, value=int(source.Columns), unit=PIXELS,
                                relationship_type=_ACQ))  # fmt: skip
    orientation = source.get("PatientOrientation")
    if orientation is not None and not isinstance(orientation, str) and len(orientation) == 2 and all(orientation):
        items.append(TextContentItem(name=codes.DCM.PatientOrientationRow, value=str(orientation[0]), relationship_type=_ACQ))
        items.append(TextContentItem(name=codes.DCM.PatientOrientationColumn, value=str(orientation[1]),
                                     relationship_type=_ACQ))  # fmt: skip
    spacing, _ = pixel_spacing(source, RECEPTOR_PLANE)  # DCM 111026/111066: at the image receptor
    if spacing is not None:
        mm = codes.UCUM.Millimeter
        items.append(NumContentItem(name=codes.DCM.HorizontalPixelSpacing, value=float(spacing[1]), unit=mm,
                                    relationship_type=_ACQ))  # fmt: skip
        items.append(NumContentItem(name=codes.DCM.VerticalPixelSpacing, value=float(spacing[0]), unit=mm,
                                    relationship_type=_ACQ))  # fmt: skip
    return items


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
    """
    children = root.ContentSequence
    stub = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            stub.add(element)
    stub.ContentSequence = []
    sr = Comprehensive3DSR(
        evidence=[evidence_view(source)],
        content=stub,
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
