"""Where the shipped bundles are, for the project's own ``monai.bundle run`` configs.

The bundles' ``configs/inference.json`` are self-contained (MONAI components and the bundle's own
``scripts/``); the training and evaluation configs that call this project's trainers live in
``models/training/configs/<bundle>/{train,evaluate}.json`` and find the shipped bundle with
:func:`default_bundle_root`.
"""

from __future__ import annotations

from pathlib import Path

#: ``monai_bundles/`` next to the ``models`` package (source checkout / editable install)
BUNDLES_DIR = Path(__file__).resolve().parent.parent / "monai_bundles"


def default_bundle_root(name: str) -> str:
    """Folder of the shipped bundle ``name`` (override with ``--bundle_root``)."""
    return str(BUNDLES_DIR / name)
