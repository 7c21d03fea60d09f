"""Regression test: the analysis worker keeps the engine fed while it builds results.

Before the fix the worker drained every finished job (building SR + SC for each, ~150 ms per
image on a CPU) before fetching new jobs, so the engine sat idle for a whole batch of result
building (found with bench/end_to_end.py; see BENCHMARKS.md).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pydicom
from integration_helpers import make_image, write  # noqa: I001

from dicom_node.pipeline.analyse import AnalysisWorker
from dicom_node.storage.journal import Journal
from dicom_node.storage.spool import Spool
from models.findings import Findings


class InstantAnalyser:
    """Answers every submit at once (a stand-in for an engine with spare capacity) and logs when."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def submit(self, ds: pydicom.Dataset) -> Future[Findings]:
        with self.lock:
            self.events.append(("submit", time.monotonic()))
        f: Future[Findings] = Future()
        f.set_result(Findings(sop_instance_uid=str(ds.SOPInstanceUID), analysed=False, rows=int(ds.Rows),
                              columns=int(ds.Columns), not_analysed_reason="test"))  # fmt: skip
        return f


def test_worker_submits_new_jobs_between_result_builds(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    journal = Journal(tmp_path / "spool" / "journal.sqlite3")
    n = 12
    for i in range(n):
        ds = make_image("CR", rows=16, columns=16, seed=i)
        path = write(ds, spool.incoming / f"{i}.dcm")
        journal.add_job(sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                        transfer_syntax=str(ds.file_meta.TransferSyntaxUID), calling_aet="T", path=str(path))  # fmt: skip
    analyser = InstantAnalyser()

    def build_results(ds: pydicom.Dataset, findings: Findings) -> list[pydicom.Dataset]:
        with analyser.lock:
            analyser.events.append(("build", time.monotonic()))
        time.sleep(0.05)  # result building takes time
        out = pydicom.Dataset()
        out.SOPInstanceUID = pydicom.uid.generate_uid()
        out.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
        return [out]

    worker = AnalysisWorker(journal, spool, analyser, destinations=[], batch_size=2,
                            poll_interval_s=0.05, build_results=build_results)  # fmt: skip
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(journal.jobs(state="analysed")) < n:
        time.sleep(0.05)
    worker.stop(5)
    journal.close()
    kinds = [k for k, _ in sorted(analyser.events, key=lambda e: e[1])]
    assert kinds.count("build") == n and kinds.count("submit") == n
    # max in flight = 4: with refill-per-result the 5th submit comes right after the 1st build;
    # before the fix it came only after all 4 results were built
    fifth_submit = [i for i, k in enumerate(kinds) if k == "submit"][4]
    builds_before = kinds[:fifth_submit].count("build")
    assert builds_before <= 1, f"{builds_before} results built before the engine got new work: {kinds}"
