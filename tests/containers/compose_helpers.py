"""podman's Docker-compatible API service and a docker-compose project on it, for the container tests."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


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

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
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
