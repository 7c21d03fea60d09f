"""Result datasets from a per-process template: highdicom builds the image-independent part once.

highdicom's SOP class constructors validate every argument, look attributes up in the IOD and set
each attribute through pydicom (~2 ms for the node's SR document, most of it the same for every
image). :func:`instance_from_template` makes a new dataset of the template's class that *shares*
the template's data elements, then replaces the per-image ones with new elements: setting an
existing element through pydicom (``ds.X = v``) changes the element in place, which would change
the template and every dataset made from it, so every per-image value is set as a new element in the
new dataset's own element table (``set_fresh``, from the result writer
:mod:`dicom_node.storage.fast_write`, which sets its own copies of file meta the same way). Shared
elements are never changed afterwards: the node only reads and encodes its result datasets (tests
check that a later result leaves an earlier one and the template unchanged).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import TypeVar

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.valuerep import DA, TM

from dicom_node.storage.fast_write import register_immutable, set_fresh

D = TypeVar("D", bound=Dataset)
C = TypeVar("C")


def shared(content: C) -> C:
    """Mark ``content`` (a content item, or a highdicom template: a list of them) as built once and
    shared by every result of the process: nothing changes it any more, so the result writer encodes
    it once and reuses its bytes (:func:`dicom_node.storage.fast_write.register_immutable`)."""
    items = [content] if isinstance(content, Dataset) else list(content)  # type: ignore[call-overload]
    register_immutable(*items)
    return content


def instance_from_template(template: D) -> D:
    """A new dataset of ``template``'s class holding the template's elements (shared, see the module
    docstring) and a file meta of its own holding the template's file meta elements."""
    instance = type(template).__new__(type(template))
    state = dict(template.__dict__)  # highdicom's Python attributes (e.g. an SR's ``_content``)
    state["_dict"] = dict(template._dict)
    state["_private_blocks"] = {}
    instance.__dict__.update(state)
    meta = getattr(template, "file_meta", None)
    if meta is not None:
        own_meta = FileMetaDataset()
        for element in meta:
            own_meta.add(element)
        instance.__dict__["file_meta"] = own_meta
    return instance


def drop(ds: Dataset, keywords: Iterable[str]) -> None:
    """Remove ``keywords`` from ``ds``'s own element table (before code that sets them in place)."""
    for keyword in keywords:
        if keyword in ds:
            delattr(ds, keyword)


def set_media_storage_instance(ds: Dataset, sop_instance_uid: str) -> None:
    """Media Storage SOP Instance UID of ``ds``'s file meta, and its File Meta Information Group Length
    as highdicom computes it at construction (the length of the written file meta; only that UID's
    padded length differs from the template's)."""
    meta = ds.file_meta
    old = meta.get("MediaStorageSOPInstanceUID")
    set_fresh(meta, "MediaStorageSOPInstanceUID", sop_instance_uid)
    if "FileMetaInformationGroupLength" in meta and old is not None:
        length = int(meta.FileMetaInformationGroupLength) - _padded(str(old)) + _padded(str(sop_instance_uid))
        set_fresh(meta, "FileMetaInformationGroupLength", length)


def _padded(uid: str) -> int:
    return len(uid) + len(uid) % 2


def stamp_creation(ds: Dataset, now: datetime.datetime | None = None) -> None:
    """Instance Creation and Content Date/Time as highdicom's constructors set them (one ``now``)."""
    now = datetime.datetime.now() if now is None else now
    set_fresh(ds, "InstanceCreationDate", DA(now.date()))
    set_fresh(ds, "InstanceCreationTime", TM(now.time()))
    if "ContentDate" in ds:
        set_fresh(ds, "ContentDate", DA(now.date()))
    if "ContentTime" in ds:
        set_fresh(ds, "ContentTime", TM(now.time()))
