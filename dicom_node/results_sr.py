"""TID 1500 Measurement Report (Comprehensive 3D SR) for one analysed (or refused) chest X-ray.

Content tree (IHE AI Results style)::

    Imaging Measurement Report (TID 1500)
      Language, Observation Context: the algorithm as a DEVICE observer (TID 1004)
      Procedure Reported: SCT 399208008 "Plain chest X-ray"
      Image Library (TID 1600): the source image, with its TID 1602/1603 descriptors
      Imaging Measurements
        Measurement Group (TID 1501), image level, finding type SCT 233604007 "Pneumonia"
          Algorithm Identification (classification bundle)
          Probability (DCM 122157), unit UCUM "1"          + Algorithm Identification
          Threshold Value (DCM 122411), unit UCUM "1"      + Algorithm Identification
          Probability of <class> (99CXRAI), unit UCUM "1"  + Algorithm Identification, one per RSNA class
          Pneumonia = Present (SCT 52101004) | Absent (SCT 272519000)
            -- or, not analysed: Pneumonia = Not Evaluated (SCT 373121007) + Comment text with the reason
        Measurement Group (TID 1410), one per box, finding type DCM 112001 "Opacity", site SCT 39607008 "Lung"
          Image Region: closed POLYLINE, 5 points, source-image pixel coordinates (Box.polyline())
          Algorithm Identification (detection bundle)
          Probability (the box score)                      + Algorithm Identification
          Area in mm2 (when the box has a mm size)         + Algorithm Identification

Codes: SNOMED CT 233604007 |Pneumonia (disorder)|, DCM 112001 "Opacity" (the Chest CAD
SR code of CID 6102, used for the RSNA "Lung Opacity" class), SCT 52101004 / 272519000
Present / Absent (CID 240), SCT 373121007 "Not Evaluated", DCM 122157 "Probability",
DCM 122411 "Threshold Value", SCT 399208008 |Plain chest X-ray (procedure)|.

The per-class probabilities have no standard code: they use the private coding scheme
``99CXRAI`` (:data:`CLASS_PROBABILITY_CONCEPTS`, one concept per entry of
``models.findings.RSNA_CLASSES``), declared in the Coding Scheme Identification Sequence
of every SR that uses it (:func:`private_coding_scheme`).
"""

from __future__ import annotations

import logging
import re

import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageContentItem,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
    UIDRefContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node import uids
from dicom_node.results_common import (
    MANUFACTURER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    check_source_matches,
    classifier_model,
    copy_patient_study,
    detector_model,
    instance_number,
    is_decided_positive,
    model_names,
    models_label,
    software_versions,
)
from models.findings import RSNA_CLASSES, Box, Findings, ModelInfo

logger = logging.getLogger(__name__)

PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
LUNG_OPACITY = CodedConcept("112001", "DCM", "Opacity")
LUNG = CodedConcept("39607008", "SCT", "Lung")
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
NOT_EVALUATED = CodedConcept("373121007", "SCT", "Not Evaluated")
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
THRESHOLD_VALUE = CodedConcept("122411", "DCM", "Threshold Value")
AREA = CodedConcept("42798000", "SCT", "Area")
COMMENT = CodedConcept("121106", "DCM", "Comment")
CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
SQUARE_MM = CodedConcept("mm2", "UCUM", "square millimeter")
PIXELS = CodedConcept("{pixels}", "UCUM", "Pixels")

#: Private coding scheme of the node's own codes (DICOM reserves the "99" prefix for private schemes).
PRIVATE_SCHEME = "99CXRAI"
#: Code value (SH, at most 16 characters) of the probability concept of each RSNA class.
_CLASS_CODE_VALUES = {
    "Normal": "P-NORMAL",
    "No Lung Opacity / Not Normal": "P-NOT-NORMAL",
    "Lung Opacity": "P-LUNG-OPACITY",
}
if set(_CLASS_CODE_VALUES) != set(RSNA_CLASSES):  # guards an edit of RSNA_CLASSES
    raise RuntimeError(f"no private code for every RSNA class: {sorted(_CLASS_CODE_VALUES)} vs {RSNA_CLASSES}")
#: "Probability of <class>" concept of each RSNA class, in RSNA_CLASSES order (other classes: see
#: :func:`class_probability_concept`).
CLASS_PROBABILITY_CONCEPTS: dict[str, CodedConcept] = {
    name: CodedConcept(_CLASS_CODE_VALUES[name], PRIVATE_SCHEME, f"Probability of {name}") for name in RSNA_CLASSES
}

_MODALITY_CODES = {
    "CR": CodedConcept("CR", "DCM", "Computed Radiography"),
    "DX": CodedConcept("DX", "DCM", "Digital Radiography"),
    "RG": CodedConcept("RG", "DCM", "Radiographic imaging"),
    "OT": CodedConcept("OT", "DCM", "Other"),
}


def build_sr(source: Dataset, findings: Findings) -> Comprehensive3DSR:
    """Build the TID 1500 Comprehensive 3D SR for ``findings`` on ``source``.

    The image-level Present/Absent evaluation is the engine's decision (``findings.positive``);
    its threshold is recorded in the report. Raises ValueError if the findings do not belong
    to ``source``.
    """
    check_source_matches(source, findings)
    models = findings.models

    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=uids.device_observer_uid(models),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=model_names(models),
            serial_number=models_label(models)[:64],
        ),
    )
    groups: list[MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations]
    groups = [_image_level_group(source, findings)]
    groups += [_box_group(source, findings, i, box) for i, box in enumerate(findings.boxes)]
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=groups,
    )
    _insert_image_library(report, source)

    sr = Comprehensive3DSR(
        evidence=[_evidence_view(source)],
        content=report[0],
        series_instance_uid=uids.series_uid(source.StudyInstanceUID, findings, uids.ResultKind.SR),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.instance_uid(findings, uids.ResultKind.SR),
        instance_number=instance_number(source),
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=model_names(models),
        software_versions=software_versions(models),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=None,
        coding_schemes=[private_coding_scheme()] if findings.analysed else None,
    )
    copy_patient_study(source, sr)
    logger.info(
        "built SR",
        extra={
            "source_sop_instance_uid": findings.sop_instance_uid,
            "sr_sop_instance_uid": str(sr.SOPInstanceUID),
            "analysed": findings.analysed,
            "n_boxes": len(findings.boxes),
        },
    )
    return sr


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """A new Coding Scheme Identification item declaring :data:`PRIVATE_SCHEME` (PS3.3 C.12.1.1.4)."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="cxr-ai-node private codes",
        version="1",
        responsible_organization=MANUFACTURER,
    )


def _algorithm_id(model: ModelInfo | None) -> AlgorithmIdentification | None:
    if model is None:
        return None
    return AlgorithmIdentification(name=model.name, version=model.label, manufacturer=MANUFACTURER)


def _finding_concept(findings: Findings) -> CodedConcept:
    """What the classifier measures (from its bundle), or "Pneumonia" for a not-analysed image."""
    code = findings.finding
    return PNEUMONIA if code is None else CodedConcept(code.value, code.scheme, code.meaning)


def _image_level_group(source: Dataset, findings: Findings) -> MeasurementsAndQualitativeEvaluations:
    model = classifier_model(findings)
    tracking = TrackingIdentifier(
        uid=uids.tracking_uid(findings, "image"),
        identifier="Pneumonia (image level)",
    )
    source_ref = SourceImageForMeasurementGroup(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
    )
    if not findings.analysed:
        group = MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=PNEUMONIA,
            algorithm_id=_algorithm_id(model),
            qualitative_evaluations=[QualitativeEvaluation(PNEUMONIA, NOT_EVALUATED)],
            source_images=[source_ref],
        )
        group[0].ContentSequence.append(
            TextContentItem(
                name=COMMENT,
                value=f"not analysed: {findings.not_analysed_reason}"[:1024],
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        )
        return group

    assert findings.probability is not None and findings.threshold is not None  # analysed Findings
    positive = is_decided_positive(findings)
    threshold = findings.threshold
    finding = _finding_concept(findings)
    measurements = [
        Measurement(
            name=PROBABILITY,
            value=float(findings.probability),
            unit=NO_UNITS,
            algorithm_id=_algorithm_id(model),
        ),
        Measurement(name=THRESHOLD_VALUE, value=threshold, unit=NO_UNITS, algorithm_id=_algorithm_id(model)),
    ]
    measurements += _class_probability_measurements(findings, model)
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding,
        algorithm_id=_algorithm_id(model),
        measurements=measurements,
        qualitative_evaluations=[QualitativeEvaluation(finding, PRESENT if positive else ABSENT)],
        source_images=[source_ref],
    )


def class_probability_concept(class_name: str) -> CodedConcept:
    """The private "Probability of <class>" concept of one classifier class (:data:`PRIVATE_SCHEME`)."""
    value = _CLASS_CODE_VALUES.get(class_name)
    if value is None:
        value = ("P-" + re.sub(r"[^A-Z0-9]+", "-", class_name.upper()).strip("-"))[:16].rstrip("-")
    return CodedConcept(value, PRIVATE_SCHEME, f"Probability of {class_name}"[:64])


def _class_probability_measurements(findings: Findings, model: ModelInfo | None) -> list[Measurement]:
    """One "Probability of <class>" measurement per classifier class, in the classifier's order."""
    return [
        Measurement(
            name=class_probability_concept(name),
            value=float(p),
            unit=NO_UNITS,
            algorithm_id=_algorithm_id(model),
        )
        for name, p in findings.class_probabilities.items()
    ]


def _box_group(
    source: Dataset, findings: Findings, index: int, box: Box
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    model = detector_model(findings)
    region = ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(box.polyline(), dtype=np.float64),
        source_image=SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        ),
    )
    measurements = [Measurement(name=PROBABILITY, value=float(box.score), unit=NO_UNITS, algorithm_id=_algorithm_id(model))]
    if box.mm is not None:
        measurements.append(
            Measurement(
                name=AREA,
                value=float(box.mm.width * box.mm.height),
                unit=SQUARE_MM,
                algorithm_id=_algorithm_id(model),
            )
        )
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=uids.tracking_uid(findings, f"box-{index}"),
            identifier=f"Lung opacity {index + 1}",
        ),
        referenced_region=region,
        finding_type=LUNG_OPACITY,
        finding_sites=[FindingSite(anatomic_location=LUNG)],
        algorithm_id=_algorithm_id(model),
        measurements=measurements,
    )


def _evidence_view(source: Dataset) -> Dataset:
    """The identifying attributes highdicom needs from the source (no pixels, no patient data).

    Patient and study attributes are copied afterwards by :func:`copy_patient_study`,
    verbatim, so highdicom's value checks never reject a source with unusual values.
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
    acq = RelationshipTypeValues.HAS_ACQ_CONTEXT
    items: list = [CodeContentItem(name=codes.DCM.Modality, value=_modality_code(source), relationship_type=acq)]
    if source.get("FrameOfReferenceUID"):
        items.append(UIDRefContentItem(name=codes.DCM.FrameOfReferenceUID, value=source.FrameOfReferenceUID, relationship_type=acq))
    items.append(NumContentItem(name=codes.DCM.PixelDataRows, value=int(source.Rows), unit=PIXELS, relationship_type=acq))
    items.append(NumContentItem(name=codes.DCM.PixelDataColumns, value=int(source.Columns), unit=PIXELS, relationship_type=acq))
    orientation = source.get("PatientOrientation")
    if orientation is not None and not isinstance(orientation, str) and len(orientation) == 2 and all(orientation):
        items.append(TextContentItem(name=codes.DCM.PatientOrientationRow, value=str(orientation[0]), relationship_type=acq))
        items.append(TextContentItem(name=codes.DCM.PatientOrientationColumn, value=str(orientation[1]), relationship_type=acq))
    spacing = source.get("ImagerPixelSpacing") or source.get("PixelSpacing")
    if spacing is not None and not isinstance(spacing, (str, float)) and len(spacing) == 2:
        mm = codes.UCUM.Millimeter
        items.append(NumContentItem(name=codes.DCM.HorizontalPixelSpacing, value=float(spacing[1]), unit=mm, relationship_type=acq))
        items.append(NumContentItem(name=codes.DCM.VerticalPixelSpacing, value=float(spacing[0]), unit=mm, relationship_type=acq))
    return items


def _insert_image_library(report: MeasurementReport, source: Dataset) -> None:
    """Add a TID 1600 Image Library for the source, just before the Imaging Measurements container.

    Built here rather than with ``highdicom.sr.ImageLibrary`` because that class requires
    Patient Orientation and Imager Pixel Spacing for every CR/DX image, which many CXRs lack.
    """
    image_item = ImageContentItem(
        name=CodedConcept("260753009", "SCT", "Source"),
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    image_item.ContentSequence = ContentSequence(_library_descriptors(source))
    group = ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=RelationshipTypeValues.CONTAINS)
    group.ContentSequence = ContentSequence([image_item])
    library = ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=RelationshipTypeValues.CONTAINS)
    library.ContentSequence = ContentSequence([group])
    root_items = report[0].ContentSequence
    position = next(
        i for i, item in enumerate(root_items) if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    )  # DCM 126010 "Imaging Measurements"
    root_items.insert(position, library)


__all__ = ["CLASS_PROBABILITY_CONCEPTS", "PRIVATE_SCHEME", "build_sr", "class_probability_concept", "private_coding_scheme"]
