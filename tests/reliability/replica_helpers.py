"""Helpers of the scale-out tests and ``bench/scale_replicas.py``: N ``cxr-node serve`` replicas (each its own
spool, DICOM and HTTP port) behind a real HAProxy rendered by :mod:`dicom_node.haproxy_config`, a replica
that never becomes ready, HAProxy's per-server statistics, and a sender that re-sends what it has no
C-STORE success for (as Orthanc's routing plug-in does)."""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from reliability_helpers import SendLog, send_files

from dicom_node.haproxy_config import Balancer, Replica, render_config, render_down_state
from dicom_node.testing.local_orthanc import (
    LocalOrthanc,
    ProcessExited,
    free_port,
    port_open,
    terminate,
    wait_until,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
from integration_helpers import NodeProcess  # noqa: E402


def haproxy_binary() -> str | None:
    """Path of Debian's ``haproxy`` (``/usr/sbin`` is not on every PATH), or None."""
    return shutil.which("haproxy") or (str(p) if (p := Path("/usr/sbin/haproxy")).exists() else None)


def http_status(port: int, path: str = "/readyz") -> int | None:
    """Status code of ``GET http://127.0.0.1:port/path`` (None: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:  # noqa: S310 (loopback)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def replica(workdir: Path, orthanc: LocalOrthanc, name: str, *, command: Sequence[str] | None = None,
            destination_port: int | None = None, **env: str) -> NodeProcess:  # fmt: skip
    """``cxr-node serve`` (not started) with its own spool, DICOM port and ``/readyz`` port, delivering to
    ``orthanc`` (at ``destination_port`` instead of Orthanc's DICOM port: a :class:`TcpRelay` to it); ready
    (for :meth:`NodeProcess.start`) when ``/readyz`` answers 200."""
    http_port = free_port()
    to_port = orthanc.dicom_port if destination_port is None else destination_port
    node = NodeProcess(workdir=workdir / name, port=free_port(), orthanc_dicom_port=to_port,
                       env_overrides={"CXR_NODE_HTTP_PORT": str(http_port), **env}, command=command)  # fmt: skip
    node.ready_check = lambda: http_status(http_port) == 200
    return node


class TcpRelay:
    """A TCP relay from ``127.0.0.1:port`` to ``127.0.0.1:target``, listening only once :meth:`open` is called:
    until then a connection to ``port`` is refused, as to a PACS that is down. Each relayed connection is
    two pump threads that end with either side's close; :meth:`close` closes everything."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="relay-accept", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        if self._listener is not None:
            try:  # wakes the accept() of the other thread (a close() alone leaves it blocked, listening)
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        for sock in sockets:  # shutdown() wakes the pump blocked in recv() on it, as above
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:  # ends when close() closes the listener
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), name="relay-pump", daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):  # ends at EOF or when either socket is closed
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def stalled_replica(workdir: Path, orthanc: LocalOrthanc, name: str) -> NodeProcess:
    """A replica whose model load never ends (``stalled_node.py``): ``/readyz`` 503 forever, no SCP of its own.
    :meth:`NodeProcess.start` returns once ``/readyz`` says 503 and something listens on its DICOM port
    (the test puts a decoy there: an SCP that would acknowledge and drop whatever reached it)."""
    node = replica(workdir, orthanc, name, command=[sys.executable, str(HERE / "stalled_node.py")])
    port = http_port_of(node)
    node.ready_check = lambda: http_status(port) == 503
    return node


def http_port_of(node: NodeProcess) -> int:
    return int(node.env_overrides["CXR_NODE_HTTP_PORT"])


def start_all(nodes: Sequence[NodeProcess], timeout: float = 300.0) -> None:
    """Start the nodes in parallel (each waits until its ready check passes)."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        for fut in [pool.submit(n.start, timeout) for n in nodes]:
            fut.result()


@dataclass
class HaproxyProcess:
    """Debian's HAProxy in the foreground with the project's rendered configuration (loopback)."""

    workdir: Path
    replicas: Sequence[Replica]
    port: int = field(default_factory=free_port)
    check_interval_ms: int = 500
    proc: subprocess.Popen[bytes] | None = None

    @property
    def stats_socket(self) -> Path:
        """The runtime API socket (a Unix socket path must stay under 108 bytes: deep work folders use /tmp)."""
        path = self.workdir / "admin.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(self.workdir).encode()).hexdigest()[:16]
        return Path("/tmp") / f"cxr-haproxy-{digest}.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "haproxy.log"

    def balancer(self) -> Balancer:
        return Balancer(bind=f"127.0.0.1:{self.port}", replicas=tuple(self.replicas),
                        state_file=self.workdir / "cxr-nodes-down.state", stats_socket=self.stats_socket,
                        log_target="stdout", check_interval_ms=self.check_interval_ms)  # fmt: skip

    def start(self, timeout: float = 15.0) -> HaproxyProcess:
        binary = haproxy_binary()
        if binary is None:
            raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        b = self.balancer()
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(render_config(b), encoding="utf-8")
        b.state_file.write_text(render_down_state(b), encoding="utf-8")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        finally:
            log.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise ProcessExited(f"haproxy exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            return port_open(self.port) and self.stats_socket.exists()

        wait_until(up, timeout, what="haproxy to listen")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout=10)
            self.proc = None
        self.stats_socket.unlink(missing_ok=True)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def command(self, line: str) -> str:
        """One command on HAProxy's stats socket (runtime API); its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the replicas' backend: ``{server name: {column: value}}`` (``status``, ``stot``...)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r for r in rows if r["pxname"] == "cxr_nodes" and r["svname"] != "BACKEND"}

    def status(self, name: str) -> str:
        return self.server_stats()[name]["status"]

    def wait_status(self, names: Sequence[str], status: str, timeout: float) -> None:
        wait_until(lambda: all(self.status(n) == status for n in names), timeout, interval=0.2,
                   what=f"haproxy to see {list(names)} {status}")  # fmt: skip


def as_replica(node: NodeProcess, name: str) -> Replica:
    return Replica(name, "127.0.0.1", node.port, http_port_of(node))


# ------------------------------------------------------------------------------------ sender
@dataclass
class RetryingSendLog:
    """What a sender that re-sends unacknowledged instances saw (like Orthanc's routing plug-in)."""

    acknowledged: set[str] = field(default_factory=set)
    associations: int = 0
    failed_associations: int = 0  # rejected, aborted or broken before every instance had a response
    resent: int = 0  # instances sent again after an association without their success
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, log: SendLog, uids: Sequence[str]) -> list[str]:
        """Count one association's outcome (thread-safe); return the UIDs still unacknowledged."""
        missing = [u for u in uids if u not in log.acknowledged]
        with self._lock:
            self.associations += 1
            self.acknowledged |= log.acknowledged
            self.failed_associations += bool(missing)
            self.resent += len(missing)
        return missing


def send_until_acknowledged(port: int, files: Sequence[Path], uids: Sequence[str], *, per_association: int,
                            deadline: float, log: RetryingSendLog, pause_s: float = 0.5) -> None:  # fmt: skip
    """Send ``files`` in associations of ``per_association`` instances; re-send every instance without a
    C-STORE success in a new association until all are acknowledged or ``deadline`` (monotonic) passes."""
    by_uid = dict(zip(uids, files, strict=True))
    todo = list(uids)
    while todo:
        batch, todo = todo[:per_association], todo[per_association:]
        missing = log.record(send_files(port, [by_uid[u] for u in batch], uids=batch, timeout=30), batch)
        if missing:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(missing) + len(todo)} instances never acknowledged before the deadline")
            todo = missing + todo
            time.sleep(pause_s)


# ------------------------------------------------------------------------------------ checks
def metric(port: int, name: str) -> float | None:
    """The value of an unlabelled sample of the node's ``/metrics`` (None: no answer or no such sample)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310 (loopback)
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@dataclass(frozen=True)
class OrthancResults:
    """Per source study: how many SR and non-SR (SC) results Orthanc holds, and all its SOP Instance UIDs."""

    per_source: dict[str, collections.Counter[str]]
    extra_studies: set[str]
    sop_uids: list[str]

    @property
    def missing(self) -> list[str]:
        """Sources without at least one SR and one SC."""
        return [u for u, c in self.per_source.items() if c["SR"] < 1 or sum(c.values()) - c["SR"] < 1]

    @property
    def duplicated(self) -> list[str]:
        """Sources with more than one SR or more than one SC."""
        return [u for u, c in self.per_source.items() if c["SR"] > 1 or sum(c.values()) - c["SR"] > 1]


def orthanc_results(orthanc: LocalOrthanc, study_of: dict[str, str]) -> OrthancResults:
    """What Orthanc holds, on its own terms (``study_of``: source SOP Instance UID -> its StudyInstanceUID;
    every source must be its own study)."""
    studies = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in orthanc.get("/studies", params={"expand": ""})}
    by_study: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for series in orthanc.get("/series", params={"expand": ""}):
        modality = series["MainDicomTags"].get("Modality", "")
        by_study[studies[series["ParentStudy"]]][modality] += len(series["Instances"])
    sop_uids = [i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances", params={"expand": ""})]
    per_source = {u: by_study.get(s, collections.Counter()) for u, s in study_of.items()}
    return OrthancResults(per_source, set(by_study) - set(study_of.values()), sop_uids)


def study_uids(files: Sequence[Path]) -> dict[str, str]:
    """``{SOP Instance UID: StudyInstanceUID}`` of ``files``."""
    import pydicom

    out = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = str(ds.StudyInstanceUID)
    return out
