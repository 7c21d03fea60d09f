"""Run a local Orthanc with the shipped configuration, and talk to it (REST, dcmtk).

Used by the demo (``scripts/demo.py``) and the integration tests. Everything listens on
127.0.0.1; every wait is bounded. Needs Debian's ``orthanc`` + ``orthanc-python`` packages
and dcmtk (``storescu``, ``echoscu``) on ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from dicom_node.orthanc.config import (
    DEBIAN_DICOMWEB_PLUGIN,
    DICOMWEB_ROOT,
    DicomTls,
    Modality,
    OrthancDeployment,
    write_config,
)

T = TypeVar("T")

#: AE title the demo and the tests use when pushing into Orthanc (declared in Orthanc's DicomModalities).
PUSHER_AET = "CXRTEST"
ORTHANC_AET = "ORTHANC"
NODE_AET = "AINODE"


class WaitTimeout(AssertionError):
    """A bounded wait ran out (an AssertionError so pytest shows it as a test failure)."""


class ProcessExited(RuntimeError):
    """A server process died while we waited for it (:func:`wait_until` re-raises it at once)."""


def wait_until(predicate: Callable[[], T], timeout: float, *, interval: float = 0.25, what: str = "condition") -> T:
    """Call ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ProcessExited:
            raise
        except Exception as exc:  # keep polling; report the last error on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_exc!r})"
                                                                                     if last_exc else ""))  # fmt: skip
        time.sleep(interval)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def echo_ok(port: int, calling: str = PUSHER_AET, called: str = NODE_AET) -> bool:
    """Whether ``called`` at 127.0.0.1:``port`` answers a C-ECHO from ``calling`` (pynetdicom, bounded)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and int(status.Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def orthanc_binary() -> str | None:
    """Path of the Orthanc server binary, or None."""
    return shutil.which("Orthanc") or (str(p) if (p := Path("/usr/sbin/Orthanc")).exists() else None)


def orthanc_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an Orthanc process: ``base`` (default ``os.environ``) plus ``TCP_NODELAY=1``.

    Orthanc's DICOM layer (DCMTK) leaves Nagle's algorithm on unless ``TCP_NODELAY`` is set in
    its environment; each C-STORE response then waits for the peer's delayed ACK. Measured on
    loopback: 49 ms per stored instance with it on, 5 ms with it off (BENCHMARKS.md). A value
    already in ``base`` is kept.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("TCP_NODELAY", "1")
    return env


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------- Orthanc
@dataclass
class LocalOrthanc:
    """A real Orthanc process with the shipped configuration and routing plug-in, plus a small REST client.

    ``start()`` / ``stop()`` may be called repeatedly (storage is kept in ``workdir/db``).
    """

    workdir: Path
    http_port: int
    dicom_port: int
    node_port: int
    user: str = "cxr-test"
    password: str = "cxr-test-password"
    ae_title: str = ORTHANC_AET
    stable_age_s: int = 1
    retry_delay_s: float = 2.0
    auto_forward: bool = True
    #: load Debian's DICOMweb plug-in (``orthanc-dicomweb``), answering under :attr:`dicomweb_url`
    dicomweb: bool = False
    extra_modalities: Sequence[Modality] = ()
    #: added to Orthanc's environment (after ``TCP_NODELAY=1``, which it may override)
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    #: the routing plug-in's backoff cap and alert period (``MaxRetryDelaySeconds``, ``AlertAfterSeconds``)
    max_retry_delay_s: float = 4.0
    alert_after_s: float = 600.0
    #: DICOM TLS on Orthanc's side (its DICOM port then accepts TLS only; the node is called with TLS)
    dicom_tls: DicomTls | None = None
    #: top-level Orthanc settings written over the generated configuration (e.g. ``{"JobsHistorySize": 10}``)
    config_overrides: Mapping[str, object] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Root URL of the DICOMweb services (``dicomweb=True``), without the trailing slash."""
        return self.base_url + DICOMWEB_ROOT.rstrip("/")

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def write_config(self) -> Path:
        dep = OrthancDeployment(
            storage_dir=self.workdir / "db",
            users={self.user: self.password},
            node=Modality("cxr-node", NODE_AET, "127.0.0.1", self.node_port),
            http_port=self.http_port,
            dicom_port=self.dicom_port,
            ae_title=self.ae_title,
            modalities=(Modality("cxr-test", PUSHER_AET, "127.0.0.1", 104), *self.extra_modalities),
            stable_age_s=self.stable_age_s,
            retry_delay_s=self.retry_delay_s,
            auto_forward=self.auto_forward,
            dicomweb_plugin=DEBIAN_DICOMWEB_PLUGIN if self.dicomweb else None,
            verbose=True,
            max_retry_delay_s=self.max_retry_delay_s,
            alert_after_s=self.alert_after_s,
            dicom_tls=self.dicom_tls,
        )
        return write_config(dep, self.config_path, self.config_overrides)

    def start(self, timeout: float = 30.0) -> LocalOrthanc:
        """Start Orthanc (same storage as before, if restarted) and wait until ``/system`` answers."""
        binary = orthanc_binary()
        if binary is None:
            raise FileNotFoundError("the Orthanc binary is not installed (apt-get install orthanc orthanc-python)")
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"Orthanc is already running (pid {self.proc.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        try:
            self.proc = subprocess.Popen([binary, "--verbose", str(self.config_path)], cwd=self.workdir,
                                         env={**orthanc_environment(), **self.env_overrides}, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        finally:
            log.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise ProcessExited(f"Orthanc exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            return self.get("/system").get("DicomAet") == self.ae_title and port_open(self.dicom_port)

        try:
            wait_until(up, timeout, what="Orthanc /system")
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop Orthanc gracefully (SIGTERM, bounded), keeping its storage."""
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40, max_chars: int = 4000) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])[-max_chars:]
        except FileNotFoundError:
            return "(no log)"

    # --- REST --------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.base_url + path, auth=self.auth, timeout=30.0, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        r = self.request("GET", path, **kw)
        r.raise_for_status()
        return r.json()

    def get_bytes(self, path: str, **kw: Any) -> httpx.Response:
        r = self.request("GET", path, **kw)
        r.raise_for_status()
        return r

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        r = self.request("POST", path, content=json.dumps(body) if body is not None else b"", **kw)
        r.raise_for_status()
        return r.json() if r.content else None

    def upload(self, dicom_bytes: bytes) -> dict[str, Any]:
        """Store an instance through REST (``POST /instances``)."""
        r = self.request("POST", "/instances", content=dicom_bytes)
        r.raise_for_status()
        return r.json()

    def instances(self) -> list[str]:
        """Orthanc ids of every instance."""
        return list(self.get("/instances"))

    def study_id(self, study_instance_uid: str) -> str | None:
        """Orthanc id of the study with this Study Instance UID, or None."""
        r = self.request("POST", "/tools/lookup", content=study_instance_uid.encode())
        r.raise_for_status()
        for hit in r.json():
            if hit.get("Type") == "Study":
                return str(hit["ID"])
        return None

    def study_instances(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """``simplified-tags`` of every instance of a study (empty list if the study is unknown)."""
        sid = self.study_id(study_instance_uid)
        if sid is None:
            return []
        out = []
        for inst in self.get(f"/studies/{sid}/instances"):
            tags = self.get(f"/instances/{inst['ID']}/simplified-tags")
            tags["_orthanc_id"] = inst["ID"]
            out.append(tags)
        return out

    def find_sr_in_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Tags of the SR instances of a study."""
        return [t for t in self.study_instances(study_instance_uid) if t.get("Modality") == "SR"]

    def find_by_modality(self, study_instance_uid: str, modality: str) -> list[dict[str, Any]]:
        return [t for t in self.study_instances(study_instance_uid) if t.get("Modality") == modality]

    def file(self, orthanc_id: str) -> bytes:
        return self.get_bytes(f"/instances/{orthanc_id}/file").content

    def router_status(self) -> dict[str, Any]:
        return dict(self.get("/cxr-ai/status"))


# ---------------------------------------------------------------------------------------- dcmtk
#: dcmtk ``storescu`` option that proposes a compressed transfer syntax (plus the uncompressed ones).
_STORESCU_TS_OPTION = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG Extended (12 bit)
    "1.2.840.10008.1.2.4.57": "-xs",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated
}


def _transfer_syntax(path: Path) -> str:
    """The Transfer Syntax UID in a DICOM file's meta header (``""`` if there is none)."""
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:  # not a Part-10 file: let storescu say so
        return ""


def storescu(
    files: Sequence[Path], port: int, *, calling_aet: str = PUSHER_AET, called_aet: str = ORTHANC_AET,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Send ``files`` with dcmtk ``storescu`` to 127.0.0.1:``port`` (result returned, not checked).

    ``storescu`` proposes uncompressed transfer syntaxes unless told otherwise, so files are
    grouped by transfer syntax and each group is sent with the option that proposes theirs (one
    association per group). The returned result is the first failing run, else the last one.
    """
    if not files:
        raise ValueError("storescu needs at least one file")
    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(_STORESCU_TS_OPTION.get(_transfer_syntax(Path(f)), "-x="), []).append(str(f))
    result: subprocess.CompletedProcess[str] | None = None
    for option, group in groups.items():
        cmd = ["storescu", "-R", option, "-aet", calling_aet, "-aec", called_aet, "-to", "10", "-ta", "10",
               "-td", "20", "127.0.0.1", str(port), *group]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            return result
    assert result is not None
    return result


def echoscu(port: int, *, calling_aet: str = PUSHER_AET, called_aet: str = NODE_AET) -> bool:
    """True if a C-ECHO to ``called_aet`` on 127.0.0.1:``port`` succeeds."""
    cmd = ["echoscu", "-aet", calling_aet, "-aec", called_aet, "-to", "5", "-ta", "5", "-td", "5",
           "127.0.0.1", str(port)]  # fmt: skip
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


