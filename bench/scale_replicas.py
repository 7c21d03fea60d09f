"""Scale-out benchmark: images/s with 1, 2, 3 ... ``cxr-node serve`` replicas behind HAProxy, results in one Orthanc.

For every replica count R: R fresh replicas (each its own spool, ports; the test suite's
``replica_helpers``) behind Debian's HAProxy rendered by ``dicom_node.haproxy_config`` (TCP,
roundrobin, /readyz checks), a warm-up push whose results are waited for and wiped, then ``N``
RSNA-style phantoms pushed through HAProxy with ``k`` parallel dcmtk storescu associations; the clock
runs from the first C-STORE to the last of the 2·N results stored in Orthanc. Reported per R (median
of ``--repeats``): images/s, speed-up over R = 1, associations per replica (HAProxy's counters), CPU
seconds per image of all processes (nodes + result processes, Orthanc, HAProxy) and the CPU
utilisation of the host (CPU seconds / (wall seconds x cores)): on a CPU-only host the cores, not
the replica count, cap the rate.

Also measured once, as the hub's ceiling for the extrapolation (docs/SCALE.md): Orthanc's own C-STORE
ingest of the same phantoms (``k`` parallel storescu straight into Orthanc, instances/s).

    python bench/scale_replicas.py --replicas 1 2 3 --n 96 --senders 6 --repeats 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402,E501
    REPO,
    CpuMeter,
    add_output_arguments,
    child_pids,
    emit_report,
    hardware,
    median,
    push_parallel,
    rsna_phantoms,
)
from end_to_end import orthanc_count, wipe  # noqa: E402

sys.path.insert(0, str(REPO / "tests" / "reliability"))
from replica_helpers import HaproxyProcess, as_replica, replica, start_all  # noqa: E402

from dicom_node.testing.local_orthanc import PUSHER_AET, LocalOrthanc, free_port, wait_until  # noqa: E402


def _push(files: Sequence[Path], port: int, senders: int) -> None:
    push = push_parallel(files, port, senders, calling=PUSHER_AET, called="AINODE")
    if push.failures or any(push.returncodes):
        raise RuntimeError(f"push failed: rc {push.returncodes}: {push.outputs[0][-1500:]!r}")


def one_run(orthanc: LocalOrthanc, files: Sequence[Path], warmup: Sequence[Path], *, replicas: int, senders: int,
            batch: int, torch_threads: int, workdir: Path, timeout: float) -> dict[str, Any]:  # fmt: skip
    """R replicas + HAProxy; warm up; time N images to 2·N results in Orthanc."""
    env = {"CXR_NODE_BATCH_SIZE": str(batch), "CXR_NODE_DECODE_WORKERS": "2",
           "OMP_NUM_THREADS": str(torch_threads), "MKL_NUM_THREADS": str(torch_threads)}  # fmt: skip
    nodes = [replica(workdir, orthanc, f"node-{i}", **env) for i in range(replicas)]
    names = [f"node-{i}" for i in range(replicas)]
    lb = HaproxyProcess(workdir / "haproxy", [as_replica(nd, nm) for nd, nm in zip(nodes, names, strict=True)])
    wipe(orthanc)
    try:
        lb.start()
        start_all(nodes)
        lb.wait_status(names, "UP", 30)
        if warmup:
            _push(warmup, lb.port, senders)
            wait_until(lambda: orthanc_count(orthanc) >= 2 * len(warmup), timeout, interval=0.1, what="warm-up results")
            wipe(orthanc)
        before = {nm: int(s["stot"]) for nm, s in lb.server_stats().items()}
        pids = [nd.proc.pid for nd in nodes if nd.proc is not None]
        assert orthanc.proc is not None and lb.proc is not None
        opid, hpid = orthanc.proc.pid, lb.proc.pid
        cpu = CpuMeter({"nodes": lambda: [*pids, *(c for p in pids for c in child_pids(p))],
                        "orthanc": lambda: [opid], "haproxy": lambda: [hpid]})  # fmt: skip
        cpu.start()
        t0 = time.perf_counter()
        _push(files, lb.port, senders)
        wait_until(lambda: orthanc_count(orthanc) >= 2 * len(files), timeout, interval=0.1, what="results in Orthanc")
        seconds = time.perf_counter() - t0
        cpu_s = cpu.stop()
        split = {nm: int(s["stot"]) - before[nm] for nm, s in lb.server_stats().items()}
    finally:
        for nd in nodes:
            nd.stop()
        lb.stop()
    cores = hardware()["cores"]
    total = sum(cpu_s.values())
    return {"images_s": len(files) / seconds, "seconds": seconds, "associations": split,
            "cpu_ms_per_image": 1000 * total / len(files),
            **{f"cpu_ms_{k}": 1000 * v / len(files) for k, v in cpu_s.items()},
            "cpu_utilisation": total / (seconds * cores)}  # fmt: skip


def orthanc_ingest(orthanc: LocalOrthanc, files: Sequence[Path], senders: int) -> float:
    """Instances/s Orthanc stores from ``senders`` parallel storescu (the hub's C-STORE ceiling)."""
    wipe(orthanc)
    t0 = time.perf_counter()
    push = push_parallel(files, orthanc.dicom_port, senders, calling=PUSHER_AET, called=orthanc.ae_title)
    seconds = time.perf_counter() - t0
    if push.failures or any(push.returncodes) or orthanc_count(orthanc) != len(files):
        raise RuntimeError(f"Orthanc ingest failed: rc {push.returncodes}, {orthanc_count(orthanc)} stored")
    wipe(orthanc)
    return len(files) / seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch: Path = args.scratch
    hw = hardware()  # the load average before the runs (the host may be shared)
    files = rsna_phantoms(scratch / "phantoms", args.n, seed=21, size=args.size)
    warmup = rsna_phantoms(scratch / "phantoms", args.warmup, seed=97, size=args.size) if args.warmup else []
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=scratch))
    orthanc = LocalOrthanc(workdir=work / "orthanc", http_port=free_port(), dicom_port=free_port(),
                           node_port=free_port(), auto_forward=False)  # fmt: skip
    rows = []
    try:
        orthanc.start()
        ingest = median([orthanc_ingest(orthanc, files, args.senders) for _ in range(args.repeats)])
        runs: dict[int, list[dict[str, Any]]] = {r: [] for r in args.replicas}
        for rep in range(args.repeats):
            for r in args.replicas:  # interleaved: host load hits every replica count alike
                res = one_run(orthanc, files, warmup, replicas=r, senders=args.senders, batch=args.batch,
                              torch_threads=args.torch_threads, workdir=work / f"r{r}-{rep}", timeout=args.timeout)  # fmt: skip
                print(f"replicas={r} rep={rep}: {res}", file=sys.stderr, flush=True)
                runs[r].append(res)
        for r, rruns in runs.items():
            row: dict[str, Any] = {"replicas": r, "runs_images_s": [round(x["images_s"], 2) for x in rruns],
                                   "associations": rruns[-1]["associations"]}  # fmt: skip
            for key in ("images_s", "cpu_ms_per_image", "cpu_ms_nodes", "cpu_ms_orthanc", "cpu_ms_haproxy",
                        "cpu_utilisation"):  # fmt: skip
                row[key] = median([x[key] for x in rruns])
            rows.append(row)
    finally:
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = next((row["images_s"] for row in rows if row["replicas"] == 1), None)
    for row in rows:
        row["speedup"] = row["images_s"] / base if base else None
    return {"hardware": hw, "load_1m_end": hardware()["load_1m"], "n": args.n, "size": args.size, "senders": args.senders, "batch": args.batch,
            "torch_threads": args.torch_threads, "warmup": args.warmup, "repeats": args.repeats,
            "orthanc_ingest_instances_s": ingest, "rows": rows}  # fmt: skip


def to_markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    lines = [
        f"Host: {hw['cpu']}, {hw['cores']} cores, 1-min load {hw['load_1m']:.1f} at the start and "
        f"{report['load_1m_end']:.1f} at the end; "
        f"N = {report['n']} RSNA-style {report['size']}² SCs, "
        f"{report['senders']} storescu associations through HAProxy, batch {report['batch']}, "
        f"{report['torch_threads']} torch threads per replica, {report['warmup']} warm-up images, "
        f"median of {report['repeats']} runs.",
        "",
        "| replicas | images/s (runs) | speed-up | associations per replica (last run) | CPU ms / image "
        "(nodes / Orthanc / HAProxy) | host CPU utilisation |",
        "|---:|---:|---:|---|---:|---:|",
    ]
    for row in report["rows"]:
        runs = ", ".join(f"{x:.2f}" for x in row["runs_images_s"])
        split = " / ".join(str(v) for v in row["associations"].values())
        lines.append(
            f"| {row['replicas']} | **{row['images_s']:.2f}** ({runs}) | {row['speedup']:.2f}× | {split} | "
            f"{row['cpu_ms_per_image']:.0f} ({row['cpu_ms_nodes']:.0f} / {row['cpu_ms_orthanc']:.0f} / "
            f"{row['cpu_ms_haproxy']:.1f}) | {100 * row['cpu_utilisation']:.0f} % |"
        )
    lines += ["", f"Orthanc's own C-STORE ingest of the same files ({report['senders']} associations): "
              f"**{report['orthanc_ingest_instances_s']:.0f} instances/s**."]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--n", type=int, default=96, help="timed images per run")
    p.add_argument("--warmup", type=int, default=16, help="images through every replica set before the clock starts")
    p.add_argument("--senders", type=int, default=6, help="parallel storescu associations")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--torch-threads", type=int, default=2, help="OMP/MKL threads of each replica")
    p.add_argument("--size", type=int, default=1024, help="phantom edge in pixels")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0)
    add_output_arguments(p)
    args = p.parse_args(argv)
    if min(args.replicas) < 1 or args.n < 1 or args.senders < 1:
        p.error(f"replicas, n and senders must be >= 1, got {args.replicas}, {args.n}, {args.senders}")
    return emit_report(run(args), args.json, to_markdown)


if __name__ == "__main__":
    sys.exit(main())
