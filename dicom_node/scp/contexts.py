"""A cheap per-association copy of the SCP's supported presentation contexts.

pynetdicom gives every accepted association ``deepcopy(server.contexts)``: the node supports 171
storage contexts with up to 13 transfer syntaxes each, and opening an association with the node took
37 ms against 10 ms with this copy on the 2-core VM (``bench/association_setup.py``; the receive row
of ``bench/profile_stages.py``; BENCHMARKS.md). :class:`SupportedContexts` is the same list whose
deep copy copies each ``PresentationContext`` and its transfer-syntax list and shares only what is
immutable (the UIDs, the roles): what the association may change is still its own.
"""

from __future__ import annotations

import copy
from typing import Any

from pynetdicom.presentation import PresentationContext


def copy_context(cx: PresentationContext) -> PresentationContext:
    """An independent copy of ``cx`` (a new object with a new transfer-syntax list; UIDs are immutable).

    A ``PresentationContext`` (no ``__slots__``, ``__copy__`` or ``__reduce__`` of its own) is copied
    as ``copy.copy`` copies it, a new instance given a copy of the attribute dict, without
    ``copy.copy``'s generic protocol (4x faster; 171 contexts per association); other types go to
    ``copy.copy``."""
    if type(cx) is PresentationContext:
        new = object.__new__(PresentationContext)
        state = cx.__dict__.copy()
        state["_transfer_syntax"] = list(state["_transfer_syntax"])  # the only mutable attribute
        new.__dict__ = state
        return new
    new = copy.copy(cx)
    new._transfer_syntax = list(cx._transfer_syntax)  # the only mutable attribute (add_transfer_syntax)
    return new



class SupportedContexts(list):
    """The server's contexts; ``copy.deepcopy`` of it is :func:`copy_context` of each element."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return [copy_context(cx) for cx in self]
