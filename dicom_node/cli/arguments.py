"""Argument types shared by the ``cxr-node`` sub-commands (standard library only)."""

from __future__ import annotations

import argparse


def three_fractions(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` (commas, semicolons or spaces) -> three floats; argparse error otherwise."""
    parts = text.replace(",", " ").replace(";", " ").split()
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {text!r}")
    return values  # type: ignore[return-value]
