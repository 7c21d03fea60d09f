"""What pynetdicom's DIMSE layer writes, without pydicom's generic writer (same bytes): command sets,
and the file meta of a C-STORE received into a file.

pynetdicom encodes every DIMSE message's command set (Implicit VR Little Endian, ~9 elements of
group 0000) twice: once only to compute its Command Group Length, once to send it. pydicom's
``write_dataset`` spends ~0.15 ms on such a set (a buffer, VR lookups and value conversion per
element): ~0.6 ms of CPU per C-STORE, request and response together. :func:`encode` writes the same
bytes directly for the plain cases (group 0000 elements of VR UL, US, UI, AE, CS, SH or LO with one
ASCII or integer value, or empty) and hands everything else to pynetdicom's own ``encode``, with its
logging and its ``None`` on failure. :func:`install` puts it in place in ``pynetdicom.dimse_messages``
(the only module that encodes command sets; pynetdicom pinned ``==3.0.4``, see
``dicom_node/scp/chunked.py``); ``tests/test_command_set.py`` compares both on every DIMSE message
kind pynetdicom builds.

When a C-STORE is received into a file (the node's chunked receive), pynetdicom writes the file's
meta group with pydicom's ``write_file_meta_info`` (~0.3 ms): :func:`write_file_meta_info` writes the
same bytes with :func:`dicom_node.storage.fast_write.file_meta_group`.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import pack
from typing import Any

import pynetdicom.dimse_messages as _dimse_messages
import pynetdicom.dsutils as _dsutils
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info as _pydicom_write_file_meta_info

from dicom_node.storage.fast_write import file_meta_group

#: pynetdicom's own encoder (what :func:`encode` hands the other cases to)
ORIGINAL: Callable[..., bytes | None] = _dsutils.encode
_PADDED_WITH_SPACE = frozenset({"AE", "CS", "SH", "LO"})


class _NotPlain(Exception):
    """An element this module does not write: pynetdicom's encoder writes the whole set."""


def _value_bytes(vr: str, value: object) -> bytes:
    if value is None or value == "":
        return b""
    if vr == "US" and type(value) is int and 0 <= value <= 0xFFFF:
        return pack("<H", value)
    if vr == "UL" and type(value) is int and 0 <= value <= 0xFFFFFFFF:
        return pack("<L", value)
    if isinstance(value, str) and value.isascii() and "\\" not in value:
        if vr == "UI":
            data = value.encode("ascii")
            return data + b"\x00" if len(data) % 2 else data
        if vr in _PADDED_WITH_SPACE:
            data = value.encode("ascii")
            return data + b" " if len(data) % 2 else data
    raise _NotPlain(vr)


def _plain_bytes(ds: Dataset) -> bytes:
    out = bytearray()
    elements = ds._dict  # pydicom's element store, keyed by int tags (pydicom 3.0.x, pinned)
    for tag in sorted(elements):
        element = elements[tag]
        if type(element) is not DataElement or tag >> 16 != 0:
            raise _NotPlain(f"{tag:08X}")
        data = _value_bytes(element.VR, element.value)
        out += pack("<HHL", tag >> 16, tag & 0xFFFF, len(data))
        out += data
    return bytes(out)


def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
    """pynetdicom's ``dsutils.encode``: the same bytes, written directly for a plain command set."""
    if is_implicit_vr and is_little_endian and not deflated:
        try:
            return _plain_bytes(ds)
        except _NotPlain:
            pass
    return ORIGINAL(ds, is_implicit_vr, is_little_endian, deflated)


def write_file_meta_info(fp: Any, file_meta: FileMetaDataset, enforce_standard: bool = True) -> None:
    """pydicom's ``write_file_meta_info``: the same bytes (and changes to ``file_meta``), in one write."""
    if not enforce_standard:
        _pydicom_write_file_meta_info(fp, file_meta, enforce_standard)
        return
    fp.write(file_meta_group(file_meta))


def install() -> bool:
    """Use :func:`encode` for the command sets pynetdicom encodes and :func:`write_file_meta_info`
    for the meta of the files it receives into (idempotent); False when ``pynetdicom.dimse_messages``
    does not hold pynetdicom's and pydicom's functions (left as it is)."""
    replacements = (("encode", ORIGINAL, encode), ("write_file_meta_info", _pydicom_write_file_meta_info,
                                                     write_file_meta_info))  # fmt: skip
    if any(getattr(_dimse_messages, name, None) not in (old, new) for name, old, new in replacements):
        return False
    for name, _old, new in replacements:
        setattr(_dimse_messages, name, new)
    return True
