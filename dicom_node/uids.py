"""Deterministic UIDs for the objects the node creates.

Every UID is ``2.25.<integer>`` (ISO/IEC 9834-8: the integer form of a UUID, no
organisation root needed) where the UUID is a name-based SHA-1 UUID (RFC 4122
version 5) of the inputs. Not ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)``:
with ``prefix=None`` pydicom ignores ``entropy_srcs`` and returns a *random* UUID, and
it joins the sources without a separator. The same inputs always
give the same UID, so receiving the same instance twice produces identical
SR and SC SOP Instance UIDs (Orthanc keeps the first copy of a duplicate SOP
Instance UID), and a new model version produces new UIDs.

- SOP Instance UIDs come from (source SOP Instance UID, models, kind);
- Series Instance UIDs come from (Study Instance UID, models, kind), so all
  results of one study share one SR series and one SC series;
- the device observer UID comes from the models alone;
- tracking UIDs come from (source SOP Instance UID, models, finding key).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from enum import Enum

from pydicom.uid import UID

from models.findings import ModelInfo

#: UUID namespace of all our name-based UUIDs; change only together with the derivation scheme.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr-ai-node:uids:v1")


class ResultKind(str, Enum):
    """The kinds of objects the node creates."""

    SR = "SR"
    SC = "SC"
    #: the "not evaluated" SR of a job that failed for good: not the UID a later successful SR gets
    SR_NOT_EVALUATED = "SR-NE"


def models_key(models: Iterable[ModelInfo]) -> str:
    """Canonical string for a set of bundles (order-independent): ``name=version;...``.

    A not-analysed Findings may name no models; it then gets the fixed key ``"(no models)"``.
    """
    models = tuple(models)
    for m in models:
        if not isinstance(m, ModelInfo):
            raise TypeError(f"models must be ModelInfo instances, got {type(m).__name__}: {m!r}")
    items = sorted(f"{m.name}={m.version}" for m in models)
    return ";".join(items) if items else "(no models)"


def _uid(*parts: str) -> UID:
    for p in parts:
        if not isinstance(p, str) or not p:
            raise ValueError(f"UID entropy sources must be non-empty strings, got {p!r}")
    # JSON keeps the parts unambiguous ("ab", "c" and "a", "bc" differ)
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, json.dumps(list(parts))).int}")


def _kind(kind: ResultKind | str) -> str:
    try:
        return ResultKind(kind).value
    except ValueError:
        raise ValueError(f"kind must be one of {[k.value for k in ResultKind]}, got {kind!r}") from None


def instance_uid(source_sop_instance_uid: str, models: Iterable[ModelInfo], kind: ResultKind | str) -> UID:
    """SOP Instance UID of the ``kind`` result object created for one source instance."""
    return _uid("instance", _kind(kind), str(source_sop_instance_uid), models_key(models))


def series_uid(study_instance_uid: str, models: Iterable[ModelInfo], kind: ResultKind | str) -> UID:
    """Series Instance UID shared by all ``kind`` results of one study."""
    return _uid("series", _kind(kind), str(study_instance_uid), models_key(models))


def device_observer_uid(models: Iterable[ModelInfo]) -> UID:
    """UID of the algorithm as an SR device observer (TID 1004)."""
    return _uid("device", models_key(models))


def tracking_uid(source_sop_instance_uid: str, models: Iterable[ModelInfo], finding_key: str) -> UID:
    """Tracking Unique Identifier (TID 4108) of one finding (e.g. ``"image"`` or ``"box-0"``)."""
    return _uid("tracking", str(source_sop_instance_uid), models_key(models), finding_key)
