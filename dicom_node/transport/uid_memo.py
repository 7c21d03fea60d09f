"""pynetdicom's UID conversion (``set_uid``) remembered for the UIDs it has already accepted.

Every UID pynetdicom decodes or sets (each presentation context's abstract and transfer syntaxes in
an association request, every DIMSE message's SOP class and instance) goes through
``pynetdicom.utils.set_uid``: a ``pydicom.uid.UID`` made from it (pydicom's regex check), pynetdicom's
own validator (a second ``UID`` and regex) and a conformance check (a third regex). An association
request from a peer proposing every storage class (dcmtk's ``storescu`` proposes ~120 contexts) costs
the node ~20 ms of CPU in these checks alone. The answer for a given input is always the same, so
:func:`set_uid` returns the ``UID`` made the first time for an input that was accepted without a
warning (valid and conformant, not empty); everything else (empty, non-conformant, invalid, None,
``validate=False``) goes to pynetdicom's function each time, with its logging and errors, and so do
SOP Instance UIDs (a parameter named "... Instance UID"): each is seen once, remembering them
would only churn the memo.
:func:`install` puts it in place in the pynetdicom modules that imported ``set_uid`` by name
(pynetdicom pinned ``==3.0.4``, see ``dicom_node/scp/chunked.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pynetdicom  # noqa: F401 - loads the modules that hold set_uid by name
import pynetdicom.utils as _utils
from pydicom.uid import UID

from dicom_node.module_patch import replace_in_package

#: pynetdicom's own function
ORIGINAL: Callable[..., UID | None] = _utils.set_uid
#: accepted inputs kept at most (the memo is emptied when full: instance UIDs never repeat)
MAX_REMEMBERED = 4096
_accepted: dict[tuple[Any, bool], UID] = {}


def set_uid(
    value: str | bytes | UID | None,
    name: str,
    allow_empty: bool = True,
    allow_none: bool = True,
    validate: bool = True,
) -> UID | None:
    """pynetdicom's ``set_uid``: the same result, remembered for inputs accepted without a warning."""
    if not validate or type(value) not in (str, bytes, UID) or not value or "Instance" in name:
        return ORIGINAL(value, name, allow_empty, allow_none, validate)
    key = (value, type(value) is bytes)
    known = _accepted.get(key)
    if known is not None:
        return known
    result = ORIGINAL(value, name, allow_empty, allow_none, validate)
    if result and result.is_valid:
        if len(_accepted) >= MAX_REMEMBERED:
            _accepted.clear()
        _accepted[key] = result
    return result


def install() -> list[str]:
    """Use :func:`set_uid` in every loaded pynetdicom module that holds pynetdicom's (idempotent);
    returns those modules' names."""
    return replace_in_package("pynetdicom", "set_uid", ORIGINAL, set_uid)
