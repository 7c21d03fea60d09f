"""Hand-offs wake each other (issue 15 point 2): receive -> analyse -> deliver without waiting for a poll.

The idle workers' poll interval is set to its maximum (60 s), the engine's batch wait to ten
minutes; every wait below is bounded far below both, so a hand-off that still relied on a poll or
on the batch wait would fail the test instead of passing slowly. Each image goes through after
the node has been idle (nothing in flight), where only a wake-up can start the next step."""

from __future__ import annotations

import gc
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from service_helpers import FakeAnalyser, StoreSCP, _cxr, _delivered, _settings, _storescu, _wait

from dicom_node.gc_freeze import freeze_long_lived
from dicom_node.pipeline.analyse import _pool_warmup
from dicom_node.service import NodeService

POLL_S = 60.0  # NodeSettings' maximum
BOUND_S = 20.0  # every wait of this test: a third of one poll


@pytest.fixture
def dest(tmp_path: Path) -> StoreSCP:
    d = StoreSCP(tmp_path)
    yield d
    d.stop()


def test_receive_analyse_deliver_wake_each_other(
    tmp_path: Path, dest: StoreSCP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dest.start()
    settings = _settings(tmp_path, dest, poll_interval_s=POLL_S, result_workers=1)
    with NodeService(settings, analyser=FakeAnalyser()) as svc:
        for i in range(2):  # the second after the node went idle again
            _storescu(svc.port, _cxr(tmp_path, i))
            assert _wait(_delivered(svc, i + 1), BOUND_S), svc.journal.counts()
    events = [r.__dict__.get("event") for r in caplog.records]
    order = [e for e in events if e in ("received", "analysed", "job_delivered")]
    assert order == ["received", "analysed", "job_delivered"] * 2


def test_freeze_long_lived_collects_garbage_first() -> None:
    class Cycle:
        pass

    import weakref

    a = Cycle()
    a.self = a  # type: ignore[attr-defined]
    ref = weakref.ref(a)
    del a
    try:
        assert freeze_long_lived() > 0
        assert gc.get_freeze_count() > 0
        assert ref() is None  # collected, not frozen
    finally:
        gc.unfreeze()


def test_result_processes_freeze_their_start_up_objects() -> None:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(gc.get_freeze_count).result(timeout=120) == 0
        pool.submit(_pool_warmup).result(timeout=120)
        assert pool.submit(gc.get_freeze_count).result(timeout=120) > 10_000  # pydicom, highdicom, numpy
