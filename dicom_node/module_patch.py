"""Replace a function that a library's modules imported by name (``from x import f``) in all of them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def replace_in_package(
    package: str, name: str, original: Callable[..., Any], replacement: Callable[..., Any]
) -> list[str]:
    """Set ``name`` to ``replacement`` in every loaded module of ``package`` (the package itself and its
    submodules) whose ``name`` is ``original`` (or already ``replacement``: idempotent); returns the
    names of those modules, sorted. Modules holding something else under ``name`` are left alone."""
    patched = []
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == package or module_name.startswith(package + ".")):
            continue
        current = getattr(module, name, None)
        if current is original or current is replacement:
            setattr(module, name, replacement)
            patched.append(module_name)
    return sorted(patched)
