"""Facade: the DICOM objects the node sends back for one analysed (or refused) source instance."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from dicom_node.results_common import MANUFACTURER, check_source_matches, check_threshold
from dicom_node.results_sc import build_sc
from dicom_node.results_sr import build_sr
from models.dicom_image import SourceImage
from models.errors import ImageDecodeError
from models.findings import Findings

logger = logging.getLogger(__name__)

__all__ = ["MANUFACTURER", "build_results"]


def build_results(
    source: Dataset,
    findings: Findings,
    *,
    threshold: float,
    image: SourceImage | None = None,
) -> list[Dataset]:
    """Build the result objects for ``findings`` on ``source``: ``[SR]`` or ``[SR, SC]``.

    - analysed: a TID 1500 Comprehensive 3D SR and a Secondary Capture overlay;
    - not analysed (e.g. a lateral view): only the SR, which says why.

    All objects are in the source's study, carry ``Manufacturer == "cxr-ai-node"`` and
    have SOP/Series Instance UIDs that are deterministic (see :mod:`dicom_node.uids`).
    ``image`` may pass the already decoded source (saves decoding it again). If the
    overlay cannot be rendered because the source pixels cannot be decoded, the error
    is logged and only the SR is returned. ValueError for findings that do not belong
    to ``source`` or a threshold outside [0, 1].
    """
    threshold = check_threshold(threshold)
    check_source_matches(source, findings)
    results: list[Dataset] = [build_sr(source, findings, threshold=threshold)]
    if findings.analysed:
        try:
            results.append(build_sc(source, findings, threshold=threshold, image=image))
        except ImageDecodeError as exc:
            logger.error(
                "SC overlay not built: source pixels cannot be decoded",
                extra={"source_sop_instance_uid": findings.sop_instance_uid, "error": str(exc)},
            )
    return results
