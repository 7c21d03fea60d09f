"""Ingest benchmark: dcmtk storescp (the ceiling) vs the node's SCP with analysis paused.

For each phantom kind (``rsna``: 1024x1024 8-bit JPEG baseline Secondary Capture as in RSNA;
``dx``: 2500x2048 16-bit uncompressed DX) and each number ``k`` of parallel storescu
associations, the same files are pushed, side by side in one run and repeated ``--repeats``
times (median reported), to

* ``storescp`` (one process, associations one after another) and ``storescp --fork``
  (a process per association) writing to ``--output-directory`` (dcmtk does not fsync);
Every dcmtk process runs with ``TCP_NODELAY=1`` (else Nagle + delayed ACK cap each association at
~20 instances/s, see ``common.DCMTK_ENV``).

* ``dicom_node/testing/receive_only.py``: the node's ``Receiver`` + ``Spool`` + ``Journal`` (fsync'ed file,
  atomic rename, SQLite WAL commit before the C-STORE response), no analysis.

    python bench/ingest.py --kinds rsna dx --n-rsna 64 --n-dx 16 --k 1 2 4 --repeats 3 [--json OUT]

Prints a markdown table: instances/s, MB/s, and node / best-ceiling ratio. Between runs the
output is deleted and ``os.sync()`` called (so storescp's unsynced writes are not flushed during the
node's fsyncs), and the order of the receivers rotates from one repeat to the next.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DCMTK_ENV,
    CpuMeter,
    add_output_arguments,
    dx_phantoms,
    emit_report,
    free_port,
    hardware,
    median,
    push_parallel,
    rsna_phantoms,
    stop_process,
    wait_port,
)

SERVERS = ("storescp", "storescp-fork", "node")
#: diagnostic variants of the node: ``node-1m`` announces a 1 MiB maximum PDU (pynetdicom's default
#: is 16 KiB); ``node-nofsync`` skips the spool's fsyncs (NOT a mode the node has; it measures what
#: durability costs, since storescp never fsyncs).
#: ``node-mem`` is the node with ``chunked_receive=False`` (data set assembled in memory, the
#: receive path before issue 6). ``node-2proc``: two receive_only processes on one port
#: (SO_REUSEPORT) sharing one spool and journal, i.e. receiving outside one process's GIL;
#: ``node-fastloop``: pynetdicom's 1 ms reactor sleeps cut to 50 us. Neither is a mode of the node.
#: Each maps to its extra ``receive_only.py`` arguments.
NODE_ARGS: dict[str, list[str]] = {
    "node": [],
    "node-1m": ["--max-pdu", str(1024 * 1024)],
    "node-nofsync": ["--unsafe-no-fsync"],
    "node-mem": ["--memory-receive"],
    "node-2proc": ["--reuse-port"],
    "node-fastloop": ["--reactor-delay", "0.00005"],
}
NODES = tuple(NODE_ARGS)


def _wait_listening(log: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait (bounded) for receive_only's ``LISTENING`` line in ``log``; raise if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        if b"LISTENING" in log.read_bytes():
            return
        time.sleep(0.1)
    raise TimeoutError(f"no LISTENING line in {log} after {timeout} s")


def start_server(kind: str, workdir: Path, port: int) -> list[subprocess.Popen]:
    """Start the receiver process(es) of ``kind`` on ``port`` writing below ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    if kind.startswith("storescp"):
        out = workdir / "out"
        out.mkdir()
        cmd = ["storescp", "-aet", "AINODE", "+xa", "-uf", "-od", str(out)]
        if kind == "storescp-fork":
            cmd.append("--fork")
        cmds = [cmd + [str(port)]]
    elif kind in NODES:
        cmd = [sys.executable, "-m", "dicom_node.testing.receive_only", "--spool", str(workdir / "spool"),
               "--port", str(port), "--max-associations", "16", *NODE_ARGS[kind]]  # fmt: skip
        cmds = [cmd, cmd] if kind == "node-2proc" else [cmd]
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    env = DCMTK_ENV if kind.startswith("storescp") else None  # TCP_NODELAY=1: see common.DCMTK_ENV
    procs: list[subprocess.Popen] = []
    try:
        for i, cmd in enumerate(cmds):
            # one after the other: a Spool removes stale .tmp files when it starts
            log_path = workdir / f"server{i or ''}.log"
            with open(log_path, "wb") as log:
                procs.append(
                    subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
                )
            if kind in NODES:
                _wait_listening(log_path, procs[-1])
            else:
                wait_port(port, 60, procs[-1])
    except Exception as exc:
        for proc in procs:
            stop_process(proc)
        tail = "".join(p.read_text(errors="replace")[-2000:] for p in sorted(workdir.glob("server*.log")))
        raise RuntimeError(f"{kind} did not start: {exc}; log:\n{tail}") from exc
    return procs


def stored_count(kind: str, workdir: Path) -> int:
    """Instances the receiver persisted (files written / journal rows)."""
    if kind.startswith("storescp"):
        return sum(1 for p in (workdir / "out").iterdir() if p.is_file())
    with sqlite3.connect(workdir / "spool" / "journal.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def one_run(kind: str, files: Sequence[Path], k: int, scratch: Path) -> dict[str, Any]:
    """Push ``files`` over ``k`` associations into a fresh receiver of ``kind``; returns the figures."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=scratch))
    port = free_port()
    procs = start_server(kind, workdir, port)
    try:
        time.sleep(0.3)
        # CPU of the receiver process(es); storescp --fork's children end before it can be read
        cpu = CpuMeter({kind: lambda: [p.pid for p in procs]}).start()
        res = push_parallel(files, port, k)
        cpu_s = cpu.stop()[kind]
        time.sleep(0.2)  # forked storescp children finish writing after the release
        stored = stored_count(kind, workdir)
    finally:
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        os.sync()  # leave no dirty pages / pending deletes for the next receiver's fsyncs to pay for
    if res.failures or stored != len(files) or any(res.returncodes):
        raise RuntimeError(
            f"{kind} k={k}: {stored}/{len(files)} stored, storescu rc {res.returncodes}, "
            f"{res.failures} errors; output: {res.outputs[0][-2000:]!r}"
        )
    cpu_ms = None if kind == "storescp-fork" else 1000 * cpu_s / len(files)
    return {"seconds": res.seconds, "inst_s": res.instances_per_s, "mb_s": res.mb_per_s, "cpu_ms": cpu_ms}


def run(kinds: Sequence[str], n_rsna: int, n_dx: int, ks: Sequence[int], repeats: int, scratch: Path,
        servers: Sequence[str] = SERVERS) -> dict[str, Any]:  # fmt: skip
    """All runs; returns the report (medians per kind, k, server)."""
    cache = scratch / "phantoms"
    sets = {}
    if "rsna" in kinds:
        sets["rsna"] = rsna_phantoms(cache, n_rsna, seed=11, size=1024)
    if "dx" in kinds:
        sets["dx"] = dx_phantoms(cache, n_dx, seed=11)
    rows = []
    for name, files in sets.items():
        for k in ks:
            raw: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
            for rep in range(repeats):
                # interleaved so host load hits all alike; the order rotates so no receiver always
                # follows the same one
                for server in [*servers[rep % len(servers) :], *servers[: rep % len(servers)]]:
                    raw[server].append(one_run(server, files, k, scratch))
            row: dict[str, Any] = {"kind": name, "n": len(files), "k": k,
                                   "mb_per_instance": sum(f.stat().st_size for f in files) / len(files) / 1e6}  # fmt: skip
            for server in servers:
                row[server] = {m: median([r[m] for r in raw[server]]) for m in ("inst_s", "mb_s")}
                cpu_runs = [r["cpu_ms"] for r in raw[server] if r["cpu_ms"] is not None]
                row[server]["cpu_ms"] = median(cpu_runs) if cpu_runs else None
                row[server]["runs_inst_s"] = [round(r["inst_s"], 2) for r in raw[server]]
            ceilings = [row[s]["inst_s"] for s in servers if s not in NODES]
            for s in NODES:
                if s in servers and ceilings:
                    row[f"ratio_{s}"] = row[s]["inst_s"] / max(ceilings)
            rows.append(row)
    return {"hardware": hardware(), "repeats": repeats, "rows": rows}


def to_markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    variants = [s for s in NODES[1:] if any(s in r for r in report["rows"])]  # only those that ran
    lines = [
        f"Hardware: {hw['cpu']}, {hw['cores']} logical cores (shared; load {hw['load_1m']:.1f} at start); "
        f"median of {report['repeats']} interleaved runs.",
        "",
        "| phantom | N | MB/inst | k | storescp inst/s (MB/s) | storescp --fork inst/s (MB/s) "
        "| node (receive+persist) inst/s (MB/s) | node / best ceiling |"
        + "".join(f" {s} inst/s | {s} / best ceiling |" for s in variants),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(variants),
    ]
    for r in report["rows"]:

        def cell(s: str, r: dict[str, Any] = r) -> str:
            return f"{r[s]['inst_s']:.1f} ({r[s]['mb_s']:.1f})" if s in r else "–"

        def ratio(s: str, r: dict[str, Any] = r) -> str:
            return f"{100 * r[f'ratio_{s}']:.0f}%" if f"ratio_{s}" in r else "–"

        lines.append(f"| {r['kind']} | {r['n']} | {r['mb_per_instance']:.2f} | {r['k']} | {cell('storescp')} "
                     f"| {cell('storescp-fork')} | {cell('node')} | {ratio('node')} |"
                     + "".join(f" {cell(s)} | {ratio(s)} |" for s in variants))  # fmt: skip
    servers = [
        s for s in ("storescp", *NODES) if any(r.get(s, {}).get("cpu_ms") is not None for r in report["rows"])
    ]
    if servers:
        lines += [
            "",
            "CPU per instance of the receiving process(es) (ms, /proc utime + stime over the push; "
            "storescp --fork's children are not counted):",
            "",
            "| phantom | k | " + " | ".join(servers) + " |",
            "|---|---:|" + "---:|" * len(servers),
        ]
        for r in report["rows"]:
            cpu = [r.get(s, {}).get("cpu_ms") for s in servers]
            lines.append(
                f"| {r['kind']} | {r['k']} | "
                + " | ".join("–" if c is None else f"{c:.2f}" for c in cpu)
                + " |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["rsna", "dx"], choices=["rsna", "dx"])
    p.add_argument("--n-rsna", type=int, default=64)
    p.add_argument("--n-dx", type=int, default=16)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS + NODES)
    add_output_arguments(p)
    args = p.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    return emit_report(
        run(args.kinds, args.n_rsna, args.n_dx, args.k, args.repeats, args.scratch, args.servers),
        args.json,
        to_markdown,
    )


if __name__ == "__main__":
    sys.exit(main())
