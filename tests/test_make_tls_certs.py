"""``scripts/make_tls_certs.sh`` writes what ``deploy/compose.tls.yml`` mounts: the folder layout, names
(Orthanc's certificate names ``orthanc``, the node's its address), extended key usages, keys 0600 owned by
the uids the images run as (read from the Dockerfiles), every certificate issued by the CA. Runs without
containers (``tests/containers/test_compose_tls.py`` uses the same script with the real stack)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_tls_certs.sh"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not on PATH")


def _uid(dockerfile: str) -> int:
    """The --uid the Dockerfile creates its run-time user with."""
    text = (ROOT / dockerfile).read_text(encoding="utf-8")
    found = re.findall(r"useradd [^\n]*--uid (\d+)", text)
    assert len(found) == 1, f"{dockerfile}: expected one useradd --uid, found {found}"
    return int(found[0])


def _x509(cert: Path, *args: str) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", *args], capture_output=True, text=True,
                          timeout=30, check=True).stdout  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls") / "certs"
    subprocess.run(["bash", str(SCRIPT), "--node-ip", "172.29.213.10", "--days", "2", str(folder)],
                   check=True, timeout=120, capture_output=True)  # fmt: skip
    return folder


def test_layout_names_and_usages(certs: Path) -> None:
    for role in ("orthanc", "node", "modality"):
        assert sorted(p.name for p in (certs / role).iterdir()) == sorted(
            ["ca.crt", f"{role}.crt", f"{role}.key"]
        )
        assert (certs / role / "ca.crt").read_bytes() == (certs / "ca.crt").read_bytes()
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / role / f"{role}.crt")],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
    orthanc = _x509(certs / "orthanc/orthanc.crt", "-ext", "subjectAltName,extendedKeyUsage")
    assert (
        "DNS:orthanc" in orthanc and "Server Authentication" in orthanc and "Client Authentication" in orthanc
    )
    node = _x509(certs / "node/node.crt", "-ext", "subjectAltName,extendedKeyUsage")
    assert "IP Address:172.29.213.10" in node and "DNS:cxr-node" in node
    assert "Server Authentication" in node and "Client Authentication" in node
    modality = _x509(certs / "modality/modality.crt", "-ext", "extendedKeyUsage")
    assert "Client Authentication" in modality


def test_keys_private_and_owned_by_the_images_users(certs: Path) -> None:
    for role in ("orthanc", "node", "modality"):
        assert stat.S_IMODE((certs / role / f"{role}.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((certs / role).stat().st_mode) == 0o755  # the containers' users enter the mount
    assert not any(
        p.name == "ca.key" for role in ("orthanc", "node", "modality") for p in (certs / role).iterdir()
    )
    if os.geteuid() != 0:
        pytest.skip("keys are given to the containers' users only when the script runs as root")
    assert (certs / "node/node.key").stat().st_uid == _uid("Dockerfile")
    assert (certs / "orthanc/orthanc.key").stat().st_uid == _uid("deploy/orthanc/Dockerfile")


def test_refuses_a_node_ip_that_is_not_an_address(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT), "--node-ip", "cxr-node", str(tmp_path / "certs")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0
    assert "--node-ip must be an IPv4 address, got 'cxr-node'" in result.stderr
    assert not (tmp_path / "certs").exists()
