"""Memoised IOD lookups for highdicom.

highdicom 0.28 answers ``is_attribute_in_iod(keyword, sop_class_uid)`` by walking every module and
attribute of the IOD in its copy of the standard, for every object it builds: 2.3 ms per call for a
CR or SC source, 7.5 ms for an SR class, once or more per SR and per SC the node writes. The answer is
a pure function of its arguments and of tables that never change in a process, so it is computed once
per (keyword, SOP class, excluded path elements) here. :func:`install` puts the memoised function in
place of the original in every highdicom module that imported it by name (highdicom's own
``does_iod_have_pixel_data`` looks it up in ``highdicom._standard_utils`` and is covered too). Errors
(an unknown SOP class: ``KeyError``) are not cached and are raised as before.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence

import highdicom  # noqa: F401 - imports the submodules that hold the function by name
import highdicom._standard_utils as _standard_utils

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


def install() -> list[str]:
    """Replace highdicom's ``is_attribute_in_iod`` by the memoised one in every loaded highdicom module
    that holds it; returns the names of those modules (idempotent)."""
    patched = []
    for name, module in list(sys.modules.items()):
        if not (name == "highdicom" or name.startswith("highdicom.")) or module is None:
            continue
        current = getattr(module, "is_attribute_in_iod", None)
        if current is ORIGINAL or current is is_attribute_in_iod:
            module.is_attribute_in_iod = is_attribute_in_iod  # type: ignore[attr-defined]
            patched.append(name)
    return sorted(patched)
