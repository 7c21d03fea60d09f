"""Deterministic UIDs for the objects the node creates.

Every UID is ``2.25.<integer>`` (ISO/IEC 9834-8: the integer form of a UUID, no
organisation root needed) where the UUID is a name-based SHA-1 UUID (RFC 4122
version 5) of the inputs. Not ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)``:
with ``prefix=None`` pydicom ignores ``entropy_srcs`` and returns a *random* UUID, and
it joins the sources without a separator. The same inputs always
give the same UID, so receiving the same instance twice produces identical
SR and SC SOP Instance UIDs (Orthanc keeps the first copy of a duplicate SOP
Instance UID), and a new model version produces new UIDs.

- the **result key** of a :class:`~models.findings.Findings` (:func:`result_key`) names
  everything that changes a result's content: each bundle's name, version and digest (a short
  hash of its weights and inference config, so a retrain with an unchanged version string still
  gives new UIDs) and the decision settings (image-level threshold, detection threshold, box
  gating rule) - the *configuration key* - plus whether this image's result has a heatmap;
- SOP Instance UIDs come from (source SOP Instance UID, result key, kind);
- Series Instance UIDs come from (Study Instance UID, configuration key, kind), so all results of one
  study made with one configuration share one SR series and one SC series, and results made
  after a retrain or a threshold change land in a new series beside the old one;
- the device observer UID comes from the models alone;
- tracking UIDs come from (source SOP Instance UID, result key, finding key).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from enum import Enum

from pydicom.uid import UID

from models.findings import Findings, ModelInfo

#: UUID namespace of all our name-based UUIDs; change only together with the derivation scheme.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr-ai-node:uids:v2")


class ResultKind(str, Enum):
    """The kinds of objects the node creates."""

    SR = "SR"
    SC = "SC"
    #: the "not evaluated" SR of a job that failed for good: not the UID a later successful SR gets
    SR_NOT_EVALUATED = "SR-NE"


def models_key(models: Iterable[ModelInfo]) -> str:
    """Canonical string for a set of bundles (order-independent): ``name=version+digest;...``.

    A not-analysed Findings may name no models; it then gets the fixed key ``"(no models)"``.
    """
    models = tuple(models)
    for m in models:
        if not isinstance(m, ModelInfo):
            raise TypeError(f"models must be ModelInfo instances, got {type(m).__name__}: {m!r}")
    items = sorted(f"{m.name}={m.label}" for m in models)
    return ";".join(items) if items else "(no models)"


def decision_key(findings: Findings) -> str:
    """The decision settings a result was made with (they change its content, not the models)."""
    if not isinstance(findings, Findings):
        raise TypeError(f"findings must be a Findings, got {type(findings).__name__}")
    return json.dumps([findings.threshold, findings.detection_threshold, findings.box_gating])


def configuration_key(findings: Findings) -> str:
    """Models and decision settings: what all results of one configuration share (series UIDs)."""
    if not isinstance(findings, Findings):
        raise TypeError(f"findings must be a Findings, got {type(findings).__name__}")
    return f"{models_key(findings.models)}|{decision_key(findings)}"


def result_key(findings: Findings) -> str:
    """Everything that changes the content of one result besides its source: the configuration
    and whether this image's result carries a heatmap."""
    return f"{configuration_key(findings)}|heatmap={int(findings.heatmap is not None)}"


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


def instance_uid(findings: Findings, kind: ResultKind | str) -> UID:
    """SOP Instance UID of the ``kind`` result object created for ``findings``' source instance."""
    return _uid("instance", _kind(kind), findings.sop_instance_uid, result_key(findings))


def series_uid(study_instance_uid: str, findings: Findings, kind: ResultKind | str) -> UID:
    """Series Instance UID shared by all ``kind`` results of one study made with one configuration."""
    return _uid("series", _kind(kind), str(study_instance_uid), configuration_key(findings))


def device_observer_uid(models: Iterable[ModelInfo]) -> UID:
    """UID of the algorithm as an SR device observer (TID 1004)."""
    return _uid("device", models_key(models))


def tracking_uid(findings: Findings, finding_key: str) -> UID:
    """Tracking Unique Identifier (TID 4108) of one finding (e.g. ``"image"`` or ``"box-0"``)."""
    return _uid("tracking", findings.sop_instance_uid, result_key(findings), finding_key)
