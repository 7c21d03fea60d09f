"""Fixtures and helpers of the fault suite (``tests/reliability``): real Orthanc, the node as a
subprocess (``cxr-node serve`` via ``NodeProcess``; every scenario runs the real node), a pynetdicom
SCU that records the status of every instance, the scale knob, and ``report()`` (the counted figures
``scripts/reliability_report.py`` renders into RELIABILITY.md).

Tests import the helpers from here (``from reliability_helpers import ...``); ``conftest.py`` only re-exports
the fixtures. A module named ``conftest`` would be shadowed by ``tests/integration/conftest.py`` depending
on collection order.

``CXR_RELIABILITY_SCALE`` (default 0.25, the CI scale) multiplies the counts and durations of the
full scenarios (``scale = 1``): 200 instances for the crash, a 60 s PACS outage, 50 concurrent
associations. The bad-input scenario always sends at least 1,000 datasets.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO / "tests" / "integration", REPO / "bench", REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from integration_helpers import NodeProcess  # noqa: E402

from dicom_node.testing.local_orthanc import (  # noqa: E402,F401  (echo_ok: imported from here by the scenarios)
    PUSHER_AET,
    LocalOrthanc,
    echo_ok,
    free_port,
    orthanc_binary,
    wait_until,
)
from dicom_node.transport.reactor_checkpoint import install_checkpoint, pause_reactor  # noqa: E402

SCALE = float(os.environ.get("CXR_RELIABILITY_SCALE", "0.25"))
if not SCALE > 0:
    raise ValueError(f"CXR_RELIABILITY_SCALE must be > 0, got {SCALE!r}")


def scaled(full: float, minimum: float) -> int:
    """``full`` (the count at scale 1) times ``SCALE``, at least ``minimum``."""
    return int(max(minimum, round(full * SCALE)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test of this folder is an integration test."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


# ------------------------------------------------------------------------------------ binaries
@pytest.fixture(scope="session")
def dcmtk() -> None:
    missing = [b for b in ("storescu", "echoscu") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"dcmtk tools not installed: {missing}")


@pytest.fixture(scope="session")
def orthanc_bin(dcmtk: None) -> None:
    if orthanc_binary() is None:
        pytest.skip("the Orthanc binary is not installed")
    if not Path("/usr/share/orthanc/plugins/libOrthancPython.so").exists():
        pytest.skip("the Orthanc Python plug-in (orthanc-python) is not installed")


@pytest.fixture
def orthanc(orthanc_bin: None, tmp_path: Path) -> Iterator[LocalOrthanc]:
    """A running Orthanc that only receives results (auto-forward off)."""
    o = LocalOrthanc(workdir=tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port(),
                     node_port=free_port(), auto_forward=False)  # fmt: skip
    o.start()
    yield o
    o.stop()


def make_node(tmp_path: Path, orthanc: LocalOrthanc, **env: str) -> NodeProcess:
    """``cxr-node serve`` (not started) delivering to ``orthanc``; ``env``: extra ``CXR_NODE_*``."""
    return NodeProcess(workdir=tmp_path / "node", port=free_port(), orthanc_dicom_port=orthanc.dicom_port,
                       env_overrides={"CXR_NODE_DECODE_WORKERS": "2", "CXR_NODE_HTTP_PORT": "0", **env})  # fmt: skip


def receiving_node(workdir: Path, **env: str) -> NodeProcess:
    """``cxr-node serve`` (not started) for the receive scenarios: results would go to a closed port,
    and skipped instances keep their spool files, so every acknowledged instance stays checkable."""
    return NodeProcess(workdir=workdir, port=free_port(), orthanc_dicom_port=free_port(),
                       env_overrides={"CXR_NODE_HTTP_PORT": "0", "CXR_NODE_KEEP_SKIPPED": "true", **env})  # fmt: skip


# ------------------------------------------------------------------------------------ phantoms
@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("phantoms")


def phantoms(folder: Path, n: int, *, seed: int, size: int = 256, start: int = 0) -> list[Path]:
    """``n`` RSNA-style phantoms (JPEG baseline SC) of ``size``² pixels."""
    from models.phantoms.synth import write_rsna_dataset

    out = folder / f"rsna-{size}-{seed}-{start}-{n}"
    write_rsna_dataset(out, n=n, seed=seed, size=size, start_index=start)
    files = sorted((out / "stage_2_train_images").glob("*.dcm"))
    assert len(files) == n, f"expected {n} phantoms in {out}, got {len(files)}"
    return files


# ------------------------------------------------------------------------------------ SCU
@dataclass
class SendLog:
    """Per-instance C-STORE outcomes seen by the SCU."""

    statuses: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> status
    no_response: list[str] = field(default_factory=list)  # sent, no response (abort/timeout)
    not_sent: list[str] = field(default_factory=list)  # association gone before sending
    rejected_associations: int = 0
    aborted_associations: int = 0

    @property
    def acknowledged(self) -> set[str]:
        return {u for u, s in self.statuses.items() if s == 0x0000}


def sop_uid_of(path: Path) -> str:
    import pydicom

    return str(pydicom.filereader.read_file_meta_info(path).MediaStorageSOPInstanceUID)


def send_files(port: int, files: Sequence[Path], *, log: SendLog | None = None, calling: str = PUSHER_AET,
               called: str = "AINODE", timeout: float = 30.0, uids: Sequence[str] | None = None,
               contexts: Sequence[tuple[str, str]] | None = None) -> SendLog:  # fmt: skip
    """C-STORE ``files`` (sent from disk as they are: no decode) over one pynetdicom association."""
    import pydicom
    from pynetdicom import AE

    log = log or SendLog()
    if uids is None:
        uids = [sop_uid_of(f) for f in files]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    if contexts is None:
        pairs = set()
        for f in files:
            meta = pydicom.filereader.read_file_meta_info(f)  # the file meta only: bodies may be hostile
            pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        contexts = sorted(pairs)
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        if assoc.is_rejected:
            log.rejected_associations += 1
        else:
            log.aborted_associations += 1
        log.not_sent.extend(uids)
        return log
    install_checkpoint(assoc)  # as the node's own SCUs: no C-STORE response taken by the reactor
    try:
        for i, (f, uid) in enumerate(zip(files, uids, strict=True)):
            if not assoc.is_established:
                log.not_sent.extend(uids[i:])
                log.aborted_associations += 1
                break
            try:
                pause_reactor(assoc)
                status = assoc.send_c_store(f)
            except Exception:  # e.g. a file pynetdicom cannot even frame: counts as not sent
                log.not_sent.append(uid)
                continue
            if "Status" in status:
                log.statuses[uid] = int(status.Status)
            else:
                log.no_response.append(uid)
    finally:
        if assoc.is_established:
            assoc.release()
    return log


# ------------------------------------------------------------------------------------ journal
def journal_rows(spool_dir: Path, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the node's journal (safe while the node runs: WAL)."""
    uri = f"file:{spool_dir / 'journal.sqlite3'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=30) as db:
        return list(db.execute(sql, args))


def orthanc_sop_uids(orthanc: LocalOrthanc) -> list[str]:
    """SOP Instance UIDs of every instance in Orthanc (with repeats, if any)."""
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances", params={"expand": ""})]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError(f"VmRSS missing for pid {pid}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """``wait_until`` re-exported (bounded polling)."""
    return wait_until(predicate, timeout, interval=interval, what=what)


def elapsed(t0: float) -> float:
    return time.monotonic() - t0


def report(scenario: str, **fields: Any) -> None:
    """Append one JSON line with the scenario's figures to ``$CXR_RELIABILITY_REPORT`` (if set).

    The figures must be what the test counted (never a literal); ``scripts/reliability_report.py``
    renders RELIABILITY.md's results from these lines. The test's id and the time are added."""
    import datetime as dt
    import json

    path = os.environ.get("CXR_RELIABILITY_REPORT")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    ts = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"scenario": scenario, "scale": SCALE, "test": test, "ts": ts, **fields}) + "\n")
