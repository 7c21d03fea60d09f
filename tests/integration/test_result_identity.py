"""Results never go stale: a threshold change (or a retrain) gives new result objects in a new series.

Orthanc keeps the first copy of a SOP Instance UID (``OverwriteInstances: false``). Result UIDs that
ignored the decision settings made a re-analysis after a threshold change vanish silently, leaving the
old decision in the PACS. Here the same CXR is analysed twice by the real node against a real Orthanc,
with two decision thresholds: the study must then hold two SRs, in two series, each recording the
threshold it was decided with (the old one untouched, the new one beside it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from integration_helpers import PUSHER_AET

from dicom_node.results.sr.read import read_sr
from dicom_node.testing.local_orthanc import LocalOrthanc, storescu, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULT_TIMEOUT = 240.0


def _srs(orthanc: LocalOrthanc, study_uid: str) -> list[dict[str, Any]]:
    return [t for t in orthanc.study_instances(study_uid) if t.get("Manufacturer") == "cxr-ai-node" and t.get("Modality") == "SR"]


def test_a_threshold_change_adds_new_results_beside_the_old_ones(
    orthanc_factory: Any, node_factory: Any, phantom_files: list[Path], tmp_path: Path
) -> None:
    orthanc = orthanc_factory(auto_forward=False).start()
    src = pydicom.dcmread(phantom_files[0])
    study = str(src.StudyInstanceUID)
    seen: dict[float, Any] = {}
    for round_, threshold in enumerate((0.9, 0.2)):
        node = node_factory(CXR_NODE_THRESHOLD=str(threshold)).start()
        try:
            # the modality pushes to Orthanc (first round) and the node (both rounds), as a re-analysis would
            if round_ == 0:
                assert storescu([phantom_files[0]], orthanc.dicom_port, calling_aet=PUSHER_AET).returncode == 0
            res = storescu([phantom_files[0]], node.port, calling_aet=PUSHER_AET, called_aet="AINODE")
            assert res.returncode == 0, res.stderr
            wait_until(lambda n=round_ + 1: len(_srs(orthanc, study)) >= n or None, RESULT_TIMEOUT, interval=1.0,
                       what=f"{round_ + 1} SR(s) in the study")
        finally:
            node.stop()
        for tags in _srs(orthanc, study):
            path = tmp_path / f"{tags['SOPInstanceUID']}.dcm"
            path.write_bytes(orthanc.file(tags["_orthanc_id"]))
            report = read_sr(path)
            seen.setdefault(report.threshold, (tags, report))
    srs = _srs(orthanc, study)
    assert len(srs) == 2, srs
    assert set(seen) == {0.9, 0.2}
    (old_tags, old), (new_tags, new) = seen[0.9], seen[0.2]
    assert old_tags["SOPInstanceUID"] != new_tags["SOPInstanceUID"]
    assert old_tags["SeriesInstanceUID"] != new_tags["SeriesInstanceUID"]  # the new decision sits in its own series
    assert old.probability == pytest.approx(new.probability, abs=1e-6)  # same weights, same image
    assert old.decision == ("Present" if old.probability >= 0.9 else "Absent")
    assert new.decision == ("Present" if new.probability >= 0.2 else "Absent")
