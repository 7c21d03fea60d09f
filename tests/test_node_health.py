"""The health/metrics endpoint of the running ``NodeService`` (real HTTP on 127.0.0.1, real dcmtk peers):
/readyz is 503 while the models load and 200 after, /healthz 200, /metrics counts what was pushed,
the endpoint binds loopback by default, and the spool/journal are private (0700/0600), including
after a real ``cxr-node serve`` run (umask 077)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicom_factory import have_dcmtk
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import CT_IMAGE_STORAGE, FakeAnalyser, StoreSCP, _cxr, _settings, _storescu, _wait
from tls_certs import free_port

from dicom_node.service import NodeService
from dicom_node.settings import NodeSettings
from models.errors import ImageDecodeError

REPO = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not have_dcmtk("storescu", "storescp"), reason="dcmtk not installed"),
]
Sample = tuple[str, frozenset[tuple[str, str]]]


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of ``GET http://127.0.0.1:port/path``; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[Sample, float]:
    """Every sample of /metrics as {(sample name, labels): value}."""
    status, body = get(port, "/metrics")
    assert status == 200, body
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict[Sample, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def labelled(samples: dict[Sample, float], name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[StoreSCP]:
    d = StoreSCP(tmp_path)
    yield d
    d.stop()


def _health_settings(tmp_path: Path, dest: StoreSCP, **overrides: object) -> NodeSettings:
    params: dict[str, object] = {"http_port": free_port()}
    params.update(overrides)
    return _settings(tmp_path, dest, **params)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------------------- readiness
def test_readyz_is_503_while_models_load_and_200_after(tmp_path: Path, dest: StoreSCP) -> None:
    loaded = threading.Event()
    factory_called = threading.Event()
    fake = FakeAnalyser()

    def slow_factory(settings: NodeSettings) -> FakeAnalyser:
        factory_called.set()
        assert loaded.wait(30), "test never released the model load"
        return fake

    svc = NodeService(_health_settings(tmp_path, dest), analyser_factory=slow_factory)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            svc.start()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    starter = threading.Thread(target=start, name="test-start")
    starter.start()
    try:
        assert factory_called.wait(20), errors
        port = svc.health
        assert port is not None  # the endpoint is up before the models are
        status, body = get(port, "/readyz")
        assert status == 503 and json.loads(body) == {"ready": False, "reasons": ["models not loaded"]}
        assert get(port, "/healthz") == (200, '{"status": "ok"}\n')
        assert labelled(scrape(port), "cxr_node_model_info") == {}
        loaded.set()
        starter.join(30)
        assert not starter.is_alive() and errors == []
        assert get(port, "/readyz") == (200, '{"ready": true}\n')
        models = labelled(scrape(port), "cxr_node_model_info")
        assert models == {frozenset({"name": m.name, "version": m.version}.items()): 1.0 for m in fake.models}
    finally:
        loaded.set()
        starter.join(30)
        svc.stop()
    # the endpoint stops with the service
    with socket.socket() as s:
        s.settimeout(0.5)
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_readyz_turns_503_when_the_spool_is_gone(tmp_path: Path, dest: StoreSCP) -> None:
    with NodeService(_health_settings(tmp_path, dest), analyser=FakeAnalyser()) as svc:
        assert svc.health is not None and get(svc.health, "/readyz")[0] == 200
        spool = tmp_path / "spool"
        spool.rename(tmp_path / "spool.moved")  # e.g. a volume that went away (root ignores chmod)
        try:
            status, body = get(svc.health, "/readyz")
        finally:
            (tmp_path / "spool.moved").rename(spool)
        assert status == 503 and "spool directory does not exist" in body, body
        assert get(svc.health, "/healthz")[0] == 200
        assert get(svc.health, "/readyz")[0] == 200


# ----------------------------------------------------------------------------- metrics
def test_metrics_count_what_was_pushed(tmp_path: Path, dest: StoreSCP) -> None:
    dest.start()
    cxrs = [_cxr(tmp_path, i) for i in range(3)]
    ct = _cxr(tmp_path, 9, sop_class_uid=CT_IMAGE_STORAGE, Modality="CT")
    fake = FakeAnalyser()
    with NodeService(_health_settings(tmp_path, dest), analyser=fake) as svc:
        assert svc.health is not None and svc.journal is not None
        before = scrape(svc.health)
        assert value(before, "cxr_node_received_total") == 0.0
        _storescu(svc.port, *cxrs, ct)
        assert _wait(lambda: svc.journal.counts().get("outbox.delivered") == 6, 30), svc.journal.counts()  # type: ignore[union-attr]
        m = scrape(svc.health)
    assert value(m, "cxr_node_received_total") == 3.0
    assert labelled(m, "cxr_node_skipped_total") == {frozenset({("reason", "modality")}): 1.0}  # the routing policy checks Modality before the SOP class (docs/ROUTING.md)
    assert value(m, "cxr_node_analysed_total") == 3.0
    assert value(m, "cxr_node_inference_latency_seconds_count") == 3.0
    assert 0 < value(m, "cxr_node_inference_latency_seconds_sum") < 30  # type: ignore[operator]
    assert labelled(m, "cxr_node_delivered_total") == {frozenset({("destination", "DEST")}): 6.0}
    assert labelled(m, "cxr_node_failed_total") == {}
    assert value(m, "cxr_node_queue_depth") == 0.0
    assert value(m, "cxr_node_undelivered") == 0.0  # drained: every result delivered
    assert len(dest.files()) == 6 and fake.submitted == 3


def test_metrics_count_failures_by_stage_and_queue_depth(tmp_path: Path, dest: StoreSCP) -> None:
    """Destination down (dest never started) and one undecodable instance: failed{stage} counters move,
    nothing is counted as delivered; while the analyser is held, queue_depth shows the waiting jobs."""
    bad, good = _cxr(tmp_path, 1), _cxr(tmp_path, 2)
    bad_uid = str(pydicom.dcmread(bad).SOPInstanceUID)
    gate = threading.Event()

    def fail(ds: pydicom.Dataset, _n: int) -> BaseException | None:
        return ImageDecodeError(bad_uid, "corrupt stream") if str(ds.SOPInstanceUID) == bad_uid else None

    settings = _health_settings(tmp_path, dest, batch_size=1)  # 2 in flight at most
    with NodeService(settings, analyser=FakeAnalyser(gate=gate, fail=fail)) as svc:
        assert svc.health is not None and svc.journal is not None
        extra = [_cxr(tmp_path, i) for i in range(3, 6)]
        _storescu(svc.port, bad, good, *extra)
        # two jobs are held in the analyser, three wait for it: all five are still "received"
        assert _wait(lambda: value(scrape(svc.health), "cxr_node_queue_depth") == 5.0, 10)  # type: ignore[arg-type]
        gate.set()
        assert _wait(lambda: value(scrape(svc.health), "cxr_node_failed_total", stage="deliver"), 30)  # type: ignore[arg-type]
        assert _wait(lambda: svc.journal.counts().get("job.analysed") == 4, 30), svc.journal.counts()  # type: ignore[union-attr]
        m = scrape(svc.health)
    assert value(m, "cxr_node_received_total") == 5.0
    assert value(m, "cxr_node_failed_total", stage="analyse") == 1.0
    assert value(m, "cxr_node_analysed_total") == 4.0
    assert value(m, "cxr_node_failed_total", stage="deliver") >= 1.0  # type: ignore[operator]
    assert labelled(m, "cxr_node_delivered_total") == {}
    assert value(m, "cxr_node_queue_depth") == 0.0
    # analysed, results not delivered (destination down): not drained, although nothing waits for analysis
    assert value(m, "cxr_node_undelivered") == 4.0


# ----------------------------------------------------------------------------- binding
def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (from /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                if len(addr) == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
                else:
                    raw = b"".join(bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, 32, 8))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_health_endpoint_binds_loopback_by_default_and_port_0_disables_it(
    tmp_path: Path, dest: StoreSCP
) -> None:
    assert NodeSettings.model_fields["http_bind"].default == "127.0.0.1"
    with NodeService(_health_settings(tmp_path, dest), analyser=FakeAnalyser()) as svc:
        assert svc.health is not None
        assert _listening_addresses(svc.health) == {"127.0.0.1"}
        assert get(svc.health, "/healthz")[0] == 200
    with NodeService(_health_settings(tmp_path, dest, http_port=0), analyser=FakeAnalyser()) as svc:
        assert svc.health is None and svc.ready


def test_http_port_in_use_is_an_explicit_error(tmp_path: Path, dest: StoreSCP) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        svc = NodeService(_health_settings(tmp_path, dest, http_port=port), analyser=FakeAnalyser())
        with pytest.raises(OSError, match=f"127.0.0.1:{port}.*CXR_NODE_HTTP_PORT"):
            svc.start()
    assert svc.journal is not None
    with pytest.raises(Exception, match="closed"):  # start() cleaned up after itself
        svc.journal.counts()


def test_default_http_port_in_use_is_logged_and_the_node_runs_without_it(
    tmp_path: Path, dest: StoreSCP, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a port set explicitly is fatal when taken; the default one is best effort. The settings stand
    for "http_port left at its default, which happens to be taken" with a busy ephemeral port (so the
    test does not depend on who holds 8080 on this host)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        validated = _settings(tmp_path, dest)
        # _settings pins http_port=0 for the rest of the suite: mark it "left at its default" here
        fields_set = set(validated.model_fields_set) - {"http_port"}
        settings = NodeSettings.model_construct(_fields_set=fields_set, **{**dict(validated), "http_port": port})
        with NodeService(settings, analyser=FakeAnalyser()) as svc:
            assert svc.ready and svc.health is None
    errors = [r for r in caplog.records if getattr(r, "event", None) == "http_unavailable"]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0].getMessage()


# ----------------------------------------------------------------------------- permissions
def test_spool_and_journal_are_private_even_with_a_permissive_umask(tmp_path: Path, dest: StoreSCP) -> None:
    spool = tmp_path / "spool"
    (spool / "outbox" / "7").mkdir(parents=True)  # a previous run with a loose umask
    spool.chmod(0o755)
    old = os.umask(0o022)
    try:
        dest.start()
        with NodeService(_health_settings(tmp_path, dest), analyser=FakeAnalyser()) as svc:
            _storescu(svc.port, _cxr(tmp_path, 1))
            assert _wait(lambda: svc.journal.counts().get("job.delivered") == 1, 30)  # type: ignore[union-attr]
            journal = svc.settings.journal_path
            files = [
                journal,
                journal.with_name(journal.name + "-wal"),
                journal.with_name(journal.name + "-shm"),
            ]
            assert all(f.exists() for f in files)
            assert {str(f.name): _mode(f) for f in files} == {str(f.name): 0o600 for f in files}
            dirs = [spool, spool / "incoming", spool / "outbox", spool / "outbox" / "7"]
            assert {str(d): _mode(d) for d in dirs} == {str(d): 0o700 for d in dirs}
    finally:
        os.umask(old)


@pytest.mark.slow
def test_serve_run_real_engine_health_metrics_and_private_files(tmp_path: Path, dest: StoreSCP) -> None:
    """``cxr-node serve`` as a process with the shipped bundles on CPU: /readyz 503 while the engine
    loads, then 200; one CXR is analysed and delivered; /metrics counts it and names the bundles; after
    SIGTERM every file the node wrote is 0600 and every folder 0700 (umask 077), with the parent
    process' umask at 022."""
    dest.start()
    http_port, dicom_port = free_port(), free_port()
    spool = tmp_path / "spool"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    env.update(
        {
            "CXR_NODE_PORT": str(dicom_port),
            "CXR_NODE_HTTP_PORT": str(http_port),
            "CXR_NODE_SPOOL_DIR": str(spool),
            "CXR_NODE_DISK_RESERVE_MB": "0",
            "CXR_NODE_KEEP_DELIVERED": "true",  # so that the files are still there to check
            "CXR_NODE_DESTINATIONS": dest.destination,
            "CXR_NODE_ALLOWED_AETS": "STORESCU",
            "CXR_NODE_BUNDLES_DIR": str(REPO / "monai_bundles"),
            "CXR_NODE_DEVICE": "cpu",
            "CXR_NODE_BATCH_SIZE": "1",
            "CXR_NODE_DECODE_WORKERS": "1",
            "CXR_NODE_POLL_INTERVAL_S": "0.1",
            "OMP_NUM_THREADS": "2",
            "PYTHONPATH": str(REPO),
        }
    )
    log_path = tmp_path / "serve.log"
    old = os.umask(0o022)
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node.cli", "serve"], cwd=tmp_path, env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
    finally:
        os.umask(old)
    try:
        seen: list[int] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = get(http_port, "/readyz")[0]
            except (urllib.error.URLError, OSError):
                status = 0  # not listening yet
            if status:
                seen.append(status)
            if status == 200:
                break
            time.sleep(0.1)
        assert proc.poll() is None and seen and seen[-1] == 200, log_path.read_text()[-3000:]
        assert seen[0] == 503 and set(seen) == {503, 200}, seen  # not ready while the engine loaded
        src = _cxr(tmp_path, 1)
        _storescu(dicom_port, src)
        assert _wait(lambda: len(list(dest.out.iterdir())) >= 2, 180, 0.5), log_path.read_text()[-3000:]
        assert _wait(
            lambda: value(scrape(http_port), "cxr_node_delivered_total", destination="DEST") == 2, 30
        )
        m = scrape(http_port)
        assert value(m, "cxr_node_received_total") == 1.0 and value(m, "cxr_node_analysed_total") == 1.0
        names = {dict(labels)["name"] for labels in labelled(m, "cxr_node_model_info")}
        assert names == {"cxr_classification", "cxr_opacity_detection"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    files = [p for p in spool.rglob("*") if p.is_file()]
    dirs = [spool, *(p for p in spool.rglob("*") if p.is_dir())]
    assert any(p.suffix == ".dcm" for p in files) and (spool / "journal.sqlite3") in files
    assert {str(p): _mode(p) for p in files} == {str(p): 0o600 for p in files}
    assert {str(p): _mode(p) for p in dirs} == {str(p): 0o700 for p in dirs}
