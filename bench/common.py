"""Shared helpers of the pipeline benchmarks: hardware description, phantoms, parallel dcmtk pushes, RSS.

Every benchmark script imports this module; nothing here starts a server by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable from a plain checkout
    sys.path.insert(0, str(REPO))

from dicom_node.testing.local_orthanc import free_port  # noqa: E402,F401  (the one copy; re-used by the bench scripts)

#: dcmtk storescu option proposing a transfer syntax (plus the uncompressed ones).
STORESCU_TS_OPTION = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2": "-xi",
}


def pause_for_certain(assoc: Any) -> None:
    """Before a ``send_*`` of a bench SCU: park ``assoc``'s reactor for certain (installed on first use),
    as the node's own SCUs do (``dicom_node/transport/reactor_checkpoint.py``: pynetdicom's own pause can
    let its reactor take the C-STORE response, and the sender then waits its DIMSE timeout). Nothing in a
    tree without that module (this script is copied into older trees by ``profile_side_by_side.py``)."""
    try:
        from dicom_node.transport.reactor_checkpoint import (
            ReactorCheckpoint,
            install_checkpoint,
            pause_reactor,
        )
    except ImportError:
        return
    if not isinstance(getattr(assoc, "_reactor_checkpoint", None), ReactorCheckpoint):
        install_checkpoint(assoc)
    pause_reactor(assoc)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """CPU model, logical core count, 1-min load average and (if present) the GPU name."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_1m": os.getloadavg()[0]}
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch"] = torch.__version__
    except Exception:  # torch absent: ingest benchmarks do not need it
        info["gpu"] = None
    return info


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait (bounded) until something listens on 127.0.0.1:``port``; raise if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """SIGTERM, bounded wait, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (ValueError naming it otherwise)."""
    if not values:
        raise ValueError(f"median of an empty sequence: {values!r}")
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100]."""
    if not values or not 0 <= q <= 100:
        raise ValueError(f"percentile needs values and q in [0, 100], got {len(values)} values, q={q!r}")
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


# ------------------------------------------------------------------------------------- phantoms
def rsna_phantoms(out: Path, n: int, *, seed: int = 1, size: int = 1024) -> list[Path]:
    """``n`` RSNA-style Secondary Capture phantoms (JPEG baseline 8-bit), cached in ``out``."""
    from models.phantoms.synth import write_rsna_dataset

    folder = out / f"rsna-{size}-{seed}-{n}"
    images = folder / "stage_2_train_images"
    files = sorted(images.glob("*.dcm")) if images.is_dir() else []
    if len(files) != n:
        shutil.rmtree(folder, ignore_errors=True)
        write_rsna_dataset(folder, n=n, seed=seed, size=size)
        files = sorted(images.glob("*.dcm"))
    if len(files) != n:
        raise RuntimeError(f"expected {n} phantoms in {images}, found {len(files)}")
    return files


def dx_phantoms(out: Path, n: int, *, seed: int = 1, rows: int = 2500, columns: int = 2048) -> list[Path]:
    """``n`` 16-bit uncompressed DX phantoms with distinct SOP Instance UIDs, cached in ``out``."""
    from models.phantoms.synth import write_dx_phantom

    folder = out / f"dx-{rows}x{columns}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        p = folder / f"dx{i:04d}.dcm"
        if not p.exists():
            write_dx_phantom(p, rows=rows, columns=columns, bits=16, seed=seed * 100003 + i)
        files.append(p)
    return files


def transfer_syntax(path: Path) -> str:
    """Transfer Syntax UID of a Part-10 file."""
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


# ------------------------------------------------------------------------------------- pushing
@dataclass
class PushResult:
    """Outcome of pushing files over ``k`` parallel storescu associations."""

    seconds: float
    files: int
    bytes: int
    failures: int
    returncodes: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def instances_per_s(self) -> float:
        return self.files / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6


def storescu_cmd(port: int, files: Sequence[Path], *, calling: str, called: str, ts_option: str) -> list[str]:
    """dcmtk storescu command line sending ``files`` over one association."""
    return ["storescu", ts_option, "-aet", calling, "-aec", called, "-to", "30", "-ta", "30", "-td", "120",
            "127.0.0.1", str(port), *map(str, files)]  # fmt: skip


#: dcmtk leaves Nagle's algorithm on unless ``TCP_NODELAY`` is set in its environment; with it on,
#: every C-STORE waits for the peer's delayed ACK (~40 ms), capping one association at ~20
#: instances/s whatever the receiver does. Every dcmtk process of the benchmarks gets this.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def push_parallel(
    files: Sequence[Path], port: int, k: int, *, calling: str = "BENCHSCU", called: str = "AINODE",
    timeout: float = 600.0, nodelay: bool = True,
) -> PushResult:  # fmt: skip
    """Send ``files`` split round-robin over ``k`` simultaneous storescu processes (one association each)."""
    chunks = split_round_robin(files, k)
    option = STORESCU_TS_OPTION.get(transfer_syntax(files[0]), "-xe")
    commands = [storescu_cmd(port, c, calling=calling, called=called, ts_option=option) for c in chunks]
    return run_senders(commands, files, env=DCMTK_ENV if nodelay else None, timeout=timeout)


def split_round_robin(files: Sequence[Path], k: int) -> list[list[Path]]:
    """``files`` dealt over ``k`` senders (those left without a file dropped)."""
    if k < 1 or not files:
        raise ValueError(f"need k >= 1 and files, got k={k!r}, {len(files)} files")
    return [c for c in (list(files[i::k]) for i in range(k)) if c]


def run_senders(commands: Sequence[Sequence[str]], files: Sequence[Path], *, env: Mapping[str, str] | None,
                timeout: float) -> PushResult:  # fmt: skip
    """Run the sender ``commands`` (which send ``files`` between them) at once, each until it ends or
    ``timeout`` s from the start; their "E:" / "F:" lines (dcmtk's, and bench/python_peers.py's) are the failures."""
    size = sum(p.stat().st_size for p in files)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(list(c), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for c in commands
    ]
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outputs.append(out)
    seconds = time.perf_counter() - t0
    failures = sum(len(re.findall(r"(?i)\b(?:E|F):", o)) for o in outputs)
    return PushResult(seconds, len(files), size, failures, [p.returncode for p in procs], outputs)


# ------------------------------------------------------------------------------------- memory
def rss_bytes(pid: int) -> int:
    """Current resident set size of ``pid`` (VmRSS)."""
    return _status_kb(pid, "VmRSS") * 1024


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` so far (``/proc/PID/stat``'s minflt: a fresh page the kernel zero-fills
    or maps, e.g. for a newly allocated image buffer)."""
    return int(_stat_fields(pid)[7])


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (the name may hold spaces and
    parentheses): state is index 0, ppid 1, minflt 7, utime 11 and stime 12 (in clock ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size of ``pid`` so far (VmHWM)."""
    return _status_kb(pid, "VmHWM") * 1024


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scratch`` (phantoms and work folders) and ``--json`` (machine-readable copy of the report)."""
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")


def emit_report(report: dict[str, Any], json_path: Path | None, render: Callable[[dict[str, Any]], str]) -> int:
    """Write ``report`` to ``json_path`` (if given), print its Markdown rendering; the exit status."""
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    print(render(report))
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (0.0 once it is gone)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` (e.g. the node's result-building processes)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except OSError:
            continue
        if ppid == pid:
            out.append(int(entry.name))
    return out


class CpuMeter:
    """CPU seconds used by named groups of processes between ``start()`` and ``stop()``.

    ``groups`` maps a name to a function returning the group's current PIDs; PIDs are looked up
    again at ``stop()`` (a process that started in between counts from 0, one that ended is lost,
    so use it for long-lived processes: the node, its result processes, Orthanc)."""

    def __init__(self, groups: dict[str, Callable[[], Sequence[int]]]) -> None:
        self.groups = groups
        self._start: dict[int, float] = {}
        self.seconds: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._start = {pid: cpu_seconds(pid) for pids in self.groups.values() for pid in pids()}
        return self

    def stop(self) -> dict[str, float]:
        self.seconds = {
            name: sum(cpu_seconds(pid) - self._start.get(pid, 0.0) for pid in pids())
            for name, pids in self.groups.items()
        }
        return self.seconds


class Sampler:
    """Calls ``fn`` every ``interval`` s in a thread and keeps the maximum (e.g. GPU memory)."""

    def __init__(self, fn: Callable[[], float], interval: float = 0.2) -> None:
        self.fn, self.interval, self.peak = fn, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, float(self.fn()))
            except Exception:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def gpu_memory_used_mb() -> float | None:
    """Used memory of GPU 0 from nvidia-smi (whole device), or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout  # fmt: skip
        return float(out.split()[0])
    except Exception:
        return None
