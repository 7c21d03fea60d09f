"""Fallback for destinations that refuse a result's compressed transfer syntax.

The node stores a result as encoded (e.g. the Secondary Capture in JPEG Baseline); a destination that
accepts the SOP class only in an uncompressed transfer syntax would refuse it for good. The sender
then proposes, beside each compressed (SOP class, transfer syntax) pair, the same class in Explicit VR
Little Endian, and sends a decompressed copy on that context when only it is accepted. The copy keeps
the SOP Instance UID (it is the same result, re-encoded; a lossy original stays marked by its Lossy
Image Compression attributes) and colour JPEGs become RGB.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, UncompressedTransferSyntaxes

#: transfer syntaxes that are not compressed (pydicom's list: the little/big endian and deflated
#: ones): sent as stored, no fallback needed
UNCOMPRESSED: frozenset[str] = frozenset(str(uid) for uid in UncompressedTransferSyntaxes)
#: what a refused compressed item is sent as
FALLBACK_TRANSFER_SYNTAX = str(ExplicitVRLittleEndian)


def needs_fallback_context(transfer_syntax: str) -> bool:
    """Whether an item in ``transfer_syntax`` gets an uncompressed context proposed beside its own."""
    return str(transfer_syntax) not in UNCOMPRESSED


def uncompressed_copy(path: str | Path) -> Dataset:
    """The data set of ``path`` with its pixel data decompressed, encoded as Explicit VR Little
    Endian, same SOP Instance UID. Raises ``ValueError`` naming the file when it cannot be decoded."""
    ds = dcmread(str(path))
    try:
        ds.decompress(generate_instance_uid=False)  # YBR JPEG -> RGB; file meta -> Explicit VR LE
    except Exception as exc:  # pydicom raises several types for undecodable pixel data
        raise ValueError(f"cannot decompress {str(path)!r} for an uncompressed destination: {exc}") from exc
    if str(ds.file_meta.TransferSyntaxUID) != FALLBACK_TRANSFER_SYNTAX:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
