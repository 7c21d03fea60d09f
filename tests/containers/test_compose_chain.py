"""The compose chain in containers: images built from Debian, `docker-compose up` of the CPU variant
against podman's Docker-compatible socket, CXRs pushed from the host into Orthanc's published DICOM
port, SR + SC back in the same study, the node restarted mid-run without loss, the viewer behind
Orthanc's credentials. Runs the commands of docs/DEPLOY.md.

Images are cached in podman's store between runs; a cold run builds them (conftest.py; see
docs/DEPLOY.md for the times).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from compose_helpers import (
    HEALTHY_TIMEOUT_S,
    RESULTS_TIMEOUT_S,
    ComposeProject,
    PodmanService,
    StackNetworks,
    http_get_status,
    new_project,
    push_cxrs,
    result_modalities,
    wait_results,
    wait_until,
)

# the frontend network of the test's project (its gateway is the modality's address) and the backend
NETWORKS = StackNetworks("172.29.212")


@pytest.fixture(scope="module")
def stack(
    podman_service: PodmanService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeProject]:
    """The CPU stack up (every health check passing) under a unique project name; down -v after."""
    project = new_project(podman_service, tmp_path_factory.mktemp("compose"),
                          ("docker-compose.yml", "deploy/compose.cpu.yml"), NETWORKS)  # fmt: skip
    try:
        project.up(("orthanc", "cxr-node", "viewer"), timeout_s=HEALTHY_TIMEOUT_S)
        yield project
    finally:
        project.dump_logs()
        project.compose("down", "-v", "--timeout", "20", timeout=180, check=False)


def _node_received_one_of(project: ComposeProject, sop_uids: list[str]) -> bool:
    """Whether the node's log has a "received" event (persisted, acknowledged) of one of the instances."""
    logs = project.compose("logs", "--no-color", "cxr-node", timeout=60).stdout
    return any('"received"' in line and any(uid in line for uid in sop_uids) for line in logs.splitlines())


def test_compose_chain_delivers_sr_and_sc_through_a_node_restart(
    stack: ComposeProject, tmp_path: Path
) -> None:
    first = push_cxrs(stack, tmp_path, 2, seed=0)
    wait_results(stack, list(first))

    # restart the node as soon as it has received (persisted, acknowledged) one of the next CXRs,
    # while the others are routed to it or wait in its spool: each still gets its SR + SC
    second = push_cxrs(stack, tmp_path, 3, seed=100)
    wait_until(
        lambda: _node_received_one_of(stack, list(second.values())),
        RESULTS_TIMEOUT_S,
        "the node receiving one of the 2nd batch",
        step_s=0.5,
    )
    stack.compose("restart", "cxr-node", timeout=180)
    stack.wait_healthy(("cxr-node",), timeout_s=HEALTHY_TIMEOUT_S)
    every = [*first, *second]
    wait_results(stack, every)
    for uid in every:
        assert result_modalities(stack, uid) == {"DX", "SR", "OT"}, uid


def test_viewer_answers_behind_orthancs_credentials(stack: ComposeProject) -> None:
    url = f"http://127.0.0.1:{stack.ports['viewer']}/"
    assert http_get_status(url, None)[0] == 401
    assert http_get_status(url, ("cxrtest", "wrong-password"))[0] == 401
    status, page = http_get_status(url, stack.auth)
    assert status == 200
    assert b"<html" in page.lower()
