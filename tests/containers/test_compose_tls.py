"""DICOM TLS in containers: the CPU stack up with ``deploy/compose.tls.yml`` and certificates made by
``scripts/make_tls_certs.sh`` (the commands of docs/DEPLOY.md, "TLS"). Proves that

* Orthanc's published DICOM port then speaks TLS only: a modality with a certificate of the CA stores
  over TLS (``storescu +tls``), a plain C-ECHO and a plain C-STORE are refused;
* both hops between Orthanc and the node run over TLS with client certificates (the node's SCP is
  TLS-only, it checks that Orthanc's certificate names ``orthanc``): the SR + SC of every pushed CXR come
  back into its study;
* the keys' ownership and modes the script sets (0600, the containers' users 10001 and 10002) are what
  the node (which refuses a key readable by others) and Orthanc need.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from compose_helpers import (
    HEALTHY_TIMEOUT_S,
    MODALITY_AET,
    REPO,
    ComposeProject,
    PodmanService,
    StackNetworks,
    new_project,
    push_cxrs,
    result_modalities,
    wait_results,
)

NETWORKS = StackNetworks("172.29.214")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory, podman_service: PodmanService) -> Path:
    """CA, Orthanc, node and modality certificates (scripts/make_tls_certs.sh, as docs/DEPLOY.md says)."""
    folder = tmp_path_factory.mktemp("tls") / "certs"
    subprocess.run(["bash", "scripts/make_tls_certs.sh", "--node-ip", NETWORKS.node_ip, "--days", "2", str(folder)],
                   cwd=REPO, check=True, timeout=120)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def tls_stack(podman_service: PodmanService, certs: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeProject]:  # fmt: skip
    """The CPU stack with the TLS override, Orthanc and the node healthy; down -v after."""
    project = new_project(podman_service, tmp_path_factory.mktemp("compose-tls"),
                          ("docker-compose.yml", "deploy/compose.cpu.yml", "deploy/compose.tls.yml"), NETWORKS,
                          extra_env={"CXR_TLS_DIR": str(certs)})  # fmt: skip
    try:
        project.up(("orthanc", "cxr-node"), timeout_s=HEALTHY_TIMEOUT_S)
        yield project
    finally:
        project.dump_logs()
        project.compose("down", "-v", "--timeout", "20", timeout=180, check=False)


def _modality_tls(certs: Path) -> tuple[str, ...]:
    folder = certs / "modality"
    return ("+tls", str(folder / "modality.key"), str(folder / "modality.crt"), "+cf", str(folder / "ca.crt"))


def _json_event(line: str) -> dict[str, object]:
    """The node's JSON log record of a ``docker-compose logs`` line ("<container> | {...}"); {} for others."""
    _, _, text = line.partition("|")
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _dcmtk(tool: str, project: ComposeProject, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-to", "10", "-ta", "10", "-td", "10", *args, "-aet", MODALITY_AET, "-aec", "ORTHANC",
         "127.0.0.1", str(project.ports["dicom"])],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def test_sr_and_sc_come_back_over_tls(tls_stack: ComposeProject, certs: Path, tmp_path: Path) -> None:
    """A TLS modality's CXRs get their SR + SC: Orthanc called the TLS-only node and the node delivered back
    over TLS to the host name its certificate names; both ends log that TLS is on."""
    sent = push_cxrs(tls_stack, tmp_path, 2, seed=300, tls=_modality_tls(certs))
    wait_results(tls_stack, list(sent))
    for uid in sent:
        assert result_modalities(tls_stack, uid) == {"DX", "SR", "OT"}, uid
    # both ends say they run TLS: Orthanc's entry point, and the node's "ready" event (SCP and SCU)
    logs = tls_stack.compose("logs", "--no-color", "orthanc", "cxr-node", timeout=60).stdout
    assert "DICOM TLS on" in logs
    ready = [event for event in map(_json_event, logs.splitlines()) if event.get("event") == "ready"]
    assert ready and ready[-1]["tls_scp"] is True and ready[-1]["tls_scu"] is True, ready


def test_orthanc_refuses_plain_dicom(tls_stack: ComposeProject, certs: Path, tmp_path: Path) -> None:
    """With the TLS override Orthanc's published DICOM port answers TLS (with a CA certificate) and nothing else."""
    assert _dcmtk("echoscu", tls_stack, *_modality_tls(certs)).returncode == 0, "TLS C-ECHO must work"
    plain = _dcmtk("echoscu", tls_stack)
    assert plain.returncode != 0, f"Orthanc answered a plain C-ECHO: {plain.stdout}{plain.stderr}"
    with pytest.raises(subprocess.CalledProcessError):
        push_cxrs(tls_stack, tmp_path, 1, seed=400)
