"""Large instances against the real node (``cxr-node serve``): bounded disk at receive, bounded memory in analysis.

A CXR carrying a private element of ``400 MiB x CXR_RELIABILITY_SCALE`` (at least 100 MiB):

* with ``max_instance_mb`` below its size, C-STORE answers 0xA700 with an Error Comment, the spool
  never holds more than the limit of it (sampled while it streams in), no journal row, no file;
* with the limit above its size, it is analysed and delivered, and the node's peak RSS grows by
  far less than the element (the element stays on disk: ``defer_size``), measured after a first CXR
  without it has been through the node (a first image costs ~40-70 MiB of its own). Before (issue 13 point 5)
  the node's RSS grew by the element's size, and three at once peaked at 2.5 GiB.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pynetdicom import _config
from reliability_helpers import journal_rows, make_node, report, scaled, send_files, wait_for

from dicom_node.testing.local_orthanc import LocalOrthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def big_cxr(path: Path, blob_mb: int, seed: int) -> Path:
    """A small CR chest image with a private OB element of ``blob_mb`` MiB."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "Big^Blob", "B1", "CR", "CHEST", "PA"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "20260101", "120000", "", "", "1"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.PatientBirthDate, ds.PatientSex, ds.Manufacturer = "", "O", "cxr-test"
    block = ds.private_block(0x0009, "CXRTEST BLOB", create=True)
    block.add_new(0x10, "OB", bytes(blob_mb * 2**20))
    rng = np.random.default_rng(seed)
    ds.Rows = ds.Columns = 256
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4096, size=(256, 256), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def delivered_jobs(spool_dir: Path) -> int:
    return journal_rows(spool_dir, "SELECT COUNT(*) FROM jobs WHERE state = 'delivered'")[0][0]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmHWM")


class SpoolSampler(threading.Thread):
    """Largest total size of ``incoming/`` seen while a transfer runs (every 20 ms)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.peak, self.stop = folder, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for f in self.folder.glob("*"):
                try:
                    total += f.stat().st_size
                except FileNotFoundError:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)


def test_large_instances_are_bounded_on_disk_and_in_memory(
    orthanc: LocalOrthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob_mb = scaled(400, 100)
    big = big_cxr(tmp_path / "big.dcm", blob_mb, seed=1)
    uid = str(pydicom.dcmread(big, stop_before_pixels=True, defer_size=1024).SOPInstanceUID)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # stream the file, do not load it

    # 1. above max_instance_mb: refused with 0xA700 while it streams in, never spooled whole
    limit_mb = blob_mb // 4
    node = make_node(tmp_path, orthanc, CXR_NODE_MAX_INSTANCE_MB=str(limit_mb))
    node.start()
    sampler = SpoolSampler(node.spool_dir / "incoming")
    sampler.start()
    refused = send_files(node.port, [big], timeout=120)
    sampler.stop.set()
    sampler.join(5)
    rows = journal_rows(node.spool_dir, "SELECT COUNT(*) FROM jobs")[0][0]
    files = list((node.spool_dir / "incoming").glob("*"))
    refused_lines = [r for r in node.log_records() if r.get("event") == "failed" and r.get("reason") == "too_large"]
    node.stop()

    # 2. below it: analysed and delivered, the blob never in memory. A CXR without the blob goes first: the
    # first image through a node maps code and buffers of its own (~40-70 MiB, with or without a blob), and
    # the node keeps freed memory for reuse (memory_keep_mib), so its start's transient peak does not hide it
    node = make_node(tmp_path / "second", orthanc, CXR_NODE_MAX_INSTANCE_MB=str(2 * blob_mb))
    node.start()
    assert node.proc is not None
    send_files(node.port, [big_cxr(tmp_path / "small.dcm", 0, seed=2)], timeout=60)
    wait_for(lambda: delivered_jobs(node.spool_dir) == 1, 240, "the first CXR analysed and delivered", interval=0.5)
    before = peak_rss_mb(node.proc.pid)
    accepted = send_files(node.port, [big], timeout=120)
    wait_for(lambda: delivered_jobs(node.spool_dir) == 2, 240, "the large CXR analysed and delivered", interval=1.0)
    growth = peak_rss_mb(node.proc.pid) - before
    node.stop()
    report("large instances: private element beyond / within max_instance_mb", tried=2, blob_mb=blob_mb,
           limit_mb=limit_mb, refused_status=hex(refused.statuses.get(uid, -1)), spool_peak_mb=round(sampler.peak / 2**20, 1),
           refused_journal_rows=rows, accepted_status=hex(accepted.statuses.get(uid, -1)),
           analysis_peak_rss_growth_mb=round(growth, 1))  # fmt: skip
    assert refused.statuses.get(uid) == 0xA700, refused
    assert sampler.peak <= (limit_mb + 1) * 2**20, f"the spool held {sampler.peak / 2**20:.0f} MiB of a refused instance"
    assert rows == 0 and not files and len(refused_lines) == 1
    assert accepted.statuses.get(uid) == 0x0000, accepted
    assert growth < blob_mb / 2, f"peak RSS grew by {growth:.0f} MiB for a {blob_mb} MiB element"
