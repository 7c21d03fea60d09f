"""Regression test: the analysis worker keeps the engine fed while it builds results.

Before the fix the worker drained every finished job (building SR + SC for each, ~150 ms per
image on a CPU) before fetching new jobs, so the engine sat idle for a whole batch of result
building (found with bench/end_to_end.py; see BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path

import pydicom
from integration_helpers import make_image, write  # noqa: I001

from dicom_node.pipeline.analyse import AnalysisWorker
from dicom_node.results.build import EncodedResult
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


def slow_build(folder: Path, source_path: str, findings_json: dict, image: object) -> list[EncodedResult]:
    """Result building that takes time (runs in the result pool): notes when it finished in ``folder``."""
    time.sleep(0.05)
    (folder / uuid.uuid4().hex).write_text(repr(time.monotonic()))
    return [EncodedResult(pydicom.uid.generate_uid(), "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.1.2.1", b"SR")]


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
    builds = tmp_path / "builds"
    builds.mkdir()
    worker = AnalysisWorker(journal, spool, analyser, destinations=[], batch_size=2, poll_interval_s=0.05,
                            build_encoded=functools.partial(slow_build, builds), result_workers=1)  # fmt: skip
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(journal.jobs(state="analysed")) < n:
        time.sleep(0.05)
    worker.stop(5)
    journal.close()
    # time.monotonic() is CLOCK_MONOTONIC, one clock for the node and its pool process
    events = analyser.events + [("build", float(p.read_text())) for p in builds.iterdir()]
    kinds = [k for k, _ in sorted(events, key=lambda e: e[1])]
    assert kinds.count("build") == n and kinds.count("submit") == n
    # max in flight = 4: with refill-per-result the 5th submit comes right after the 1st build;
    # before the fix it came only after all 4 results were built
    fifth_submit = [i for i, k in enumerate(kinds) if k == "submit"][4]
    builds_before = kinds[:fifth_submit].count("build")
    assert builds_before <= 1, f"{builds_before} results built before the engine got new work: {kinds}"
