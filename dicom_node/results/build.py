"""Facade: the DICOM objects the node sends back for one analysed (or refused) source instance."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from dicom_node.results.common import MANUFACTURER, check_source_matches
from dicom_node.results.sc.build import build_sc
from dicom_node.results.sc.encode import DEFAULT_SC_ENCODING, ScEncoding
from dicom_node.results.sr.build import build_sr
from dicom_node.storage.spool import dataset_bytes
from models.errors import ImageDecodeError
from models.findings import Box, BoxMM, FindingCode, Findings, Heatmap, ModelInfo
from models.imaging.dicom_image import SourceImage

logger = logging.getLogger(__name__)

__all__ = [
    "MANUFACTURER",
    "EncodedResult",
    "build_encoded_results",
    "build_results",
    "encode_results",
    "findings_from_json",
    "findings_to_dict",
]


#: the result kinds ``build_results`` can build (``parts``): the SR, the SC overlay
RESULT_PARTS = ("sr", "sc")


def build_results(
    source: Dataset,
    findings: Findings,
    *,
    image: SourceImage | None = None,
    parts: Sequence[str] = RESULT_PARTS,
    sc_encoding: ScEncoding | None = None,
) -> list[Dataset]:
    """Build the result objects for ``findings`` on ``source``: ``[SR]`` or ``[SR, SC]``.

    - analysed: a TID 1500 Comprehensive 3D SR and a Secondary Capture overlay;
    - not analysed (e.g. a lateral view): only the SR, which says why.

    All objects are in the source's study, carry ``Manufacturer == "cxr-ai-node"`` and
    have SOP/Series Instance UIDs that are deterministic (see :mod:`dicom_node.results.uids`).
    ``image`` may pass the already decoded source (saves decoding it again). If the
    overlay cannot be rendered because the source pixels cannot be decoded, the error
    is logged and only the SR is returned. The image-level decision, its threshold and the
    reported boxes come with ``findings`` (decided once, in the engine). ValueError for
    findings that do not belong to ``source``. ``parts`` builds only some of them (``("sr",)``
    or ``("sc",)``: the node builds an analysed image's SR and SC in two processes at once).
    ``sc_encoding``: how the SC's pixels are stored (None: JPEG Baseline, ``DEFAULT_SC_ENCODING``).
    """
    unknown = [p for p in parts if p not in RESULT_PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {RESULT_PARTS}, got {tuple(parts)!r}")
    check_source_matches(source, findings)
    results: list[Dataset] = [build_sr(source, findings)] if "sr" in parts else []
    if findings.analysed and "sc" in parts:
        try:
            results.append(build_sc(source, findings, image=image, encoding=sc_encoding or DEFAULT_SC_ENCODING))
        except ImageDecodeError as exc:
            logger.error(
                "SC overlay not built: source pixels cannot be decoded",
                extra={"source_sop_instance_uid": findings.sop_instance_uid, "error": str(exc)},
            )
    return results


# ---------------------------------------------------------------- result building in a worker process
@dataclass(frozen=True)
class EncodedResult:
    """One result object encoded in the DICOM file format (what the outbox stores)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    data: bytes

    def __post_init__(self) -> None:
        if not self.sop_instance_uid or not self.sop_class_uid:
            raise ValueError(
                f"EncodedResult needs SOP Instance and Class UIDs, got {self.sop_instance_uid!r} {self.sop_class_uid!r}"
            )
        if not self.data:
            raise ValueError(f"EncodedResult {self.sop_instance_uid} has no data")


def _box_to_dict(b: Box) -> dict[str, Any]:
    out: dict[str, Any] = {"x": b.x, "y": b.y, "width": b.width, "height": b.height, "score": b.score}
    if b.mm is not None:
        out["mm"] = {
            "x": b.mm.x,
            "y": b.mm.y,
            "width": b.mm.width,
            "height": b.mm.height,
            "spacing_source": b.mm.spacing_source,
        }
    return out


def findings_to_dict(findings: Findings) -> dict[str, Any]:
    """Lossless plain-dict form of ``findings`` (like ``Findings.to_json`` but unrounded)."""
    heatmap = findings.heatmap
    return {
        "sop_instance_uid": findings.sop_instance_uid,
        "analysed": findings.analysed,
        "not_analysed_reason": findings.not_analysed_reason,
        "rows": findings.rows,
        "columns": findings.columns,
        "finding": None if findings.finding is None else findings.finding.to_json(),
        "class_probabilities": dict(findings.class_probabilities),
        "probability": findings.probability,
        "threshold": findings.threshold,
        "detection_threshold": findings.detection_threshold,
        "box_gating": findings.box_gating,
        "boxes": [_box_to_dict(b) for b in findings.boxes],
        "heatmap": None
        if heatmap is None
        else {
            "x": heatmap.x,
            "y": heatmap.y,
            "width": heatmap.width,
            "height": heatmap.height,
            "values": heatmap.values.tolist(),
        },
        "classifier_region": None if findings.classifier_region is None else list(findings.classifier_region),
        "models": [m.to_json() for m in findings.models],
        "timing_ms": dict(findings.timing_ms),
    }


def _box_from_dict(b: Mapping[str, Any]) -> Box:
    mm = b.get("mm")
    return Box(
        float(b["x"]),
        float(b["y"]),
        float(b["width"]),
        float(b["height"]),
        score=float(b["score"]),
        mm=None
        if mm is None
        else BoxMM(
            float(mm["x"]),
            float(mm["y"]),
            float(mm["width"]),
            float(mm["height"]),
            spacing_source=str(mm["spacing_source"]),
        ),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def findings_from_json(data: Mapping[str, Any]) -> Findings:
    """Rebuild a :class:`Findings` from ``Findings.to_json()`` or :func:`findings_to_dict` output.

    ``to_json`` rounds the numbers; :func:`findings_to_dict` does not (use it for an exact copy).
    Raises ValueError (from the dataclasses) or KeyError/TypeError for a malformed ``data``.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"findings JSON must be an object, got {type(data).__name__}")
    finding = data.get("finding")
    heatmap = data.get("heatmap")
    return Findings(
        sop_instance_uid=str(data["sop_instance_uid"]),
        analysed=bool(data["analysed"]),
        rows=int(data["rows"]),
        columns=int(data["columns"]),
        class_probabilities={str(k): float(v) for k, v in (data.get("class_probabilities") or {}).items()},
        probability=_optional_float(data.get("probability")),
        finding=None
        if finding is None
        else FindingCode(str(finding["value"]), str(finding["scheme"]), str(finding["meaning"])),
        threshold=_optional_float(data.get("threshold")),
        boxes=tuple(_box_from_dict(b) for b in data.get("boxes") or ()),
        detection_threshold=_optional_float(data.get("detection_threshold")),
        box_gating=str(data.get("box_gating") or "positive-only"),
        heatmap=None if heatmap is None else Heatmap.from_json(heatmap),
        classifier_region=None
        if data.get("classifier_region") is None
        else tuple(float(v) for v in data["classifier_region"]),  # type: ignore[arg-type]
        models=tuple(
            ModelInfo(str(m["name"]), str(m["version"]), str(m.get("digest") or "unknown"))
            for m in data.get("models") or ()
        ),
        not_analysed_reason=data.get("not_analysed_reason"),
        timing_ms={str(k): float(v) for k, v in (data.get("timing_ms") or {}).items()},
    )


def encode_results(datasets: Sequence[Dataset]) -> list[EncodedResult]:
    """Encode result datasets in the DICOM file format, as the spool's outbox stores them."""
    out = []
    for res in datasets:
        data = dataset_bytes(res)  # adds file meta (Explicit VR Little Endian) when missing
        out.append(
            EncodedResult(
                str(res.SOPInstanceUID),
                str(res.SOPClassUID),
                str(res.file_meta.TransferSyntaxUID),
                data,
            )
        )
    return out


def build_encoded_results(
    source_path: str,
    findings_json: Mapping[str, Any],
    image: SourceImage | None = None,
    parts: Sequence[str] = RESULT_PARTS,
    sc_encoding: ScEncoding | None = None,
) -> list[EncodedResult]:
    """Process-pool entry point: read the spooled source, build its results (``parts``, see
    :func:`build_results`), return them encoded.

    Arguments are plain picklable values: the spool path of the source instance, the findings
    as :func:`findings_to_dict` and the already decoded image (or None: the
    overlay then decodes the source itself).
    """
    # with the decoded image at hand, or no overlay to draw, only the header is needed (a 2500x2048
    # DX is 10 MB of pixels); large elements (private blobs) stay on disk unless a builder reads them
    header_only = image is not None or "sc" not in parts
    source = pydicom.dcmread(source_path, stop_before_pixels=header_only, defer_size=1 << 20)
    findings = findings_from_json(findings_json)
    return encode_results(build_results(source, findings, image=image, parts=parts, sc_encoding=sc_encoding))
