"""Patient-level, stratified, deterministic train/val/test split.

Every patient lands in exactly one split (by construction: the split is a
partition of the patient ids). Patients are stratified by their RSNA class
(``klass``) when it is known, otherwise by ``target`` (0/1), so that each split
keeps the class mix of the whole set.

Determinism: the ids of each stratum are sorted before a seeded
``numpy.random.default_rng(seed)`` permutation, and strata are visited in sorted
order, so the result depends only on the ids, their labels, the seed and the
fractions — never on the order of the input mapping.

Allocation per stratum of ``n`` patients: the first ``floor(f_train * n + 0.5)``
shuffled ids go to train, the ids up to ``floor((f_train + f_val) * n + 0.5)`` to
val, the rest to test (so global sizes can differ from ``fraction * N`` by at most
one patient per stratum).

``write_split`` / ``read_split`` store the split as JSON so that training and
evaluation use the same patients.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

#: The split names, in order.
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
#: Version of the JSON layout written by :func:`write_split`.
SPLIT_FILE_FORMAT = 1


class _HasLabels(Protocol):
    """What the split needs of ``models.datasets.rsna_layout.PatientLabels``."""

    target: int
    klass: str | None


def validate_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Return ``fractions`` as a 3-tuple of floats; raise ``ValueError`` unless each is ≥ 0 and they sum to 1."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"fractions must be three numbers (train, val, test), got {fractions!r}") from exc
    if len(values) != 3:
        raise ValueError(f"fractions must be three numbers (train, val, test), got {fractions!r}")
    if any(not math.isfinite(f) or f < 0 for f in values):
        raise ValueError(f"each fraction must be a finite number >= 0, got {fractions!r}")
    if not math.isclose(sum(values), 1.0, rel_tol=0.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(values)!r})")
    return values  # type: ignore[return-value]


def stratum_of(labels: _HasLabels) -> str:
    """The stratum key of one patient: its RSNA class when known, else ``target=<0|1>``."""
    if labels.klass:
        return f"class={labels.klass}"
    return f"target={int(labels.target)}"


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def split_patients(
    labels: Mapping[str, _HasLabels],
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[str, list[str]]:
    """Split patient ids into ``{"train": [...], "val": [...], "test": [...]}`` (each list sorted).

    Patient-level (one patient → one split), stratified by RSNA class (or Target),
    deterministic for a given ``seed`` whatever the order of ``labels``.
    """
    f_train, f_val, _ = validate_fractions(fractions)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    strata: dict[str, list[str]] = {}
    for pid, lab in labels.items():
        if not isinstance(pid, str) or not pid:
            raise ValueError(f"patient ids must be non-empty strings, got {pid!r}")
        strata.setdefault(stratum_of(lab), []).append(pid)

    rng = np.random.default_rng(int(seed))
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for key in sorted(strata):
        ids = sorted(strata[key])
        order = rng.permutation(len(ids))
        shuffled = [ids[i] for i in order]
        n = len(shuffled)
        end_train = _round_half_up(f_train * n)
        end_val = max(end_train, min(n, _round_half_up((f_train + f_val) * n)))
        out["train"].extend(shuffled[:end_train])
        out["val"].extend(shuffled[end_train:end_val])
        out["test"].extend(shuffled[end_val:])
    for name in SPLIT_NAMES:
        out[name].sort()
    logger.info(
        "patient split",
        extra={
            "seed": int(seed),
            "fractions": [f_train, f_val, 1.0 - f_train - f_val],
            "strata": {k: len(v) for k, v in sorted(strata.items())},
            "sizes": {k: len(v) for k, v in out.items()},
        },
    )
    return out


def _check_split(split: Mapping[str, Sequence[str]], source: str) -> dict[str, list[str]]:
    if set(split) != set(SPLIT_NAMES):
        raise ValueError(f"{source}: a split needs exactly the keys {SPLIT_NAMES}, got {tuple(split)}")
    seen: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for name in SPLIT_NAMES:
        ids = list(split[name])
        for pid in ids:
            if not isinstance(pid, str) or not pid:
                raise ValueError(f"{source}: patient ids must be non-empty strings, got {pid!r} in {name!r}")
            if pid in seen:
                raise ValueError(f"{source}: patient {pid!r} is in both {seen[pid]!r} and {name!r}")
            seen[pid] = name
        out[name] = ids
    return out


def write_split(
    path: str | os.PathLike[str],
    split: Mapping[str, Sequence[str]],
    *,
    seed: int | None = None,
    fractions: Sequence[float] | None = None,
) -> Path:
    """Write ``split`` as JSON (atomic replace); ``seed``/``fractions`` are recorded for provenance."""
    checked = _check_split(split, "write_split")
    path = Path(path)
    doc: dict[str, Any] = {
        "format": SPLIT_FILE_FORMAT,
        "seed": None if seed is None else int(seed),
        "fractions": None if fractions is None else list(validate_fractions(fractions)),
        "counts": {k: len(v) for k, v in checked.items()},
        "splits": checked,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_split(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a split written by :func:`write_split` (also accepts a bare ``{"train": [...], ...}`` mapping)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read split file {str(path)!r}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"split file {str(path)!r} must hold a JSON object, got {type(doc).__name__}")
    splits = doc.get("splits", doc)
    if not isinstance(splits, dict):
        raise ValueError(f"split file {str(path)!r}: 'splits' must be an object, got {type(splits).__name__}")
    return _check_split(splits, f"split file {str(path)!r}")
