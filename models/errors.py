"""Exception types of the inference core (``models``).

Everything the core raises on purpose derives from :class:`InferenceCoreError`, so a
caller (the engine, the DICOM node) can tell "this instance cannot be analysed" from a bug.
"""

from __future__ import annotations

UNKNOWN_UID = "<unknown>"


def sop_uid_of(ds: object) -> str:
    """The SOP Instance UID an error message names: ``ds``'s, or :data:`UNKNOWN_UID` (never raises)."""
    try:
        uid = ds.get("SOPInstanceUID", None)  # type: ignore[attr-defined]
        return str(uid) if uid else UNKNOWN_UID
    except Exception:  # a broken element must not hide the real error (str() of one can raise too)
        return UNKNOWN_UID


class InferenceCoreError(Exception):
    """Base class of all errors raised on purpose by the inference core."""


class ImageDecodeError(InferenceCoreError):
    """The pixel data of one instance cannot be turned into a :class:`~models.imaging.dicom_image.SourceImage`.

    The message always names the SOP Instance UID (``"<unknown>"`` when the dataset has none).
    """

    def __init__(self, sop_instance_uid: str | None, reason: str) -> None:
        self.sop_instance_uid: str = str(sop_instance_uid) if sop_instance_uid else UNKNOWN_UID
        self.reason: str = str(reason)
        super().__init__(f"cannot decode SOP Instance {self.sop_instance_uid}: {self.reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across process pools
        return (type(self), (self.sop_instance_uid, self.reason))


class UnsupportedImageError(ImageDecodeError):
    """The instance is well formed but of a kind the core does not handle
    (e.g. an unsupported Photometric Interpretation, too many pixels, 1-bit or float pixel data)."""


class BundleError(InferenceCoreError):
    """A MONAI bundle folder is missing, malformed, or its weights do not fit its network."""
