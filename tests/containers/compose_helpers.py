"""podman's Docker-compatible API service and a docker-compose project on it, for the container tests."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from dicom_node.testing.local_orthanc import free_port
from tests.dicom_factory import cxr_like_array, make_dataset, write

#: the repository (the compose project directory, the build context)
REPO = Path(__file__).resolve().parents[2]
#: the AE title of the test's modality (the storescu on this host) in every project's .env
MODALITY_AET = "CXRMODALITY"
#: how long a stack may take to pass every health check (model load on 2 shared cores included)
HEALTHY_TIMEOUT_S = 420.0
#: how long the SR + SC of the pushed CXRs may take to arrive in Orthanc
RESULTS_TIMEOUT_S = 300.0


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, step_s: float = 2.0) -> None:
    """Poll ``predicate`` until it returns True; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            last_error = exc
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last_error})")


class PodmanService:
    """``podman system service --time=0 unix://<socket>`` for docker-compose (DOCKER_HOST), stopped on exit."""

    def __init__(self, socket: Path, env: dict[str, str], repo: Path) -> None:
        self.socket = socket
        self.repo = repo
        self.env = dict(env, DOCKER_HOST=f"unix://{socket}")
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PodmanService:
        self._process = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
            env=self.env,
            start_new_session=True,
        )
        wait_until(self.socket.exists, 30, f"podman's API socket {self.socket}", step_s=0.2)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=20)


@dataclass(frozen=True)
class StackNetworks:
    """Fixed subnets of one test project (each project its own, so that stacks never collide).

    ``prefix`` is the first three octets of the frontend subnet ("172.29.212"); the backend subnet is the
    next /24. A sender on this host reaches Orthanc's published DICOM port from the frontend gateway (.1):
    the project's ``CXR_MODALITY_HOST`` (docs/DEPLOY.md, "Modality on the same host").
    """

    prefix: str

    def __post_init__(self) -> None:
        octets = self.prefix.split(".")
        if len(octets) != 3 or not all(o.isdigit() and int(o) < 255 for o in octets):
            raise ValueError(f"prefix must be three octets below 255, got {self.prefix!r}")

    @property
    def _backend_prefix(self) -> str:
        a, b, c = self.prefix.split(".")
        return f"{a}.{b}.{int(c) + 1}"

    @property
    def frontend_subnet(self) -> str:
        return f"{self.prefix}.0/24"

    @property
    def frontend_gateway(self) -> str:
        return f"{self.prefix}.1"

    @property
    def backend_subnet(self) -> str:
        return f"{self._backend_prefix}.0/24"

    @property
    def node_ip(self) -> str:
        return f"{self._backend_prefix}.10"


def write_env_file(path: Path, networks: StackNetworks, ports: Mapping[str, int], password: str,
                   extra: Mapping[str, str] | None = None) -> None:  # fmt: skip
    """The project's .env (mode 0600): credentials, the modality, fixed subnets, free published ports."""
    lines = {
        "ORTHANC_USER": "cxrtest",
        "ORTHANC_PASSWORD": password,
        "CXR_MODALITY_AET": MODALITY_AET,
        "CXR_MODALITY_HOST": networks.frontend_gateway,
        "CXR_FRONTEND_SUBNET": networks.frontend_subnet,
        "CXR_BACKEND_SUBNET": networks.backend_subnet,
        "CXR_NODE_IP": networks.node_ip,
        "ORTHANC_HTTP_BIND": "127.0.0.1",
        "ORTHANC_HTTP_PORT": str(ports["http"]),
        "ORTHANC_DICOM_BIND": "127.0.0.1",
        "ORTHANC_DICOM_PORT": str(ports["dicom"]),
        "VIEWER_BIND": "127.0.0.1",
        "VIEWER_PORT": str(ports["viewer"]),
        "CXR_ORTHANC_STABLE_AGE": "3",
        **(extra or {}),
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()), encoding="utf-8")
    path.chmod(0o600)


@dataclass
class ComposeProject:
    """One docker-compose project (unique name, own .env) driven through podman's socket."""

    name: str
    repo: Path
    files: tuple[str, ...]
    env_file: Path
    env: dict[str, str]
    auth: tuple[str, str]
    ports: dict[str, int] = field(default_factory=dict)

    def _command(self, *args: str) -> list[str]:
        files = [arg for name in self.files for arg in ("-f", name)]
        return ["docker-compose", "-p", self.name, "--env-file", str(self.env_file), *files, *args]

    def compose(self, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``docker-compose -p NAME --env-file ENV -f ... ARGS`` in the repository."""
        result = subprocess.run(
            self._command(*args), cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr[-3000:]}")
        return result

    def container(self, service: str) -> str:
        """The container name docker-compose 1.29 gives the first replica of ``service``."""
        return f"{self.name}_{service}_1"

    def healthy(self, service: str) -> bool:
        """Run the container's health check now (podman runs them only from systemd timers otherwise)."""
        result = subprocess.run(
            ["podman", "healthcheck", "run", self.container(service)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.returncode == 0

    def up(self, services: tuple[str, ...], timeout_s: float) -> None:
        """``up -d --no-build`` while running the health checks of ``services`` (in start order).

        ``depends_on: condition: service_healthy`` makes docker-compose wait for a health status that
        podman only updates when a check runs; and a second ``up`` of the same project fails on podman
        (docker-compose 1.29 reads podman's IPAM option "driver" as a changed network), so it is one ``up``.
        """
        process = subprocess.Popen(
            self._command("up", "-d", "--no-build"),
            cwd=self.repo,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            self.wait_healthy(services, timeout_s)
            output, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)
        if process.returncode != 0:
            raise AssertionError(f"up -d failed ({process.returncode}): {output[-3000:]}")

    def wait_healthy(self, services: tuple[str, ...], timeout_s: float) -> None:
        for service in services:
            wait_until(lambda s=service: self.healthy(s), timeout_s, f"{service}'s health check", step_s=5)

    def orthanc(self, method: str, path: str, body: bytes | None = None) -> object:
        """Orthanc's REST API on its published HTTP port with the project's credentials: the JSON answer."""
        url = f"http://127.0.0.1:{self.ports['http']}{path}"
        status, payload = http_get_status(url, self.auth, method=method, body=body)
        if status != 200:
            raise AssertionError(f"{method} {path}: HTTP {status}")
        return json.loads(payload)

    def dump_logs(self) -> None:
        """Every service's log tail on stderr (pytest shows it when the test failed)."""
        result = self.compose("logs", "--no-color", "--tail", "80", timeout=60, check=False)
        print(result.stdout[-20000:], result.stderr[-2000:], file=sys.stderr)


def new_project(service: PodmanService, work: Path, files: Sequence[str], networks: StackNetworks,
                extra_env: Mapping[str, str] | None = None, ports: Mapping[str, int] | None = None) -> ComposeProject:  # fmt: skip
    """A project with a unique name, a random password and free published ports (or ``ports``), its .env in ``work``."""
    password = secrets.token_urlsafe(18)
    ports = dict(ports or {name: free_port() for name in ("http", "dicom", "viewer")})
    env_file = work / "env"
    write_env_file(env_file, networks, ports, password, extra_env)
    return ComposeProject(
        name=f"cxrtest{uuid.uuid4().hex[:8]}",
        repo=service.repo,
        files=tuple(files),
        env_file=env_file,
        env=service.env,
        auth=("cxrtest", password),
        ports=ports,
    )


def project_leftovers(project: ComposeProject) -> dict[str, list[str]]:
    """Containers, networks and volumes podman still holds for ``project`` (docker-compose's labels)."""
    label = f"label=com.docker.compose.project={project.name}"
    found = {}
    for kind, cmd in (
        ("containers", ["ps", "-a", "--format", "{{.Names}}"]),
        ("networks", ["network", "ls", "--format", "{{.Name}}"]),
        ("volumes", ["volume", "ls", "--format", "{{.Name}}"]),
    ):
        result = subprocess.run(["podman", *cmd, "--filter", label],
                                env=project.env, capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        found[kind] = result.stdout.split()
    return found


def push_cxrs(project: ComposeProject, tmp: Path, count: int, seed: int,
              tls: Sequence[str] = ()) -> dict[str, str]:  # fmt: skip
    """Send ``count`` CXR-like studies with storescu into Orthanc's published DICOM port (``tls``: storescu's
    TLS options, e.g. ``+tls KEY CRT +cf CA``). Returns {StudyInstanceUID: SOPInstanceUID} of the CXRs sent."""
    study_uids = {}
    files = []
    for index in range(count):
        ds = make_dataset(cxr_like_array(512, 512, seed=seed + index))
        study_uids[str(ds.StudyInstanceUID)] = str(ds.SOPInstanceUID)
        files.append(str(write(ds, tmp / f"cxr-{seed + index}.dcm")))
    subprocess.run(
        ["storescu", "-to", "30", "-ta", "30", "-td", "60", *tls, "-aet", MODALITY_AET, "-aec", "ORTHANC",
         "127.0.0.1", str(project.ports["dicom"]), *files],
        check=True,
        timeout=120,
    )  # fmt: skip
    return study_uids


def result_modalities(project: ComposeProject, study_uid: str) -> set[str]:
    """Modalities of the series Orthanc holds in the study (DX from the modality, SR + OT from the node)."""
    found = project.orthanc("POST", "/tools/lookup", study_uid.encode())
    if not found:
        raise AssertionError(f"study {study_uid} is not in Orthanc")
    series = project.orthanc("GET", f"/studies/{found[0]['ID']}/series")
    return {s["MainDicomTags"].get("Modality", "") for s in series}


def wait_results(project: ComposeProject, study_uids: Sequence[str]) -> None:
    """Wait (bounded) until every study holds the CXR, an SR and an SC."""

    def complete() -> bool:
        return all({"DX", "SR", "OT"} <= result_modalities(project, uid) for uid in study_uids)

    wait_until(complete, RESULTS_TIMEOUT_S, "SR + SC for every pushed CXR in its own study")


def http_get_status(
    url: str, auth: tuple[str, str] | None, method: str = "GET", body: bytes | None = None
) -> tuple[int, bytes]:
    """(status, body) of one HTTP request, with basic credentials when ``auth`` is given."""
    request = urllib.request.Request(url, data=body, method=method)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
