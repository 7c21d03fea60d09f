"""The Secondary Capture's identity and equipment attributes, as highdicom's ``SCImage`` writes them.

highdicom's constructor validates its arguments and sets some 45 attributes and the File Meta
Information: ~3 ms per overlay. All but a few are the same for every overlay a process makes with
one set of models, so :func:`sc_image` runs the constructor (:func:`highdicom_sc`) once per set of
models, with placeholder identifiers, and makes each overlay a :func:`~dicom_node.results.dataset_copy.fresh_copy`
of that template (new data elements throughout: nothing set on one overlay reaches the template or
another overlay) with the values highdicom sets per call put in as highdicom puts them: the UIDs,
Instance Number, Patient Orientation (checked against the same enumeration), the File Meta
Information Group Length, and the instance creation, content and secondary capture dates and times
and the contribution date time (``datetime.now()``, as often and in the order highdicom takes it).
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass

import numpy as np
from highdicom import PatientOrientationValuesBiped
from highdicom.sc import SCImage
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM

from dicom_node.results.common import MANUFACTURER, SC_SERIES_DESCRIPTION, SC_SERIES_NUMBER
from dicom_node.results.dataset_copy import fresh_copy
from dicom_node.results.template import set_media_storage_instance, stamp_creation

#: highdicom writes the attributes; the pixels are stored afterwards (sc.encode.store_pixels), so it gets one
_ONE_RGB_PIXEL = np.zeros((1, 1, 3), dtype=np.uint8)
#: what highdicom requires for a PATIENT coordinate system when the source has no usable orientation
#: (the SC's own Patient Orientation is set from the source afterwards: sc.build)
DEFAULT_ORIENTATION = ("L", "F")
#: placeholders of the template's per-overlay values (all replaced in every copy)
_PLACEHOLDER_UID = "1.2.3"


@dataclass(frozen=True)
class ScArguments:
    """What highdicom's SC Image constructor is given that is not the same for every overlay: the
    identifiers, the orientation it requires and the models (the template is per set of models)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    instance_number: int
    patient_orientation: tuple[str, str]
    manufacturer_model_name: str
    software_versions: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.patient_orientation) != 2:
            raise ValueError(
                f"patient_orientation needs a row and a column direction, got {self.patient_orientation!r}"
            )


def highdicom_sc(args: ScArguments) -> SCImage:
    """highdicom's SC Image (RGB, 8 bits, one placeholder pixel, Explicit VR Little Endian) for an
    overlay: its identity, equipment and image pixel attributes, and the node's values that are the
    same for every overlay (Conversion Type WSD, Burned In Annotation YES, Recognizable Visual Features
    NO, Image Type DERIVED\\SECONDARY\\OTHER). What :func:`sc_image` copies."""
    sc = SCImage(
        pixel_array=_ONE_RGB_PIXEL,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=args.study_instance_uid,
        series_instance_uid=args.series_instance_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=args.sop_instance_uid,
        instance_number=args.instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=args.patient_orientation,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SC_SERIES_DESCRIPTION,
        manufacturer_model_name=args.manufacturer_model_name,
        software_versions=list(args.software_versions),
    )
    sc.ConversionType = "WSD"  # workstation: the overlay is rendered, not digitised (highdicom: DI)
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    return sc


@functools.lru_cache(maxsize=8)
def _template(manufacturer_model_name: str, software_versions: tuple[str, ...]) -> SCImage:
    """The SC of a set of models with placeholder identifiers (never handed out: only copied)."""
    placeholders = ScArguments(_PLACEHOLDER_UID, _PLACEHOLDER_UID, _PLACEHOLDER_UID, 1, DEFAULT_ORIENTATION,
                               manufacturer_model_name, software_versions)  # fmt: skip
    sc = highdicom_sc(placeholders)
    equipment = sc.ContributingEquipmentSequence
    if len(equipment) != 1 or "ContributionDateTime" not in equipment[0]:  # highdicom's own item only
        raise RuntimeError(f"unexpected Contributing Equipment Sequence from highdicom: {equipment!r}")
    return sc


def sc_image(args: ScArguments) -> SCImage:
    """What :func:`highdicom_sc` returns for ``args`` (but the times, which are now's), made from a
    per-process template. Raises ValueError for what highdicom refuses per overlay (an orientation
    value that is not one of A, P, R, L, H, F; an Instance Number below 1)."""
    if args.instance_number < 1:
        raise ValueError('Argument "instance_number" should be a positive integer.')
    orientation = [PatientOrientationValuesBiped(v).value for v in args.patient_orientation]
    template = _template(args.manufacturer_model_name, args.software_versions)
    sop_instance_uid = args.sop_instance_uid
    sc = fresh_copy(template)
    # highdicom measures the File Meta Information as written with the SOP Instance UID: only its length differs
    set_media_storage_instance(sc, UID(sop_instance_uid))
    sc.StudyInstanceUID = str(args.study_instance_uid)
    sc.SeriesInstanceUID = str(args.series_instance_uid)
    sc.SOPInstanceUID = str(sop_instance_uid)
    sc.InstanceNumber = args.instance_number
    stamp_creation(sc)  # highdicom's SOPClass: instance creation and content date and time
    # its Contributing Equipment item (ContributingEquipment.for_highdicom)
    sc.ContributingEquipmentSequence[0].ContributionDateTime = DT(datetime.datetime.now())
    now = datetime.datetime.now()  # SCImage: SC Image module
    sc.DateOfSecondaryCapture = DA(now.date())
    sc.TimeOfSecondaryCapture = TM(now.time())
    sc.PatientOrientation = orientation
    return sc
