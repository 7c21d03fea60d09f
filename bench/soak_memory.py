"""Memory soak: ``--n`` images (default 2,000) pushed at a steady rate into ``cxr-node serve``; is the
node's resident memory flat?

The node (``NodeProcess``: JSON logs, 2 torch threads) delivers to a dcmtk ``storescp --ignore +xa``
(it accepts every transfer syntax, as Orthanc does, so the JPEG SC goes as the node stores it; without
``+xa`` every SC would take the uncompressed fallback; it answers success and stores nothing: 2,000 SR + SC pairs would fill Orthanc's disk with ~7 GB
of overlays, and the soak is about the node). Images are ``--distinct`` RSNA-style 1024² JPEG
phantoms sent again and again with a fresh SOP Instance UID each time (the node's result UIDs
derive from it, so every image is new work). ``bench/paced.py`` pushes them at ``--rate`` images/s
over one association and samples the RSS of the node and of its result processes every
``--rss-interval`` s.

Reported: RSS (node + result processes) after the first 10 % of the images: first, last, min,
max, spread = (max - min) / first (the target: within ±10 %), drift = (last - first) / first;
peak RSS (the node's VmHWM, plus the children's highest sampled RSS); minor page faults per image
(fresh pages the kernel zero-fills for new buffers: ``CXR_NODE_MEMORY_KEEP_MIB``, ``--env``); latency p50/p95/p99/max
(C-STORE start → job_delivered); host load. ``--json`` keeps every sample.

    python bench/soak_memory.py --n 2000 --rate 4 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    DCMTK_ENV,
    add_output_arguments,
    emit_report,
    free_port,
    hardware,
    peak_rss_bytes,
    rsna_phantoms,
    stop_process,
    wait_port,
)
from paced import PacedPush, RssSampler, latencies_s, latency_summary, per_image_after_warmup, rss_summary  # noqa: E402

sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
from integration_helpers import NodeProcess  # noqa: E402

from dicom_node.testing.local_orthanc import ORTHANC_AET, PUSHER_AET, wait_until  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pydicom
    from pydicom.uid import generate_uid

    base = [
        pydicom.dcmread(f)
        for f in rsna_phantoms(args.scratch / "phantoms", args.distinct, seed=31, size=1024)
    ]

    def make(i: int) -> pydicom.Dataset:
        ds = base[i % len(base)]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        return ds

    work = Path(tempfile.mkdtemp(prefix="soak-", dir=args.scratch))
    dest_port = free_port()
    (work / "dest").mkdir()
    dest = subprocess.Popen(["storescp", "--ignore", "+xa", "-aet", ORTHANC_AET, str(dest_port)], cwd=work / "dest",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV)  # fmt: skip
    node = NodeProcess(workdir=work / "node", port=free_port(), orthanc_dicom_port=dest_port,
                       env_overrides={"CXR_NODE_BATCH_SIZE": str(args.batch), "CXR_NODE_HTTP_PORT": "0",
                                      "CXR_NODE_DECODE_WORKERS": "2",
                                      **dict(kv.split("=", 1) for kv in args.env)})  # fmt: skip
    try:
        wait_port(dest_port, 30, dest)
        node.start(timeout=300)
        assert node.proc is not None
        pid = node.proc.pid
        load0 = hardware()["load_1m"]
        push = PacedPush(
            [], node.port, args.rate, calling=PUSHER_AET, called="AINODE", make=make, count=args.n
        )
        t0 = time.perf_counter()
        with RssSampler(pid, args.rss_interval, lambda: push.sent) as rss:
            push.run()
            pushed_s = time.perf_counter() - t0

            def delivered() -> bool:
                return sum(1 for r in node.log_records() if r.get("event") == "job_delivered") >= args.n

            wait_until(delivered, args.timeout, interval=1.0, what=f"{args.n} job_delivered lines")
            seconds = time.perf_counter() - t0
        lat = latencies_s(push, node.log_records())
        peak_node = peak_rss_bytes(pid) / 2**20
    finally:
        node.stop()
        stop_process(dest)
    samples = rss.samples
    faults_per_image, cpu_ms_per_image = per_image_after_warmup(rss.faults)
    return {
        "hardware": hardware(),
        "n": args.n,
        "rate": args.rate,
        "batch": args.batch,
        "distinct": args.distinct,
        "env": args.env,
        "load_1m_before_after": [load0, hardware()["load_1m"]],
        "push_seconds": pushed_s,
        "seconds": seconds,
        "images_s": args.n / seconds,
        **latency_summary(lat),
        **rss_summary(samples),
        "minor_faults_per_image": faults_per_image,
        "cpu_ms_per_image": cpu_ms_per_image,
        "peak_rss_node_mb": peak_node,
        "peak_rss_children_sampled_mb": max(s[2] for s in samples) / 2**20,
        "peak_rss_total_sampled_mb": max(s[1] + s[2] for s in samples) / 2**20,
        "rss_samples": [(round(t, 1), round(a / 2**20, 1), round(b / 2**20, 1), k) for t, a, b, k in samples],
    }


def to_markdown(r: dict[str, Any]) -> str:
    hw = r["hardware"]
    every = max(1, len(r["rss_samples"]) // 10)
    lines = [
        f"Hardware: {hw['cpu']}, {hw['cores']} logical cores (shared); {r['n']} images at {r['rate']} image/s "
        f"(batch {r['batch']}, {r['distinct']} distinct 1024² phantoms, fresh UIDs), destination storescp --ignore +xa; "
        f"1-min load {r['load_1m_before_after'][0]:.2f} → {r['load_1m_before_after'][1]:.2f}.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| images/s achieved (first C-STORE → last job_delivered) | {r['images_s']:.2f} |",
        f"| RSS node + result processes after the first 10 %: first / last (MiB) | "
        f"{r['rss_first_mb']:.0f} / {r['rss_last_mb']:.0f} |",
        f"| RSS min / max (MiB) | {r['rss_min_mb']:.0f} / {r['rss_max_mb']:.0f} |",
        f"| spread (max − min) / first | {100 * r['rss_spread']:.1f} % |",
        f"| drift (last − first) / first | {100 * r['rss_drift']:+.1f} % |",
        f"| peak RSS: node VmHWM / node + result processes (highest sample) (MiB) | "
        f"{r['peak_rss_node_mb']:.0f} / {r['peak_rss_total_sampled_mb']:.0f} |",
        f"| minor page faults per image, node + result processes, after the first 10 % | "
        f"{r['minor_faults_per_image']:.0f} |",
        f"| CPU ms per image, node + result processes, after the first 10 % | {r['cpu_ms_per_image']:.0f} |",
        f"| latency p50 / p95 / p99 / max (s) | {r['p50_s']:.2f} / {r['p95_s']:.2f} / {r['p99_s']:.2f} / "
        f"{r['max_s']:.2f} |",
        "",
        "RSS over the run (every ~10 %): images sent → node + result processes MiB: "
        + ", ".join(f"{k} → {a + b:.0f}" for _t, a, b, k in r["rss_samples"][::every]),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="images pushed")
    p.add_argument("--rate", type=float, default=4.0, help="images/s")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--distinct", type=int, default=16, help="distinct phantoms, sent round-robin with fresh UIDs"
    )
    p.add_argument("--rss-interval", type=float, default=2.0, help="seconds between RSS samples")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the last delivery")
    p.add_argument("--env", nargs="*", default=[], help="extra CXR_NODE_*=value for the node")
    add_output_arguments(p)
    args = p.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    return emit_report(run(args), args.json, to_markdown)


if __name__ == "__main__":
    sys.exit(main())
