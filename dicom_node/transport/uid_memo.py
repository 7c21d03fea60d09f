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

Transfer syntaxes take another road: ``PresentationContext.add_transfer_syntax`` makes its own
``UID`` and runs pynetdicom's validator and three property checks (two regexes) on it, for every
transfer syntax of every proposed context and again for every accepted one; Orthanc proposes 127
contexts with 190 transfer syntaxes in each association it opens (one per study it forwards).
:func:`add_transfer_syntax` appends the ``UID`` made the first time for an input (str or bytes) that
was a standard transfer syntax accepted without any log line (a ``UID`` input counts as its string,
unless it carries a private transfer syntax's encoding); everything else goes to pynetdicom's method
each time.

:func:`install` puts both in place: ``set_uid`` in the pynetdicom modules that imported it by name,
``add_transfer_syntax`` on ``PresentationContext`` (pynetdicom pinned ``==3.0.4``, see
``dicom_node/scp/chunked.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pynetdicom  # noqa: F401 - loads the modules that hold set_uid by name
import pynetdicom.utils as _utils
from pydicom import config
from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext

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


#: pynetdicom's own method
ORIGINAL_ADD_TRANSFER_SYNTAX: Callable[[PresentationContext, Any], None] = (
    PresentationContext.add_transfer_syntax
)
#: (input, input is bytes) -> the UID made of it, for standard transfer syntaxes accepted without a log line
_standard_syntaxes: dict[tuple[str | bytes, bool], UID] = {}


def add_transfer_syntax(context: PresentationContext, syntax: Any) -> None:
    """pynetdicom's ``PresentationContext.add_transfer_syntax``: the same list and the same log lines,
    with the checks skipped for an input already found to be a standard transfer syntax that passes them."""
    kind = type(syntax)
    # a UID (as pynetdicom decodes a PDU's) stands for its string unless it carries a private encoding
    plain = kind is str or kind is bytes or (kind is UID and not hasattr(syntax, "_PRIVATE_TS_ENCODING"))
    if plain:
        key = (str(syntax) if kind is UID else syntax, kind is bytes)
        known = _standard_syntaxes.get(key)
        if known is not None:
            if known not in context._transfer_syntax:
                context._transfer_syntax.append(known)
            return
    ORIGINAL_ADD_TRANSFER_SYNTAX(context, syntax)
    if plain:
        _learn_syntax(*key)


def _learn_syntax(syntax: str | bytes, is_bytes: bool) -> None:
    """Remember ``syntax`` if pynetdicom's method accepts it silently: a valid, conformant, registered
    (not private) transfer syntax UID. Called once per distinct input, after pynetdicom's method."""
    try:
        value = syntax.decode("ascii") if isinstance(syntax, bytes) else syntax
        uid = UID(value, validation_mode=config.IGNORE)  # no second warning for what pydicom warned of
    except Exception:  # noqa: BLE001 - pynetdicom's method has answered for it (logged or raised)
        return
    # unchanged by pydicom's strip and valid (so pydicom was silent too), conformant, registered
    silent = uid == value and uid.is_valid and _utils.validate_uid(uid)
    if silent and not uid.is_private and uid.is_transfer_syntax:
        if len(_standard_syntaxes) >= MAX_REMEMBERED:
            _standard_syntaxes.clear()
        _standard_syntaxes[(syntax, is_bytes)] = uid


def install() -> list[str]:
    """Use :func:`set_uid` in every loaded pynetdicom module that holds pynetdicom's, and
    :func:`add_transfer_syntax` as ``PresentationContext``'s method (idempotent); returns the names
    of the modules patched."""
    PresentationContext.add_transfer_syntax = add_transfer_syntax  # type: ignore[method-assign]
    return replace_in_package("pynetdicom", "set_uid", ORIGINAL, set_uid)
