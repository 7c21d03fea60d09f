"""bench/python_peers.py, the pure-Python sender and receiver of the end-to-end benchmark on a machine
without Orthanc and dcmtk: what is pushed is stored, counted, emptied; a failed association is counted."""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from python_peers import PythonStore, push_python  # noqa: E402

from dicom_node.testing.local_orthanc import echo_ok, free_port  # noqa: E402

try:  # tests/ is on sys.path under pytest's default "prepend" import mode
    from dicom_factory import cxr_like_array, make_dataset
except ImportError:
    from tests.dicom_factory import cxr_like_array, make_dataset

pytestmark = pytest.mark.integration


def _files(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        ds = make_dataset(cxr_like_array(64, 48, bits_stored=12, seed=i))
        path = folder / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_pushed_instances_are_stored_counted_and_wiped(tmp_path: Path) -> None:
    files = _files(tmp_path, 5)
    store = PythonStore(workdir=tmp_path / "store", dicom_port=free_port())
    store.start()
    try:
        assert echo_ok(store.dicom_port, calling="CXRTEST", called="ORTHANC")
        result = push_python(files, store.dicom_port, 2, calling="CXRTEST", called="ORTHANC", timeout=120)
        assert (result.failures, result.returncodes, result.files) == (0, [0, 0], 5), result.outputs
        assert store.count() == 5
        sent = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
        stored = {str(pydicom.dcmread(p).SOPInstanceUID) for p in store.folder.glob("*.dcm")}
        assert stored == sent
        store.wipe()
        assert store.count() == 0
    finally:
        store.stop()
    assert store.proc is None


def test_a_push_nobody_answers_fails(tmp_path: Path) -> None:
    files = _files(tmp_path, 3)
    port = free_port()  # nothing listens there
    assert not echo_ok(port, calling="CXRTEST", called="ORTHANC")
    result = push_python(files, port, 1, calling="CXRTEST", called="ORTHANC", timeout=120)
    assert result.failures == 1 and result.returncodes == [1], result.outputs
