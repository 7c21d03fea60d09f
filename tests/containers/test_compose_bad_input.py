"""Bad input in containers, each proven as cheaply as the point allows (cached images, no full stack where a
single ``podman run`` of the same image with the compose file's volume and environment shows it):

* a missing or empty Orthanc password: ``docker-compose up`` refuses before it creates anything, and the
  Orthanc image itself (run without compose) refuses to start with a clear line;
* a published port already taken on the host: ``up`` fails naming the port, and ``down -v`` leaves nothing
  of the project behind (docs/DEPLOY.md, "Bad input");
* the model bundle folder mounted empty: the node exits at start with a log line naming the folder, its
  health check fails, the spool volume keeps what was received before, and a node started on the same
  volume with its bundles back delivers it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from compose_helpers import (
    HEALTHY_TIMEOUT_S,
    REPO,
    PodmanService,
    StackNetworks,
    new_project,
    project_leftovers,
    wait_until,
)

from dicom_node.testing.local_orthanc import free_port
from tests.dicom_factory import cxr_like_array, make_dataset, write

sys.path.insert(0, str(REPO / "tests"))
from service_helpers import StoreSCP  # noqa: E402

FILES = ("docker-compose.yml", "deploy/compose.cpu.yml")
NETWORKS = StackNetworks("172.29.216")
ORTHANC_IMAGE = "cxr-ai-orthanc:0.1.0"
NODE_IMAGE = "cxr-ai-node:0.1.0-cpu"
#: the node's readiness probe as docker-compose.yml runs it
NODE_HEALTH_CMD = "python -m dicom_node.health_http --probe /readyz"
NOTHING = {"containers": [], "networks": [], "volumes": []}


def _podman(
    env: dict[str, str], *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=check
    )


# ----------------------------------------------------------------------------------------- password
@pytest.mark.parametrize("password_line", ["ORTHANC_PASSWORD=", None], ids=["empty", "missing"])
def test_compose_refuses_to_start_without_a_password(
    podman_service: PodmanService, tmp_path: Path, password_line: str | None
) -> None:
    """``${ORTHANC_PASSWORD:?...}``: up fails with the hint of docker-compose.yml and creates nothing."""
    project = new_project(podman_service, tmp_path, FILES, NETWORKS)
    lines = [
        line for line in project.env_file.read_text().splitlines() if not line.startswith("ORTHANC_PASSWORD=")
    ]
    project.env_file.write_text("\n".join([*lines, *([password_line] if password_line else [])]) + "\n")
    result = project.compose("up", "-d", "--no-build", timeout=120, check=False)
    assert result.returncode != 0
    assert "set ORTHANC_PASSWORD in .env (there is no default password)" in result.stderr, result.stderr
    assert project_leftovers(project) == NOTHING


@pytest.mark.parametrize("password", ["", "   "], ids=["empty", "blank"])
def test_orthanc_image_refuses_an_empty_password(images: dict[str, str], password: str) -> None:
    """Without compose (docker run, another orchestrator) the image's entry point refuses at once, exit 2."""
    result = _podman(images, "run", "--rm", "--read-only", "--tmpfs", "/tmp",
                     "-e", "ORTHANC_USER=cxrtest", "-e", f"ORTHANC_PASSWORD={password}",
                     "-e", "CXR_NODE_HOST=192.0.2.10", "-e", "CXR_MODALITY_HOST=192.0.2.20",
                     ORTHANC_IMAGE, check=False)  # fmt: skip
    assert result.returncode == 2, result
    assert "cxr-orthanc: refusing to start: ORTHANC_PASSWORD is empty or not set" in result.stderr


# ------------------------------------------------------------------------------------- port taken
def test_up_fails_when_the_dicom_port_is_taken(podman_service: PodmanService, tmp_path: Path) -> None:
    """Another program listens on the host's DICOM port: up fails naming the port (Orthanc is created, not
    started; the node, which publishes nothing, may be running); ``down -v`` removes every container, network
    and volume the failed up created."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"http": free_port(), "dicom": port, "viewer": free_port()}
        project = new_project(podman_service, tmp_path, FILES, NETWORKS, ports=ports)
        try:
            result = project.compose("up", "-d", "--no-build", timeout=300, check=False)
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            assert "address already in use" in output and str(port) in output, output
            state = _podman(
                project.env, "inspect", "--format", "{{.State.Running}}", project.container("orthanc")
            )
            assert state.stdout.strip() == "false"
            # what up created before it failed (networks, volumes, containers) stays until down
            left = project_leftovers(project)
            assert project.container("orthanc") in left["containers"], left
        finally:
            project.compose("down", "-v", "--timeout", "20", timeout=180, check=False)
        assert project_leftovers(project) == NOTHING


# ----------------------------------------------------------------------------------- empty bundles
class NodeContainer:
    """The CPU node image on the host's network (SCP and health endpoint on loopback ports), the compose
    file's hardening, spool volume and health check; ``bundles`` mounted over /app/monai_bundles when given."""

    def __init__(
        self, env: dict[str, str], volume: str, destination: str, bundles: Path | None = None
    ) -> None:
        self.env = env
        self.name = f"cxrtest-node-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        args = ["run", "-d", "--name", self.name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--health-cmd", NODE_HEALTH_CMD,
                "-v", f"{volume}:/var/lib/cxr-node"]  # fmt: skip
        if bundles is not None:
            args += ["-v", f"{bundles}:/app/monai_bundles:ro"]
        settings = {"CXR_NODE_BIND": "127.0.0.1", "CXR_NODE_PORT": str(self.port),
                    "CXR_NODE_HTTP_PORT": str(free_port()), "CXR_NODE_ALLOWED_PEERS": "STORESCU@127.0.0.1",
                    "CXR_NODE_DESTINATIONS": destination, "CXR_NODE_DEVICE": "cpu",
                    "CXR_NODE_RETRY_BASE_S": "1", "CXR_NODE_RETRY_MAX_S": "2"}  # fmt: skip
        for key, value in settings.items():
            args += ["-e", f"{key}={value}"]
        _podman(env, *args, NODE_IMAGE)

    def logs(self) -> str:
        result = _podman(self.env, "logs", self.name, check=False)
        return result.stdout + result.stderr

    def events(self, event: str) -> list[dict[str, object]]:
        found = []
        for line in self.logs().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found

    def healthy(self) -> bool:
        return _podman(self.env, "healthcheck", "run", self.name, check=False).returncode == 0

    def remove(self) -> None:
        _podman(self.env, "rm", "-f", "-t", "30", self.name, timeout=120, check=False)


def _spool_files(env: dict[str, str], volume: str) -> dict[str, int]:
    """{relative path: size} of the received instances and results in the volume (journal excluded: SQLite
    rewrites its files on open)."""
    mountpoint = Path(_podman(env, "volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
    return {str(p.relative_to(mountpoint)): p.stat().st_size for p in mountpoint.rglob("*")
            if p.is_file() and "journal" not in p.name}  # fmt: skip


@pytest.fixture
def spool_volume(images: dict[str, str]) -> Iterator[str]:
    name = f"cxrtest-spool-{uuid.uuid4().hex[:8]}"
    _podman(images, "volume", "create", name)
    try:
        yield name
    finally:
        _podman(images, "volume", "rm", "-f", name, check=False)


def test_empty_bundle_folder_fails_health_and_loses_nothing(
    images: dict[str, str], spool_volume: str, tmp_path: Path
) -> None:
    destination = StoreSCP(tmp_path)  # not started yet: the node's results wait in its spool
    cxr = make_dataset(cxr_like_array(512, 512, seed=500))
    cxr_file = write(cxr, tmp_path / "cxr.dcm")

    # 1. a healthy node receives and analyses a CXR; its results stay in the spool (destination down)
    first = NodeContainer(images, spool_volume, destination.destination)
    try:
        wait_until(first.healthy, HEALTHY_TIMEOUT_S, "the node's health check", step_s=3)
        subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1", str(first.port), str(cxr_file)],
                       check=True, timeout=60)  # fmt: skip
        wait_until(lambda: any(e.get("sop_instance_uid") == cxr.SOPInstanceUID for e in first.events("analysed")),
                   120, "the CXR analysed")  # fmt: skip
        wait_until(lambda: bool(first.events("delivery_failed")), 60, "a failed delivery (destination down)")
    finally:
        first.remove()
    before = _spool_files(images, spool_volume)
    assert before, "the spool volume holds the undelivered results"

    # 2. the bundle folder mounted empty: the node exits, naming the folder; the health check fails
    empty = tmp_path / "bundles-empty"
    empty.mkdir(mode=0o755)
    broken = NodeContainer(images, spool_volume, destination.destination, bundles=empty)
    try:
        exit_code = _podman(images, "wait", broken.name, timeout=HEALTHY_TIMEOUT_S).stdout.strip()
        assert exit_code == "1", broken.logs()
        assert "bundle folder missing: /app/monai_bundles/cxr_classification" in broken.logs()
        assert not broken.healthy()
    finally:
        broken.remove()
    assert _spool_files(images, spool_volume) == before, "the failed start changed the spool"

    # 3. the bundles back (the image's own): the node resumes from the same volume and delivers SR + SC
    destination.start()
    third = NodeContainer(images, spool_volume, destination.destination)
    try:
        wait_until(
            lambda: len(list(destination.out.iterdir())) >= 2, HEALTHY_TIMEOUT_S, "SR + SC at the destination"
        )
        assert third.events("resume"), "the restarted node resumed nothing"
    finally:
        third.remove()
        destination.stop()
    delivered = [pydicom.dcmread(f) for f in destination.out.iterdir()]
    assert {ds.Modality for ds in delivered} == {"SR", "OT"}
    assert {ds.StudyInstanceUID for ds in delivered} == {cxr.StudyInstanceUID}
