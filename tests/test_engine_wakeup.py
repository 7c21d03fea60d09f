"""The engine's batch thread runs as soon as nothing more is on its way (no ``max_wait_ms`` wait for a lone
image), and still batches what is submitted together. ``max_wait_ms`` is set to ten minutes here: a
batch that waited for it would not finish within the tests' bounded waits."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pydicom
import pytest
import torch

from models.inference.engine import InferenceEngine
from models.phantoms.synth import write_rsna_dataset

REPO = Path(__file__).resolve().parent.parent
BUNDLES = Path(os.environ.get("CXR_NODE_BUNDLES_DIR") or REPO / "monai_bundles")
TEN_MINUTES_MS = 600_000.0

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    out = tmp_path_factory.mktemp("rsna")
    summary = write_rsna_dataset(out, 4, seed=3, size=256)
    return [pydicom.dcmread(c.image_path) for c in summary.cases]


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    eng = InferenceEngine(
        BUNDLES, device="cpu", max_batch_size=8, max_wait_ms=TEN_MINUTES_MS, decode_workers=1
    )
    yield eng
    eng.close()


def _new_batches(before: dict, after: dict) -> dict[int, int]:
    return {
        size: n - before["batch_sizes"].get(size, 0)
        for size, n in after["batch_sizes"].items()
        if n > before["batch_sizes"].get(size, 0)
    }


def test_a_lone_image_runs_without_waiting_for_the_batch_to_fill(
    engine: InferenceEngine, datasets: list[pydicom.Dataset]
) -> None:
    for ds in datasets[:2]:  # one after the other: each one alone in the engine
        before = engine.stats()
        findings = engine.submit(ds).result(timeout=120)  # waiting max_wait_ms would take 600 s
        assert findings.sop_instance_uid == ds.SOPInstanceUID
        assert _new_batches(before, engine.stats()) == {1: 1}


def test_images_submitted_together_still_form_one_batch(
    engine: InferenceEngine, datasets: list[pydicom.Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    # hold the (single) decode thread until all four are submitted: the batch thread then sees
    # them arrive one by one while more are still on their way, and must wait for the last
    gate = threading.Event()
    load = engine._load_source_image

    def held_load(ds: pydicom.Dataset) -> object:
        assert gate.wait(60), "the test never opened the gate"
        return load(ds)

    monkeypatch.setattr(engine, "_load_source_image", held_load)
    before = engine.stats()
    futures = [engine.submit(ds) for ds in datasets]
    gate.set()
    results = [f.result(timeout=120) for f in futures]
    assert [r.sop_instance_uid for r in results] == [d.SOPInstanceUID for d in datasets]
    assert _new_batches(before, engine.stats()) == {len(datasets): 1}


@pytest.mark.parametrize("state", ["stale-wake-up", "late-loop"])
def test_a_lone_image_queued_while_the_last_batch_finishes_does_not_wait(
    engine: InferenceEngine, datasets: list[pydicom.Dataset], monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    """Why the tests above timed out in full-suite runs (2026-11-27): the next lone image was decoded and
    queued, with its wake-up (``_FLUSH``), before the batch thread had looped back from the previous
    batch; it took the item as "already waiting: busy" and, busy, ignored the wake-up and waited
    ``max_wait_ms`` (here 10 minutes) for a batch that could not fill. ``stale-wake-up``: the previous
    image's own wake-up is still queued ahead of it, as when the batch thread ran that image before the
    wake-up came. The batch thread is held at the end of the first batch while the state is set up."""
    from models.inference import engine as engine_module

    held, release = threading.Event(), threading.Event()
    run = engine._run_batch_safely

    def hold_first(batch: list) -> None:
        run(batch)
        if not held.is_set():
            held.set()
            assert release.wait(60), "the test never released the batch thread"

    monkeypatch.setattr(engine, "_run_batch_safely", hold_first)
    first = engine.submit(datasets[0])
    assert first.result(timeout=60).sop_instance_uid == datasets[0].SOPInstanceUID
    assert held.wait(60)
    while engine._queue.qsize():  # the first image's wake-up, if the batch thread left it
        engine._queue.get_nowait()
    if state == "stale-wake-up":
        engine._queue.put(engine_module._FLUSH)
    before = engine.stats()
    second = engine.submit(datasets[1])
    deadline = time.monotonic() + 60
    queued = engine._queue.qsize() - (state == "stale-wake-up")
    while time.monotonic() < deadline and not (engine._upstream == 0 and queued >= 2):
        time.sleep(0.01)  # the second image and its wake-up queued, the batch thread still held
        queued = engine._queue.qsize() - (state == "stale-wake-up")
    assert queued >= 2
    release.set()
    assert second.result(timeout=60).sop_instance_uid == datasets[1].SOPInstanceUID  # not after 10 minutes
    assert _new_batches(before, engine.stats()) == {1: 1}
