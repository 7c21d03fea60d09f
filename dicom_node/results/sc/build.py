"""Secondary Capture overlay: the source CXR with the AI findings burned in (RGB, not for diagnosis).

The pixel data is the canvas of :func:`dicom_node.results.sc.render.render_overlay`: a text band above
the image, the image (the source, downscaled only beyond MAX_SIDE), a results band below it. It is
not the source's pixel grid, so the SC carries no pixel spacing and says so
(Spatial Locations Preserved NO); Patient Orientation stays true (the row and column directions
are the source's) and is copied when the source has one.
"""

from __future__ import annotations

import logging

from highdicom.sc import SCImage
from pydicom.dataset import Dataset

from dicom_node.results import uids
from dicom_node.results.common import (
    check_source_matches,
    copy_patient_study,
    instance_number,
    model_names,
    models_label,
    patient_orientation,
    software_versions,
)
from dicom_node.results.sc.attributes import DEFAULT_ORIENTATION, ScArguments, sc_image
from dicom_node.results.sc.encode import DEFAULT_SC_ENCODING, ScEncoding, store_pixels
from dicom_node.results.sc.render import MAX_SIDE, render_overlay
from models.findings import Findings
from models.imaging.dicom_image import SourceImage, load_source_image

logger = logging.getLogger(__name__)

#: DCM 121322 "Source image for image processing operation" (CID 7202), purpose of the source reference.
_SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")


def build_sc(
    source: Dataset,
    findings: Findings,
    *,
    image: SourceImage | None = None,
    max_side: int = MAX_SIDE,
    encoding: ScEncoding = DEFAULT_SC_ENCODING,
) -> SCImage:
    """Build the Secondary Capture overlay for an analysed image.

    ``image`` is the decoded, windowed source (``models.imaging.dicom_image.load_source_image(source)``
    when not given). ``encoding``: how the pixels are stored (JPEG Baseline by default:
    :mod:`dicom_node.results.sc.encode`). Raises ValueError for a not-analysed Findings (no overlay is made
    for those) or findings that do not belong to ``source``; ``models.errors.ImageDecodeError``
    if the source pixels cannot be decoded.
    """
    check_source_matches(source, findings)
    if not findings.analysed:
        raise ValueError(f"no SC overlay for not-analysed SOP Instance {findings.sop_instance_uid}")
    if image is None:
        image = load_source_image(source)
    if image.sop_instance_uid != findings.sop_instance_uid:
        raise ValueError(
            f"source image is SOP Instance {image.sop_instance_uid}, findings are for {findings.sop_instance_uid}"
        )
    models = findings.models
    overlay = render_overlay(image.pixels, findings, models_label=models_label(models), max_side=max_side)
    layout = overlay.layout

    orientation = patient_orientation(source)
    # highdicom needs an orientation for PATIENT, one letter per direction (PatientOrientationValuesBiped):
    # an oblique value ("FL"), and the source's when it has none, are set below
    highdicom_orientation = (
        orientation if orientation is not None and all(len(v) == 1 for v in orientation) else DEFAULT_ORIENTATION
    )
    sc = sc_image(
        ScArguments(
            study_instance_uid=source.StudyInstanceUID,
            series_instance_uid=uids.series_uid(source.StudyInstanceUID, findings, uids.ResultKind.SC),
            sop_instance_uid=uids.instance_uid(findings, uids.ResultKind.SC),
            instance_number=instance_number(source),
            patient_orientation=highdicom_orientation,
            manufacturer_model_name=model_names(models),
            software_versions=tuple(software_versions(models)),
        )
    )
    sc.Rows, sc.Columns = layout.canvas_rows, layout.image_columns
    copy_patient_study(source, sc)
    # Type 2: the source's value when it has a valid one, otherwise empty (never invented)
    sc.PatientOrientation = list(orientation) if orientation else []
    if source.get("Laterality"):
        sc.Laterality = source.Laterality
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    # Conversion Type, Burned In Annotation, Recognizable Visual Features, Image Type: sc.attributes
    sc.DerivationDescription = (
        f"AI findings of {models_label(models)} burned into the windowed source image"
        + (f", downscaled by {layout.scale:.4f}" if layout.scale < 1.0 else "")
        + f"; the image is rows {layout.image_top + 1}-{layout.image_bottom} of this one, between text bands"
        + "; not for primary diagnosis"
    )[:1024]
    sc.ReferencedImageSequence = [_reference(source, with_purpose=False)]
    sc.SourceImageSequence = [_reference(source, with_purpose=True)]
    # once lossy, always flagged (PS3.3 C.7.6.1.1.5): a derived image inherits the source's history
    if str(source.get("LossyImageCompression", "")) == "01":
        sc.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in source:
                sc[keyword] = source[keyword]
    store_pixels(sc, overlay.rgb, encoding, rgbx=overlay.rgbx)  # JPEG: compressed, flagged lossy after the source's history
    logger.info(
        "built SC overlay",
        extra={
            "source_sop_instance_uid": findings.sop_instance_uid,
            "sc_sop_instance_uid": str(sc.SOPInstanceUID),
            "rows": layout.canvas_rows,
            "columns": layout.image_columns,
            "n_boxes": len(findings.boxes),
            "heatmap": overlay.text.heatmap is not None,
            "transfer_syntax": str(sc.file_meta.TransferSyntaxUID),
        },
    )
    return sc


def _reference(source: Dataset, *, with_purpose: bool) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if with_purpose:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _SOURCE_PURPOSE
        item.PurposeOfReferenceCodeSequence = [code]
        # General Image module: the overlay's pixel grid is not the source's (text bands, maybe downscaled)
        item.SpatialLocationsPreserved = "NO"
    return item

