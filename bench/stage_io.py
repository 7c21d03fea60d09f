"""The node's DICOM I/O stages, timed in this process for ``bench/profile_stages.py``.

* receive: the node's ``Receiver`` (pynetdicom SCP, spool file, journal row, as ``NodeService``
  builds it; no worker) in this process, fed by a dcmtk ``storescu`` subprocess over one
  association; this process's CPU time is the SCP side only.
* association: the same ``Receiver`` opened and closed the way Orthanc forwards a one-image study
  (one association per study, the 127 contexts Orthanc 1.10 proposes: ``bench/orthanc_like_scu.py``),
  one C-STORE in each; this process's CPU per association.
* deliver: the node's ``DicomSender`` sends each image's SR and SC (one batch per image, what the
  deliverer does at a low arrival rate) to a dcmtk ``storescp --ignore +xa`` subprocess that
  negotiates the maximum PDU the shipped Orthanc configuration sets (``MaximumPduLength``, 128 KiB):
  as the node does it, the association is kept between images (``delivery_idle_release_s``; the
  releases of the kept association and the CPU of its idle polling between images count).
  ``CXR_BENCH_DELIVER_AS_BEFORE=1`` (or ``keep=False, max_pdu=16384``) delivers the way the node did
  before issue 15's I/O pass: one association per image, storescp's and Orthanc's default 16 KiB PDUs
  (this tree's sender still sends the spool files as stored; the whole old behaviour, including the
  decode and re-encode of every file by pynetdicom, is this script run in the old tree).

Both return (wall ms, CPU ms) per image, like ``profile_stages.per_image_ms``.

Run on its own it times the I/O rows for SR + uncompressed SC and SR + JPEG Baseline SC (the SC
transcoded with Pillow), both ways, on RSNA-style phantoms; for a side-by-side comparison, run this
script with ``PYTHONPATH`` set to each code tree in turn::

    PYTHONPATH=$PWD python bench/stage_io.py --n 16 --repeats 3 --scratch /tmp/cxr-bench
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DCMTK_ENV, free_port, hardware, push_parallel, rsna_phantoms, stop_process, wait_port  # noqa: E402

#: the maximum PDU the shipped Orthanc configuration negotiates (dicom_node/orthanc/orthanc.json)
DEST_MAX_PDU = 131072
#: storescp's and Orthanc's default
DEFAULT_MAX_PDU = 16384
#: the node's default ``delivery_idle_release_s``
KEEP_S = 5.0


def as_before() -> bool:
    """``CXR_BENCH_DELIVER_AS_BEFORE=1``: deliver as the node did before (one association per image, 16 KiB PDUs)."""
    return os.environ.get("CXR_BENCH_DELIVER_AS_BEFORE", "") not in ("", "0")


@contextlib.contextmanager
def _node_scp(scratch: Path, prefix: str) -> Iterator[tuple[Any, Any]]:
    """The node's ``Receiver`` (as ``NodeService`` builds it, no worker) on a free port in this
    process, with its journal; stopped on exit."""
    from dicom_node.scp.receive import Receiver
    from dicom_node.scp.routing import RoutingRules
    from dicom_node.settings import NodeSettings
    from dicom_node.storage.journal import Journal
    from dicom_node.storage.spool import Spool

    work = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch))
    settings = NodeSettings(port=free_port(), bind="127.0.0.1", ae_title="AINODE", spool_dir=work / "spool",
                            destinations=[], allowed_aets=["BENCHSCU"])  # fmt: skip
    journal = Journal(settings.journal_path)
    receiver = Receiver(settings, Spool(settings.spool_dir), journal, rules=RoutingRules.from_settings(settings))
    receiver.start()
    try:
        yield receiver, journal
    finally:
        receiver.stop(10)
        journal.close()


def receive_ms(files: Sequence[Path], scratch: Path) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) per image received by the node's SCP."""
    with _node_scp(scratch, "recv-") as (receiver, journal):
        t0, c0 = time.perf_counter(), time.process_time()
        push = push_parallel(files, receiver.port, 1, calling="BENCHSCU", called="AINODE")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if push.failures or any(push.returncodes):
            raise RuntimeError(f"storescu failed: {push.outputs[0][-800:]!r}")
        received = journal.counts().get("job.received", 0)
        if received != len(files):
            raise RuntimeError(f"{received} jobs received for {len(files)} files")
    return wall * 1000 / len(files), cpu * 1000 / len(files)


def association_ms(file: Path, scratch: Path, n: int = 16) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) per association opened with the node's SCP the way Orthanc
    forwards a one-image study: A-ASSOCIATE with the 127 contexts Orthanc proposes, one C-STORE of
    ``file`` (spool file, journal row), A-RELEASE; ``n`` associations from a child process
    (``bench/orthanc_like_scu.py``), whose CPU is not counted."""
    with _node_scp(scratch, "assoc-") as (receiver, journal):
        scu = [sys.executable, str(Path(__file__).resolve().parent / "orthanc_like_scu.py"), "send", str(receiver.port)]
        subprocess.run([*scu, "1", str(file)], check=True, timeout=120)  # the SCP's first association: warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        subprocess.run([*scu, str(n), str(file)], check=True, timeout=600)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        received = journal.counts().get("job.received", 0)
        if received != n + 1:
            raise RuntimeError(f"{received} jobs received for {n + 1} associations")
    return wall * 1000 / n, cpu * 1000 / n


def deliver_ms(
    pairs: Sequence[tuple[bytes, ...]], scratch: Path, *, keep: bool | None = None, max_pdu: int | None = None
) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) per image whose encoded results ``pairs[i]`` (SR, SC)
    are sent by the node's ``DicomSender``, one batch per image. ``keep``: the association is kept
    between images (default: as the node does, unless :func:`as_before`); ``max_pdu``: the
    destination's maximum PDU (default :data:`DEST_MAX_PDU`, or 16 KiB :func:`as_before`)."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    from dicom_node.delivery.deliver import DicomSender
    from dicom_node.settings import parse_destination
    from dicom_node.storage.journal import OutboxItem

    keep = (not as_before()) if keep is None else keep
    max_pdu = (DEFAULT_MAX_PDU if as_before() else DEST_MAX_PDU) if max_pdu is None else max_pdu
    work = Path(tempfile.mkdtemp(prefix="deliver-", dir=scratch))
    port = free_port()
    # +xa: accept every transfer syntax, as Orthanc does (the SC is JPEG Baseline by default)
    dest_proc = subprocess.Popen(["storescp", "--ignore", "+xa", "--max-pdu", str(max_pdu), "-aet", "DEST", str(port)],
                                 cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV)  # fmt: skip
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
    options = {}
    if "idle_release_s" in inspect.signature(DicomSender).parameters:  # (older trees: no kept associations)
        options["idle_release_s"] = KEEP_S if keep else 0.0
    sender = DicomSender("AINODE", 30.0, **options)
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
            close()  # the releases of the last (or kept) associations count too
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        stop_process(dest_proc)
    return wall * 1000 / len(pairs), cpu * 1000 / len(pairs)


def result_pairs(files: Sequence[Path]) -> dict[str, list[tuple[bytes, bytes]]]:
    """Encoded (SR, SC) of each phantom, built by the node's builders with one box found, and the
    same with the SC transcoded to JPEG Baseline (Pillow, quality 90): {"uncompressed SC": ..., "JPEG SC": ...}."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from dicom_node.results.sc.build import build_sc
    from dicom_node.results.sr.build import build_sr
    from dicom_node.storage.spool import dataset_bytes
    from models.findings import RSNA_CLASSES, Box, FindingCode, Findings, ModelInfo

    models = (ModelInfo("cxr_classification", "0.1.0", "0123456789ab"),
              ModelInfo("cxr_opacity_detection", "0.1.0", "ba9876543210"))  # fmt: skip
    raw, jpeg = [], []
    for f in files:
        ds = pydicom.dcmread(f)
        rows, cols = int(ds.Rows), int(ds.Columns)
        findings = Findings(sop_instance_uid=str(ds.SOPInstanceUID), analysed=True, rows=rows, columns=cols,
                            class_probabilities=dict(zip(RSNA_CLASSES, (0.15, 0.15, 0.7), strict=True)),
                            probability=0.7, finding=FindingCode("112001", "DCM", "Opacity"), threshold=0.5,
                            boxes=(Box(cols * 0.2, rows * 0.3, cols * 0.2, rows * 0.25, score=0.8),),
                            detection_threshold=0.5, models=models)  # fmt: skip
        sr, sc = build_sr(ds, findings), build_sc(ds, findings)
        sc_ds = getattr(sc, "dataset", sc)
        raw.append((dataset_bytes(sr), dataset_bytes(sc_ds)))
        if str(sc_ds.file_meta.TransferSyntaxUID) == JPEGBaseline8Bit:  # (a tree whose SC is JPEG already)
            jpeg.append(raw[-1])
            continue
        sj = pydicom.dcmread(io.BytesIO(raw[-1][1]))
        rgb = np.asarray(sj.pixel_array, dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
        sj.PixelData = encapsulate([buf.getvalue()])
        sj["PixelData"].VR = "OB"
        sj.PhotometricInterpretation = "YBR_FULL_422"
        sj.LossyImageCompression = "01"
        sj.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        jpeg.append((raw[-1][0], dataset_bytes(sj)))
    return {"uncompressed SC": raw, "JPEG SC": jpeg}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time the node's DICOM I/O rows (receive, deliver) per image.")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    args = p.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    files = rsna_phantoms(args.scratch / "phantoms", args.n, seed=11, size=1024)
    pairs = result_pairs(files)
    sizes = {k: statistics.mean(len(b) for pr in v for b in pr[1:]) / 1e6 for k, v in pairs.items()}
    rows: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        rows.setdefault("receive (storescu -> node's SCP, one association)", []).append(
            receive_ms(files, args.scratch)
        )
        for kind, pr in pairs.items():
            rows.setdefault(
                f"deliver SR + {kind} ({sizes[kind]:.2f} MB), association kept, 128 KiB PDUs", []
            ).append(deliver_ms(pr, args.scratch, keep=True, max_pdu=DEST_MAX_PDU))
            rows.setdefault(f"deliver SR + {kind}, association per image, 16 KiB PDUs", []).append(
                deliver_ms(pr, args.scratch, keep=False, max_pdu=DEFAULT_MAX_PDU))  # fmt: skip
    hw = hardware()
    import dicom_node

    print(f"{hw['cpu']}, {hw['cores']} cores, load {hw['load_1m']:.1f}; tree {Path(dicom_node.__file__).parent.parent}; "
          f"{args.n} images; median of {args.repeats}")  # fmt: skip
    print("\n| row | wall ms per image | CPU ms per image | least CPU ms |\n|---|---:|---:|---:|")
    for name, vals in rows.items():
        wall, cpu = statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {min(v[1] for v in vals):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
