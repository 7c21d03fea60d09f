"""The node's DICOM I/O stages, timed in this process for ``bench/profile_stages.py``.

* receive: the node's ``Receiver`` (pynetdicom SCP, spool file, journal row, as ``NodeService``
  builds it; no worker) in this process, fed by a dcmtk ``storescu`` subprocess over one
  association; this process's CPU time is the SCP side only.
* deliver: the node's ``DicomSender`` sends each image's SR and SC over one association per image
  (what the deliverer does at a low arrival rate) to a dcmtk ``storescp --ignore`` subprocess.

Both return (wall ms, CPU ms) per image, like ``profile_stages.per_image_ms``.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import DCMTK_ENV, free_port, push_parallel, stop_process, wait_port


def receive_ms(files: Sequence[Path], scratch: Path) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) per image received by the node's SCP."""
    from dicom_node.scp.receive import Receiver
    from dicom_node.scp.routing import RoutingRules
    from dicom_node.settings import NodeSettings
    from dicom_node.storage.journal import Journal
    from dicom_node.storage.spool import Spool

    work = Path(tempfile.mkdtemp(prefix="recv-", dir=scratch))
    settings = NodeSettings(port=free_port(), bind="127.0.0.1", ae_title="AINODE", spool_dir=work / "spool",
                            destinations=[], allowed_aets=["BENCHSCU"])  # fmt: skip
    spool = Spool(settings.spool_dir)
    journal = Journal(settings.journal_path)
    receiver = Receiver(settings, spool, journal, rules=RoutingRules.from_settings(settings))
    receiver.start()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        push = push_parallel(files, receiver.port, 1, calling="BENCHSCU", called="AINODE")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if push.failures or any(push.returncodes):
            raise RuntimeError(f"storescu failed: {push.outputs[0][-800:]!r}")
        received = journal.counts().get("job.received", 0)
        if received != len(files):
            raise RuntimeError(f"{received} jobs received for {len(files)} files")
    finally:
        receiver.stop(10)
        journal.close()
    return wall * 1000 / len(files), cpu * 1000 / len(files)


def deliver_ms(pairs: Sequence[tuple[bytes, ...]], scratch: Path) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) per image whose encoded results ``pairs[i]`` (SR, SC)
    are sent by the node's ``DicomSender``, one association per image."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    from dicom_node.delivery.deliver import DicomSender
    from dicom_node.settings import parse_destination
    from dicom_node.storage.journal import OutboxItem

    work = Path(tempfile.mkdtemp(prefix="deliver-", dir=scratch))
    port = free_port()
    # +xa: accept every transfer syntax, as Orthanc does (the SC is JPEG Baseline by default)
    dest_proc = subprocess.Popen(["storescp", "--ignore", "+xa", "-aet", "DEST", str(port)], cwd=work,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV)  # fmt: skip
    items: list[list[OutboxItem]] = []
    for i, pair in enumerate(pairs):
        group = []
        for j, data in enumerate(pair):
            path = work / f"{i}-{j}.dcm"
            path.write_bytes(data)
            ds = dcmread(DicomBytesIO(data), stop_before_pixels=True)
            group.append(OutboxItem(id=2 * i + j, job_id=i, sop_instance_uid=str(ds.SOPInstanceUID),
                                    sop_class_uid=str(ds.SOPClassUID),
                                    transfer_syntax=str(ds.file_meta.TransferSyntaxUID), path=str(path),
                                    destination="DEST", state="pending", attempts=0, next_attempt_at=0.0,
                                    last_error=None, permanent=False))  # fmt: skip
        items.append(group)
    sender = DicomSender("AINODE", 30.0)
    dest = parse_destination(f"DEST@127.0.0.1:{port}")
    try:
        wait_port(port, 30, dest_proc)
        t0, c0 = time.perf_counter(), time.process_time()
        for group in items:
            outcomes = sender.send(dest, group)
            if not all(o.delivered for o in outcomes):
                raise RuntimeError(f"delivery failed: {outcomes!r}")
        close = getattr(sender, "close", None)  # (older trees: released inline)
        if close is not None:
            close()  # the releases of the last associations count too
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        stop_process(dest_proc)
    return wall * 1000 / len(pairs), cpu * 1000 / len(pairs)
