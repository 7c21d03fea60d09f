"""Per-instance latency of C-STORE into a real Orthanc, with and without Nagle's algorithm.

Two senders push the same RSNA-style phantoms (0.3 MB JPEG SC) into one Debian Orthanc on
loopback, one association per round of ``--per-association`` instances:

* dcmtk ``storescu`` (with ``TCP_NODELAY=1``, i.e. the sender never stalls) - isolates Orthanc;
* the node's own ``DicomSender`` (pynetdicom), with the node's ``TCP_NODELAY`` handler and without.

Each is measured against an Orthanc started with ``TCP_NODELAY=1`` in its environment (what
``LocalOrthanc`` and the compose file do) and one started with ``TCP_NODELAY=0`` (DCMTK's
default behaviour on Debian: Nagle on). Runs are interleaved; the table gives the median of
``--repeats`` ms per instance.

    python bench/store_latency.py --n 32 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, add_output_arguments, emit_report, free_port, hardware, median, rsna_phantoms  # noqa: E402

sys.path.insert(0, str(REPO))
import pydicom  # noqa: E402

from dicom_node.delivery.deliver import DicomSender  # noqa: E402
from dicom_node.settings import Destination  # noqa: E402
from dicom_node.storage.journal import OutboxItem  # noqa: E402
from dicom_node.testing.local_orthanc import NODE_AET, ORTHANC_AET, LocalOrthanc  # noqa: E402
from dicom_node.transport import tcp_options  # noqa: E402


def outbox_items(files: Sequence[Path]) -> list[OutboxItem]:
    """The phantoms as the deliverer's outbox rows (sent as stored, JPEG Baseline)."""
    items = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        items.append(OutboxItem(i, i, str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                                str(ds.file_meta.TransferSyntaxUID), str(f), "bench", "pending", 0, 0.0,
                                None, False))  # fmt: skip
    return items


def time_storescu(orthanc: LocalOrthanc, files: Sequence[Path], per_assoc: int) -> float:
    """ms per instance, dcmtk storescu (TCP_NODELAY=1, JPEG Baseline proposed)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    t0 = time.perf_counter()
    for k in range(0, len(files), per_assoc):
        cmd = ["storescu", "-xy", "-aet", NODE_AET, "-aec", ORTHANC_AET, "127.0.0.1", str(orthanc.dicom_port),
               *map(str, files[k:k + per_assoc])]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    return (time.perf_counter() - t0) * 1000 / len(files)


def time_node_sender(orthanc: LocalOrthanc, items: Sequence[OutboxItem], per_assoc: int, nodelay: bool) -> float:
    """ms per instance, the node's DicomSender with or without its TCP_NODELAY handler."""
    saved = list(tcp_options.NODELAY_HANDLERS)
    if not nodelay:
        tcp_options.NODELAY_HANDLERS.clear()
    try:
        sender = DicomSender(NODE_AET, 30.0)
        dest = Destination(kind="dicom", ae_title=ORTHANC_AET, host="127.0.0.1", port=orthanc.dicom_port)
        t0 = time.perf_counter()
        for k in range(0, len(items), per_assoc):
            outcomes = sender.send(dest, items[k : k + per_assoc])
            if not all(o.delivered for o in outcomes):
                raise RuntimeError(f"delivery failed: {outcomes}")
        return (time.perf_counter() - t0) * 1000 / len(items)
    finally:
        tcp_options.NODELAY_HANDLERS[:] = saved


def run(args: argparse.Namespace) -> dict[str, Any]:
    files = rsna_phantoms(args.scratch / "phantoms", args.n, seed=21, size=1024)
    items = outbox_items(files)
    work = Path(tempfile.mkdtemp(prefix="store-latency-", dir=args.scratch))
    orthancs = {
        value: LocalOrthanc(workdir=work / f"orthanc-{value}", http_port=free_port(), dicom_port=free_port(),
                            node_port=free_port(), auto_forward=False, env_overrides={"TCP_NODELAY": value})
        for value in ("1", "0")
    }  # fmt: skip
    senders = {
        "storescu (TCP_NODELAY=1)": lambda o: time_storescu(o, files, args.per_association),
        "node DicomSender, TCP_NODELAY": lambda o: time_node_sender(o, items, args.per_association, True),
        "node DicomSender, Nagle on": lambda o: time_node_sender(o, items, args.per_association, False),
    }
    runs: dict[tuple[str, str], list[float]] = {}
    try:
        for o in orthancs.values():
            o.start()
        for _ in range(args.repeats):
            for value, orthanc in orthancs.items():
                for name, fn in senders.items():
                    ms = fn(orthanc)
                    runs.setdefault((name, value), []).append(ms)
                    print(f"{name} -> Orthanc TCP_NODELAY={value}: {ms:.1f} ms", file=sys.stderr, flush=True)
    finally:
        for o in orthancs.values():
            o.stop()
    rows = [{"sender": name, "orthanc_tcp_nodelay": value, "ms_per_instance": median(v), "runs": v}
            for (name, value), v in runs.items()]  # fmt: skip
    return {"hardware": hardware(), "n": args.n, "per_association": args.per_association,
            "repeats": args.repeats, "rows": rows}  # fmt: skip


def to_markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    lines = [
        f"Hardware: {hw['cpu']}, {hw['cores']} logical cores; N = {report['n']} RSNA-style 0.3 MB JPEG SC, "
        f"{report['per_association']} per association; median of {report['repeats']} interleaved runs.",
        "",
        "| sender | Orthanc started with | ms per instance (runs) | instances/s |",
        "|---|---|---:|---:|",
    ]
    for r in report["rows"]:
        runs = ", ".join(f"{x:.1f}" for x in r["runs"])
        lines.append(f"| {r['sender']} | TCP_NODELAY={r['orthanc_tcp_nodelay']} | {r['ms_per_instance']:.1f} ({runs}) "
                     f"| {1000 / r['ms_per_instance']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--per-association", type=int, default=16, help="instances per association (the node's default)")
    p.add_argument("--repeats", type=int, default=3)
    add_output_arguments(p)
    args = p.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    return emit_report(run(args), args.json, to_markdown)


if __name__ == "__main__":
    sys.exit(main())
