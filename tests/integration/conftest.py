"""Fixtures of the integration tests: a real Orthanc, the node as a subprocess, phantoms, a fake node.

Tests that use these fixtures are marked ``integration``. They skip (not fail) only when the
Orthanc binary or the dcmtk tools are absent; CI installs them (``.ci/run``), so there they run.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration_helpers import NodeProcess, Ports, Stack, StoreSCP

from dicom_node.testing.local_orthanc import LocalOrthanc, free_port, orthanc_binary

# tests/ holds helpers shared with the unit tests (e.g. sr_ohif_view); it is on sys.path when the
# whole suite runs, not when only tests/integration/ is collected
_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.append(_TESTS)


def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


@pytest.fixture(scope="session")
def binaries() -> None:
    """Skip when Orthanc or dcmtk is not installed (``apt-get install orthanc orthanc-python dcmtk``)."""
    if orthanc_binary() is None:
        pytest.skip("the Orthanc binary is not installed")
    missing = [b for b in ("storescu", "storescp", "echoscu") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"dcmtk tools not installed: {missing}")
    if not Path("/usr/share/orthanc/plugins/libOrthancPython.so").exists():
        pytest.skip("the Orthanc Python plug-in (orthanc-python) is not installed")


@pytest.fixture
def ports() -> Ports:
    http, dicom, node = _distinct_free_ports(3)
    return Ports(http=http, dicom=dicom, node=node)


@pytest.fixture
def orthanc_factory(binaries: None, tmp_path: Path, ports: Ports) -> Iterator[Callable[..., LocalOrthanc]]:
    """Build (not start) a :class:`LocalOrthanc` on this test's ports; all are stopped at teardown."""
    made: list[LocalOrthanc] = []

    def make(**kw: object) -> LocalOrthanc:
        o = LocalOrthanc(workdir=tmp_path / f"orthanc{len(made)}", http_port=ports.http, dicom_port=ports.dicom,
                         node_port=ports.node, **kw)  # type: ignore[arg-type]  # fmt: skip
        made.append(o)
        return o

    yield make
    for o in made:
        o.stop()


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., LocalOrthanc]) -> LocalOrthanc:
    """A running Orthanc (StableAge 1 s, auto-forward to ``cxr-node`` on ``ports.node``)."""
    return orthanc_factory().start()


@pytest.fixture
def fake_node(binaries: None, tmp_path: Path, ports: Ports) -> Iterator[StoreSCP]:
    """dcmtk ``storescp`` as AE ``AINODE`` on the node's port: records what Orthanc forwards."""
    scp = StoreSCP(port=ports.node, outdir=tmp_path / "fake-node" / "in").start()
    yield scp
    scp.stop()


@pytest.fixture
def node_factory(tmp_path: Path, ports: Ports) -> Iterator[Callable[..., NodeProcess]]:
    """Build (not start) the node (``cxr-node serve`` subprocess) delivering to the test's Orthanc."""
    made: list[NodeProcess] = []

    def make(**env_overrides: str) -> NodeProcess:
        n = NodeProcess(workdir=tmp_path / "node", port=ports.node, orthanc_dicom_port=ports.dicom,
                        env_overrides=env_overrides)  # fmt: skip
        made.append(n)
        return n

    yield make
    for n in made:
        n.kill()


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small RSNA-style CXR phantoms from ``models.phantoms.synth`` (session-scoped)."""
    from models.phantoms.synth import write_rsna_dataset

    out = tmp_path_factory.mktemp("phantoms")
    write_rsna_dataset(out, n=3, seed=7, size=256)
    files = sorted((out / "stage_2_train_images").glob("*.dcm"))
    assert files, f"models.phantoms.synth wrote no DICOM files under {out}"
    return files


@pytest.fixture(scope="module")
def stack(binaries: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Orthanc (auto-forward) + ``cxr-node serve`` delivering back to it, started once per module."""
    http, dicom, node_port = _distinct_free_ports(3)
    ports = Ports(http=http, dicom=dicom, node=node_port)
    work = tmp_path_factory.mktemp("stack")
    orthanc = LocalOrthanc(workdir=work / "orthanc", http_port=http, dicom_port=dicom, node_port=node_port)
    node = NodeProcess(workdir=work / "node", port=node_port, orthanc_dicom_port=dicom)
    try:
        orthanc.start()
        node.start()
        yield Stack(orthanc=orthanc, node=node, ports=ports)
    finally:
        node.kill()
        orthanc.stop()
