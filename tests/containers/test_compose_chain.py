"""The compose chain in containers: images built from Debian, `docker-compose up` of the CPU variant
against podman's Docker-compatible socket, CXRs pushed from the host into Orthanc's published DICOM
port, SR + SC back in the same study, the node restarted mid-run without loss, the viewer behind
Orthanc's credentials. Runs the commands of docs/DEPLOY.md.

Needs root, podman, debootstrap, docker-compose and dcmtk (``bash scripts/setup.sh --ci``); skipped on
a machine without them, never in CI (``CI`` set: missing tools fail the test). Images are cached in
podman's store between runs; a cold run builds them (see docs/DEPLOY.md for the times).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from compose_helpers import ComposeProject, PodmanService, http_get_status, wait_until

from dicom_node.testing.local_orthanc import free_port
from tests.dicom_factory import cxr_like_array, make_dataset, write

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("podman", "debootstrap", "docker-compose", "storescu")
# the frontend network of the test's project and its gateway: the address a modality on this host
# reaches Orthanc's published DICOM port from (docs/DEPLOY.md, "Modality on the same host")
FRONTEND_SUBNET = "172.29.212.0/24"
FRONTEND_GATEWAY = "172.29.212.1"
BACKEND_SUBNET = "172.29.213.0/24"
NODE_IP = "172.29.213.10"
MODALITY_AET = "CXRMODALITY"
STABLE_AGE_S = 3
HEALTHY_TIMEOUT_S = 420.0
RESULTS_TIMEOUT_S = 300.0


def _require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (podman import of the seeded base image, rootful networks)")
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must run the container chain, missing: {missing} (bash scripts/setup.sh --ci)")
    if missing:
        pytest.skip(f"container chain needs {missing} (bash scripts/setup.sh --ci)")


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Build (cached) every image of the CPU compose variant with scripts/build_images.sh."""
    _require_tools()
    env = dict(os.environ, CONTAINERS_CONF=str(REPO / "deploy/podman/containers.conf"))
    # CI machines reach no PyTorch CPU index: the wheelhouse takes torch from pip's configured sources
    env.setdefault("TORCH_CPU_INDEX_URL", "")
    subprocess.run(
        ["bash", "scripts/build_images.sh", "--variant", "cpu", "all"],
        cwd=REPO,
        env=env,
        check=True,
        timeout=1800,
    )
    return env


@pytest.fixture(scope="module")
def stack(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeProject]:
    """The CPU stack up (every health check passing) under a unique project name; down -v after."""
    work = tmp_path_factory.mktemp("compose")
    password = secrets.token_urlsafe(18)
    env_file = work / "env"
    ports = {name: free_port() for name in ("http", "dicom", "viewer")}
    env_file.write_text(
        "\n".join(
            [
                "ORTHANC_USER=cxrtest",
                f"ORTHANC_PASSWORD={password}",
                f"CXR_MODALITY_AET={MODALITY_AET}",
                f"CXR_MODALITY_HOST={FRONTEND_GATEWAY}",
                f"CXR_FRONTEND_SUBNET={FRONTEND_SUBNET}",
                f"CXR_BACKEND_SUBNET={BACKEND_SUBNET}",
                f"CXR_NODE_IP={NODE_IP}",
                "ORTHANC_HTTP_BIND=127.0.0.1",
                f"ORTHANC_HTTP_PORT={ports['http']}",
                "ORTHANC_DICOM_BIND=127.0.0.1",
                f"ORTHANC_DICOM_PORT={ports['dicom']}",
                "VIEWER_BIND=127.0.0.1",
                f"VIEWER_PORT={ports['viewer']}",
                f"CXR_ORTHANC_STABLE_AGE={STABLE_AGE_S}",
                "",
            ]
        )
    )
    env_file.chmod(0o600)
    with PodmanService(work / "podman.sock", images) as service:
        project = ComposeProject(
            name=f"cxrtest{uuid.uuid4().hex[:8]}",
            repo=REPO,
            files=("docker-compose.yml", "deploy/compose.cpu.yml"),
            env_file=env_file,
            env=service.env,
            auth=("cxrtest", password),
            ports=ports,
        )
        try:
            project.up(("orthanc", "cxr-node", "viewer"), timeout_s=HEALTHY_TIMEOUT_S)
            yield project
        finally:
            project.dump_logs()
            project.compose("down", "-v", "--timeout", "20", timeout=180, check=False)


def _push(project: ComposeProject, tmp: Path, count: int, seed: int) -> dict[str, str]:
    """Send ``count`` CXR-like studies with storescu into Orthanc's published DICOM port.

    Returns {StudyInstanceUID: SOPInstanceUID} of the CXRs sent.
    """
    study_uids = {}
    files = []
    for index in range(count):
        ds = make_dataset(cxr_like_array(512, 512, seed=seed + index))
        study_uids[str(ds.StudyInstanceUID)] = str(ds.SOPInstanceUID)
        files.append(str(write(ds, tmp / f"cxr-{seed + index}.dcm")))
    subprocess.run(
        [
            "storescu",
            "-to",
            "30",
            "-ta",
            "30",
            "-td",
            "60",
            "-aet",
            MODALITY_AET,
            "-aec",
            "ORTHANC",
            "127.0.0.1",
            str(project.ports["dicom"]),
            *files,
        ],
        check=True,
        timeout=120,
    )
    return study_uids


def _result_modalities(project: ComposeProject, study_uid: str) -> set[str]:
    """Modalities of the series Orthanc holds in the study (DX from the modality, SR + OT from the node)."""
    found = project.orthanc("POST", "/tools/lookup", study_uid.encode())
    if not found:
        raise AssertionError(f"study {study_uid} is not in Orthanc")
    series = project.orthanc("GET", f"/studies/{found[0]['ID']}/series")
    return {s["MainDicomTags"].get("Modality", "") for s in series}


def _node_received_one_of(project: ComposeProject, sop_uids: list[str]) -> bool:
    """Whether the node's log has a "received" event (persisted, acknowledged) of one of the instances."""
    logs = project.compose("logs", "--no-color", "cxr-node", timeout=60).stdout
    return any('"received"' in line and any(uid in line for uid in sop_uids) for line in logs.splitlines())


def _wait_results(project: ComposeProject, study_uids: list[str]) -> None:
    def complete() -> bool:
        return all({"DX", "SR", "OT"} <= _result_modalities(project, uid) for uid in study_uids)

    wait_until(complete, RESULTS_TIMEOUT_S, "SR + SC for every pushed CXR in its own study")


def test_compose_chain_delivers_sr_and_sc_through_a_node_restart(
    stack: ComposeProject, tmp_path: Path
) -> None:
    first = _push(stack, tmp_path, 2, seed=0)
    _wait_results(stack, list(first))

    # restart the node as soon as it has received (persisted, acknowledged) one of the next CXRs,
    # while the others are routed to it or wait in its spool: each still gets its SR + SC
    second = _push(stack, tmp_path, 3, seed=100)
    wait_until(
        lambda: _node_received_one_of(stack, list(second.values())),
        RESULTS_TIMEOUT_S,
        "the node receiving one of the 2nd batch",
        step_s=0.5,
    )
    stack.compose("restart", "cxr-node", timeout=180)
    stack.wait_healthy(("cxr-node",), timeout_s=HEALTHY_TIMEOUT_S)
    every = [*first, *second]
    _wait_results(stack, every)
    for uid in every:
        assert _result_modalities(stack, uid) == {"DX", "SR", "OT"}, uid


def test_viewer_answers_behind_orthancs_credentials(stack: ComposeProject) -> None:
    url = f"http://127.0.0.1:{stack.ports['viewer']}/"
    assert http_get_status(url, None)[0] == 401
    assert http_get_status(url, ("cxrtest", "wrong-password"))[0] == 401
    status, page = http_get_status(url, stack.auth)
    assert status == 200
    assert b"<html" in page.lower()
