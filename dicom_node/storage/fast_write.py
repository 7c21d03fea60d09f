"""Fast DICOM file writer for Explicit VR Little Endian data sets, byte-identical to pydicom's.

``pydicom.dcmwrite(..., enforce_file_format=True)`` spends most of its time per element (VR
correction, charset conversion, a buffer per element): ~14 ms for one of the node's SRs, which hold
~460 elements in ~125 nested data sets. :func:`encode_file` writes the same bytes in a single pass
over the tree for the elements whose encoding is plain (ASCII text, numbers, bytes, sequences), hands
every other element to pydicom's own ``write_data_element`` (person names, dates as objects,
non-ASCII text, encapsulated pixel data, values too long for a 16-bit length, ...), and falls back to
``dcmwrite`` for the whole file when the data set needs what only pydicom's writer does there: a
transfer syntax that is not explicit VR little endian (or is deflated or private), elements still raw
(read from a file and never parsed), or ambiguous VRs (``US or SS``, ``OB or OW``) to resolve. The
preamble and file meta are written by pydicom's own functions, so the result never differs from
``dcmwrite`` (``tests/test_fast_write.py`` compares both, byte for byte).
"""

from __future__ import annotations

import io
from copy import deepcopy
from struct import pack, pack_into
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

__all__ = ["encode_file", "file_meta_group", "register_immutable", "set_fresh"]

_DEFAULT_ENCODING = "iso8859"
#: python codecs (as pydicom's ``convert_encodings`` names them) under which ASCII text encodes as itself
_ASCII_SAFE = frozenset({"iso8859", "latin_1", "UTF8"})
#: VRs with a 32-bit length field in explicit VR (PS3.5 7.1.2)
_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
#: written like pydicom's ``write_string`` (always iso8859, padding space; UI pads with NUL)
_STRING = frozenset({"AE", "AS", "CS", "UR", "UI"})
#: written like pydicom's ``write_text`` (the data set's character set)
_TEXT = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_NUMBER_STRING = frozenset({"DS", "IS"})
_DATE_TIME = frozenset({"DA", "DT", "TM"})
_NUMBERS = {"FD": "d", "FL": "f", "SL": "l", "SV": "q", "UL": "L", "US": "H", "UV": "Q"}
_BYTES = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_ITEM = pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
_ITEM_DELIMITER = pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQUENCE_DELIMITER = pack("<HHL", 0xFFFE, 0xE0DD, 0)
_SPECIFIC_CHARACTER_SET = 0x00080005
_PIXEL_DATA = 0x7FE00010
_GROUP_LENGTH = 0x00020000
#: File Meta Information Version, Implementation Class UID: pydicom's validate_file_meta sets them when empty
_FILLED_WHEN_EMPTY = frozenset({0x00020001, 0x00020012})


class _Unsupported(Exception):
    """The data set needs pydicom's writer as a whole (raw or ambiguous elements)."""


_headers: dict[tuple[int, str], bytes] = {}
_converted: dict[Any, list[str]] = {}

#: Sequence items registered as never changing (see :func:`register_immutable`), by id; the registry
#: holds them, so an id is never reused while it is here
_immutable: dict[int, Dataset] = {}
#: their encoded bodies, by (id, the character sets they are written under)
_encoded_items: dict[tuple[int, tuple[str, ...]], bytes] = {}
#: registered items kept at most (the registry is emptied when full: only speed is lost)
MAX_IMMUTABLE = 4096


def register_immutable(*items: Dataset) -> None:
    """Declare sequence items that nobody changes any more (shared content items: the SR builders'
    per-process constants): each is encoded once per character set and its bytes reused wherever it
    appears. Changing a registered item afterwards would write its old bytes: never do it."""
    if len(_immutable) + len(items) > MAX_IMMUTABLE:
        _immutable.clear()
        _encoded_items.clear()
    for item in items:
        _immutable[id(item)] = item


def _header(tag: int, vr: str) -> bytes:
    """Tag + VR (+ the 2 reserved bytes of a 32-bit length VR) of an element."""
    key = (tag, vr)
    h = _headers.get(key)
    if h is None:
        h = pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii") + (b"\x00\x00" if vr in _LONG else b"")
        if len(_headers) < 20000:
            _headers[key] = h
    return h


def _convert(encodings: Any) -> list[str]:
    """``convert_encodings`` (memoised for the usual str / list values)."""
    key = encodings if isinstance(encodings, str) or encodings is None else tuple(encodings)
    try:
        return _converted[key]
    except (KeyError, TypeError):
        pass
    converted = convert_encodings(encodings or [_DEFAULT_ENCODING])
    if len(_converted) < 256:
        try:
            _converted[key] = converted
        except TypeError:
            pass
    return converted


def _joined_ascii(value: Any) -> str | None:
    """``value`` (a str, or a list/tuple/MultiValue of str) joined with backslashes, if all ASCII; else None."""
    if isinstance(value, str):
        return value if value.isascii() else None
    if type(value) in (list, tuple, MultiValue) and value and all(isinstance(v, str) for v in value):
        joined = "\\".join(value)
        return joined if joined.isascii() else None
    return None


def _number_string(value: Any) -> str | None:
    """pydicom's ``write_number_string`` text of a DS/IS value (None when it would not be ASCII)."""
    if type(value) in (list, tuple, MultiValue):
        text = "\\".join(x.original_string if hasattr(x, "original_string") else str(x) for x in value)
    elif hasattr(value, "original_string"):
        text = value.original_string
    else:
        text = str(value)
    return text if text.isascii() else None


def _is_empty(value: Any) -> bool | None:
    """pydicom's ``DataElement.is_empty`` for the value types handled here (None: another type)."""
    if value is None:
        return True
    t = type(value)
    if t in (list, tuple, MultiValue, bytes, bytearray) or isinstance(value, str):
        return len(value) == 0
    if isinstance(value, int | float):
        return False
    return None


def _delegate(out: bytearray, elem: DataElement, encodings: Any) -> None:
    """One element written by pydicom itself."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, elem, encodings)
    out += fp.getvalue()


def _value_bytes(vr: str, value: Any, ascii_text: bool) -> bytes | None:
    """The encoded, padded value of a non-empty element, or None to let pydicom write it."""
    if vr in _STRING or (vr in _DATE_TIME and isinstance(value, str)):
        text = _joined_ascii(value)
        if text is None:
            return None
        if len(text) % 2:
            text += "\x00" if vr == "UI" else " "
        return text.encode("ascii")
    if vr in _TEXT:
        if not ascii_text:
            return None
        text = _joined_ascii(value)
        if text is None:
            return None
        data = text.encode("ascii")
        return data + b" " if len(data) % 2 else data
    if vr in _NUMBER_STRING:
        text = _number_string(value)
        if text is None:
            return None
        if len(text) % 2:
            text += " "
        return text.encode("ascii")
    fmt = _NUMBERS.get(vr)
    if fmt is not None:
        try:
            if hasattr(value, "append"):
                return pack(f"<{len(value)}{fmt}", *value)
            return pack("<" + fmt, value)
        except Exception:
            return None  # pydicom raises its own error for it
    if vr in _BYTES and type(value) in (bytes, bytearray):
        return bytes(value) + b"\x00" if len(value) % 2 else bytes(value)
    return None


def _write_dataset(out: bytearray, dataset: Dataset, parent_encoding: Any) -> None:
    """pydicom's ``write_dataset`` for explicit VR little endian (see the module docstring)."""
    elements = dataset._dict
    charset = elements.get(_SPECIFIC_CHARACTER_SET)
    if charset is None:
        encodings = parent_encoding
    else:
        if type(charset) is not DataElement:
            raise _Unsupported("raw SpecificCharacterSet")
        encodings = charset.value
    ascii_text = None  # computed on the first text element
    for tag in sorted(elements):
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue  # retired group length: never written (PS3.5 7.2)
        elem = elements[tag]
        if type(elem) is not DataElement:
            raise _Unsupported(f"raw element {tag:08X}")
        vr = elem.VR
        if vr is None or len(vr) != 2:
            raise _Unsupported(f"ambiguous VR {vr!r} of {tag:08X}")
        value = elem.value
        if vr == "SQ":
            undefined = elem.is_undefined_length
            out += _header(tag, vr)
            start = len(out)
            out += b"\xff\xff\xff\xff"
            if value:
                child_encoding = _convert(encodings)
                for item in value:
                    out += _ITEM
                    item_start = len(out)
                    if id(item) in _immutable:
                        key = (id(item), tuple(child_encoding))
                        body = _encoded_items.get(key)
                        if body is None:
                            _write_dataset(out, item, child_encoding)
                            _encoded_items[key] = bytes(out[item_start:])
                        else:
                            out += body
                    else:
                        _write_dataset(out, item, child_encoding)
                    if getattr(item, "is_undefined_length_sequence_item", False):
                        out += _ITEM_DELIMITER
                    else:
                        pack_into("<L", out, item_start - 4, len(out) - item_start)
            if undefined:
                out += _SEQUENCE_DELIMITER
            else:
                pack_into("<L", out, start, len(out) - start - 4)
            continue
        empty = _is_empty(value)
        if empty is None or elem.is_undefined_length or elem.is_buffered:
            _delegate(out, elem, encodings)
            continue
        if empty:
            data = b""
        else:
            if ascii_text is None and vr in _TEXT:
                converted = _convert(encodings)
                ascii_text = len(converted) == 1 and converted[0] in _ASCII_SAFE
            data = _value_bytes(vr, value, bool(ascii_text))
            if data is None or (vr not in _LONG and len(data) > 0xFFFF):
                _delegate(out, elem, encodings)
                continue
        out += _header(tag, vr)
        out += pack("<L", len(data)) if vr in _LONG else pack("<H", len(data))
        out += data


def _own_copy(file_meta: FileMetaDataset) -> FileMetaDataset:
    """A file meta holding ``file_meta``'s elements, less its group length: pydicom's writer sets the
    group length, and this function's caller the two Media Storage UIDs, as new elements of the copy,
    so the caller's elements are never changed (a deep copy did the same, at ~0.2 ms a file)."""
    if any(type(element) is not DataElement for element in file_meta._dict.values()):
        return deepcopy(file_meta)  # raw elements (a file meta as read): pydicom's conversion, on a copy
    copy = FileMetaDataset()
    for tag, element in file_meta._dict.items():
        if tag == _GROUP_LENGTH or (tag in _FILLED_WHEN_EMPTY and file_meta[tag].is_empty):
            continue  # (validate_file_meta fills an empty one in place: here it adds a new one)
        copy._dict[tag] = element
    return copy


def set_fresh(ds: Dataset, keyword: str, value: Any) -> None:
    """Set ``keyword`` to ``value`` as a new data element, in the place of the element it replaces
    (pydicom's ``ds.X = v`` would change that element in place: one shared with another dataset, a
    result template's or an immutable item's, stays as it is; pydicom makes the same new element for
    a keyword ``ds`` does not hold yet)."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds._dict:
        setattr(ds, keyword, value)
        return
    ds[tag] = DataElement(tag, dictionary_VR(tag), value)


def _file_meta_bytes(dataset: Dataset, file_meta: FileMetaDataset, preamble: bytes) -> bytes:
    """Preamble, ``DICM`` and the file meta group, as ``dcmwrite(enforce_file_format=True)`` writes them
    (``file_meta``: the caller's own copy, :func:`_own_copy`)."""
    meta_class = file_meta.get("MediaStorageSOPClassUID", None)
    ds_class = dataset.get("SOPClassUID", None)
    if meta_class is None or (ds_class and ds_class != meta_class):
        set_fresh(file_meta, "MediaStorageSOPClassUID", ds_class)
    meta_instance = file_meta.get("MediaStorageSOPInstanceUID", None)
    ds_instance = dataset.get("SOPInstanceUID", None)
    if meta_instance is None or (ds_instance and ds_instance != meta_instance):
        set_fresh(file_meta, "MediaStorageSOPInstanceUID", ds_instance)
    return (preamble or b"\x00" * 128) + b"DICM" + file_meta_group(file_meta)


def file_meta_group(file_meta: FileMetaDataset) -> bytes:
    """The file meta group as pydicom's ``write_file_meta_info(fp, file_meta, enforce_standard=True)``
    writes it, with the same changes to ``file_meta`` (validated and completed, its group length
    set): written in one pass, every element it cannot write plainly handed to pydicom's writer."""
    validate_file_meta(file_meta, enforce_standard=True)
    rest = Dataset()
    rest._dict.update((tag, element) for tag, element in file_meta._dict.items() if tag != _GROUP_LENGTH)
    body = bytearray()
    try:
        _write_dataset(body, rest, _DEFAULT_ENCODING)
    except _Unsupported:  # raw elements: pydicom's writer converts them
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        write_file_meta_info(fp, file_meta, enforce_standard=True)
        return fp.getvalue()
    file_meta.FileMetaInformationGroupLength = len(body)  # (as pydicom's writer leaves it)
    return _header(_GROUP_LENGTH, "UL") + pack("<HL", 4, len(body)) + bytes(body)


def _pydicom_bytes(dataset: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, dataset, enforce_file_format=True)
    return buf.getvalue()


def encode_file(dataset: Dataset) -> bytes:
    """``dataset`` in the DICOM file format, the bytes ``dcmwrite(buf, dataset, enforce_file_format=True)`` writes.

    Fast for explicit VR little endian transfer syntaxes (native or encapsulated pixel data);
    anything else goes through ``dcmwrite`` itself, with its errors. Like ``dcmwrite``, it sets
    ``PixelData.is_undefined_length`` from the transfer syntax and leaves ``dataset.file_meta``
    unchanged.
    """
    meta = getattr(dataset, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID", None) if meta is not None else None
    preamble = getattr(dataset, "preamble", None)
    if (
        not isinstance(tsyntax, UID)
        or tsyntax.is_private
        or not tsyntax.is_transfer_syntax
        or tsyntax.is_implicit_VR
        or not tsyntax.is_little_endian
        or tsyntax == DeflatedExplicitVRLittleEndian
        or (preamble and len(preamble) != 128)
        or any(tag >> 16 in (0, 2) for tag in dataset._dict)
    ):
        return _pydicom_bytes(dataset)
    pixel_data = dataset._dict.get(_PIXEL_DATA)
    if pixel_data is not None:
        if type(pixel_data) is not DataElement:
            return _pydicom_bytes(dataset)
        pixel_data.is_undefined_length = tsyntax.is_compressed  # as dcmwrite does (PS3.5 A.4)
    body = bytearray()
    try:
        _write_dataset(body, dataset, _DEFAULT_ENCODING)
    except _Unsupported:
        return _pydicom_bytes(dataset)
    return _file_meta_bytes(dataset, _own_copy(meta), preamble) + bytes(body)
