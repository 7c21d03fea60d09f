"""A copy of a pydicom Dataset that shares no mutable object with it, much cheaper than ``copy.deepcopy``.

Used where a result object is made from a per-process template (:mod:`dicom_node.results.sc.attributes`):
every data element of the copy is a new :class:`~pydicom.dataelem.DataElement` (pydicom's ``ds.X = v``
on an existing element changes that element in place, so a shared one would carry a change into the
template and every other copy), and so are its multi-values, sequences and their items. Values that
cannot change (strings, numbers, bytes, dates, person names) are shared. The copy has the original's
class (e.g. highdicom's ``SCImage``) and its File Meta Information and preamble.
"""

from __future__ import annotations

import copy
import datetime
from typing import TypeVar

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName

D = TypeVar("D", bound=Dataset)

#: element values that cannot be changed in place (shared between the original and the copy)
_IMMUTABLE = (str, bytes, int, float, type(None), datetime.date, datetime.time, PersonName)
#: Dataset instance attributes that are not taken over: the elements (copied one by one) and what pydicom
#: derives from them (private blocks, the decoded pixel array and what it was decoded with)
_DERIVED = frozenset({"_dict", "_private_blocks", "_pixel_array", "_pixel_id"})


def fresh_copy(ds: D) -> D:
    """A copy of ``ds`` (same class, same elements, values and encoding state, File Meta Information,
    preamble) that shares no mutable object with it."""
    cls = type(ds)
    new = cls.__new__(cls)
    elements: dict[BaseTag, DataElement | RawDataElement] = {
        tag: _copy_element(e if isinstance(e, DataElement) else ds[tag]) for tag, e in ds.items()
    }
    # a Dataset made on a dict of elements holds that dict (the subclass's own constructor would build
    # its attributes again); the elements are converted and sequences are Sequences already
    Dataset.__init__(new, elements)
    for name, value in ds.__dict__.items():  # encoding state, file_meta, preamble, a subclass's own
        if name not in _DERIVED:
            object.__setattr__(new, name, _copy_value(value))
    return new


def _copy_value(value: object) -> object:
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, Dataset):
        return fresh_copy(value)
    return copy.deepcopy(value)


def _copy_element(elem: DataElement) -> DataElement:
    value = elem.value
    if isinstance(value, _IMMUTABLE):
        new = DataElement(elem.tag, elem.VR, value, is_undefined_length=elem.is_undefined_length,
                          already_converted=True, validation_mode=elem.validation_mode)  # fmt: skip
    elif isinstance(value, (MultiValue, Sequence)):
        # a new list, converted by the new element as pydicom does on ``ds.X = [...]`` (its multi-value
        # or sequence is then its own); sequence items are copied in turn
        items = [fresh_copy(v) for v in value] if isinstance(value, Sequence) else list(value)
        new = DataElement(elem.tag, elem.VR, items, is_undefined_length=elem.is_undefined_length,
                          validation_mode=elem.validation_mode)  # fmt: skip
    else:  # anything else (a numpy array, a list kept as is): a deep copy
        new = DataElement(elem.tag, elem.VR, copy.deepcopy(value), is_undefined_length=elem.is_undefined_length,
                          already_converted=True, validation_mode=elem.validation_mode)  # fmt: skip
    new.private_creator = elem.private_creator
    return new
