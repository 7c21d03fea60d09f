"""Memoised IOD lookups for highdicom, and a cheaper ``CodedConcept.value``.

highdicom 0.28 answers ``is_attribute_in_iod(keyword, sop_class_uid)`` by walking every module and
attribute of the IOD in its copy of the standard, for every object it builds: 2.3 ms per call for a
CR or SC source, 7.5 ms for an SR class, once or more per SR and per SC the node writes. The answer is
a pure function of its arguments and of tables that never change in a process, so it is computed once
per (keyword, SOP class, excluded path elements) here. :func:`install` puts the memoised function in
place of the original in every highdicom module that imported it by name (highdicom's own
``does_iod_have_pixel_data`` looks it up in ``highdicom._standard_utils`` and is covered too). Errors
(an unknown SOP class: ``KeyError``) are not cached and are raised as before.

``CodedConcept.value`` (``CodeValue``, else ``LongCodeValue``, else ``URNCodeValue``, else None)
evaluates all three ``getattr`` calls eagerly, and two of them go through pydicom's missing-attribute
path (a keyword lookup and an ``AttributeError``) on every call. highdicom hashes and compares concepts
by it: ~190 times per SR the node writes (each content item's name keys highdicom's content-sequence
index), 1-1.5 ms of an SR's ~9 ms. :func:`install` puts in its place a property that looks the three
tags up in the dataset once, and a ``__hash__`` that reads the two elements directly; likewise
``ContentItem.name`` and ``ContentItem.relationship_type`` (~100 and ~75 calls per SR). All return
the same values, and raise the same errors, as highdicom's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import highdicom  # noqa: F401 - imports the submodules that hold the function by name
import highdicom._standard_utils as _standard_utils
from highdicom.sr.coding import CodedConcept
from highdicom.sr.enum import RelationshipTypeValues
from highdicom.sr.value_types import ContentItem
from pydicom.dataelem import DataElement

from dicom_node.module_patch import replace_in_package

#: highdicom's own function, as imported before :func:`install`
ORIGINAL: Callable[..., bool] = getattr(_standard_utils.is_attribute_in_iod, "__wrapped_original__",
                                        _standard_utils.is_attribute_in_iod)  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _lookup(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
    return bool(ORIGINAL(attribute, sop_class_uid, exclude_path_elements=None if exclude is None else list(exclude)))


def is_attribute_in_iod(
    attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
) -> bool:
    """highdicom's ``is_attribute_in_iod``, memoised (same arguments, same answer, same errors)."""
    exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
    return _lookup(str(attribute), str(sop_class_uid), exclude)


is_attribute_in_iod.__wrapped_original__ = ORIGINAL  # type: ignore[attr-defined]


#: highdicom's own ``CodedConcept.value`` property and ``__hash__``
ORIGINAL_VALUE: property = CodedConcept.__dict__["value"]
ORIGINAL_HASH = CodedConcept.__dict__["__hash__"]
_CODE_VALUE, _LONG_CODE_VALUE, _URN_CODE_VALUE = 0x00080100, 0x00080119, 0x00080120
_CODING_SCHEME_DESIGNATOR = 0x00080102


def _element_value(concept: CodedConcept, tag: int) -> Any:
    """The value of a present element, as ``concept.<keyword>`` returns it (pydicom converts a raw
    element, read from a file, on first access; a DataElement's value is returned as it is)."""
    element = concept._dict[tag]  # pydicom's element store, keyed by int tags (pydicom 3.0.x, pinned)
    if type(element) is DataElement:
        return element.value
    return concept[tag].value


def _coded_concept_value(concept: CodedConcept) -> str | None:
    """``CodeValue``, else ``LongCodeValue``, else ``URNCodeValue``, else None (highdicom's order)."""
    present = concept._dict
    for tag in (_CODE_VALUE, _LONG_CODE_VALUE, _URN_CODE_VALUE):
        if tag in present:
            return _element_value(concept, tag)  # type: ignore[no-any-return]
    return None


def _coded_concept_hash(concept: CodedConcept) -> int:
    """highdicom's hash, ``hash(scheme_designator + value)`` (AttributeError / TypeError as there)."""
    if _CODING_SCHEME_DESIGNATOR not in concept._dict:
        return ORIGINAL_HASH(concept)  # type: ignore[no-any-return]  # (raises as highdicom does)
    return hash(_element_value(concept, _CODING_SCHEME_DESIGNATOR) + _coded_concept_value(concept))


CODED_CONCEPT_VALUE = property(_coded_concept_value, doc=ORIGINAL_VALUE.__doc__)

#: highdicom's own ``ContentItem.name`` and ``ContentItem.relationship_type`` properties
ORIGINAL_NAME: property = ContentItem.__dict__["name"]
ORIGINAL_RELATIONSHIP_TYPE: property = ContentItem.__dict__["relationship_type"]
_CONCEPT_NAME_CODE_SEQUENCE, _RELATIONSHIP_TYPE = 0x0040A043, 0x0040A010


def _content_item_name(item: ContentItem) -> CodedConcept:
    """``ConceptNameCodeSequence[0]`` (highdicom's errors when there is none)."""
    if _CONCEPT_NAME_CODE_SEQUENCE not in item._dict:
        return ORIGINAL_NAME.fget(item)  # type: ignore[no-any-return,misc]  # (raises as highdicom does)
    return _element_value(item, _CONCEPT_NAME_CODE_SEQUENCE)[0]  # type: ignore[no-any-return]


def _content_item_relationship_type(item: ContentItem) -> RelationshipTypeValues | None:
    """The RelationshipType as highdicom's enum, or None when the item has none."""
    if _RELATIONSHIP_TYPE not in item._dict:
        return None
    return RelationshipTypeValues(_element_value(item, _RELATIONSHIP_TYPE))


CONTENT_ITEM_NAME = property(_content_item_name, doc=ORIGINAL_NAME.__doc__)
CONTENT_ITEM_RELATIONSHIP_TYPE = property(_content_item_relationship_type, doc=ORIGINAL_RELATIONSHIP_TYPE.__doc__)


def install() -> list[str]:
    """Replace highdicom's ``is_attribute_in_iod`` by the memoised one in every loaded highdicom module
    that holds it, and ``CodedConcept.value`` and ``__hash__``, ``ContentItem.name`` and
    ``relationship_type`` by this module's; returns the names of the
    modules patched for the lookup (idempotent)."""
    CodedConcept.value = CODED_CONCEPT_VALUE  # type: ignore[method-assign,assignment]
    CodedConcept.__hash__ = _coded_concept_hash  # type: ignore[method-assign,assignment]
    ContentItem.name = CONTENT_ITEM_NAME  # type: ignore[method-assign,assignment]
    ContentItem.relationship_type = CONTENT_ITEM_RELATIONSHIP_TYPE  # type: ignore[method-assign,assignment]
    return replace_in_package("highdicom", "is_attribute_in_iod", ORIGINAL, is_attribute_in_iod)
