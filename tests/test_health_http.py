"""``HealthServer`` over real HTTP on 127.0.0.1: /healthz, /readyz, /metrics, and the probe CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.health_http import HealthServer, main, probe, spool_problem, start_health_server
from dicom_node.node_metrics import NodeMetrics

ROOT = Path(__file__).resolve().parents[1]


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


class Flag:
    def __init__(self) -> None:
        self.value = False

    def __call__(self) -> bool:
        return self.value


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[tuple[HealthServer, NodeMetrics, Flag, Path]]:
    spool = tmp_path / "spool"
    spool.mkdir()
    metrics = NodeMetrics(queue_depth=lambda: 4)
    ready = Flag()
    server = HealthServer(models_ready=ready, spool_dir=spool, metrics=metrics, port=0)
    server.start()
    try:
        yield server, metrics, ready, spool
    finally:
        server.stop()


def test_binds_loopback_by_default(node: tuple[HealthServer, NodeMetrics, Flag, Path]) -> None:
    server = node[0]
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_healthz_is_200_even_before_ready(node: tuple[HealthServer, NodeMetrics, Flag, Path]) -> None:
    server = node[0]
    status, ctype, body = get(server.url + "/healthz")
    assert (status, ctype, json.loads(body)) == (200, "application/json", {"status": "ok"})


def test_readyz_flips_from_503_to_200(node: tuple[HealthServer, NodeMetrics, Flag, Path]) -> None:
    server, _, ready, _ = node
    status, _, body = get(server.url + "/readyz")
    assert status == 503
    assert json.loads(body) == {"ready": False, "reasons": ["models not loaded"]}
    ready.value = True
    status, _, body = get(server.url + "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True})


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write a read-only folder")
def test_readyz_503_when_spool_not_writable(node: tuple[HealthServer, NodeMetrics, Flag, Path]) -> None:
    server, _, ready, spool = node
    ready.value = True
    spool.chmod(0o500)
    try:
        status, _, body = get(server.url + "/readyz")
    finally:
        spool.chmod(0o700)
    assert status == 503 and "not writable" in json.loads(body)["reasons"][0]


def test_readyz_503_when_spool_missing(node: tuple[HealthServer, NodeMetrics, Flag, Path]) -> None:
    server, _, ready, spool = node
    ready.value = True
    spool.rmdir()
    status, _, body = get(server.url + "/readyz")
    assert status == 503
    assert json.loads(body)["reasons"] == [f"spool directory does not exist: {str(spool)!r}"]
    spool.mkdir()
    assert get(server.url + "/readyz")[0] == 200


def test_spool_problem_on_a_file_instead_of_a_folder(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert spool_problem(f) is not None
    assert spool_problem(tmp_path) is None
    assert list(tmp_path.iterdir()) == [f]  # the probe file was removed


def test_readyz_reports_a_raising_readiness_check(tmp_path: Path) -> None:
    def boom() -> bool:
        raise RuntimeError("engine crashed")

    with HealthServer(models_ready=boom, spool_dir=tmp_path, port=0) as server:
        status, _, body = get(server.url + "/readyz")
    assert status == 503 and "engine crashed" in json.loads(body)["reasons"][0]


def test_metrics_scrape_matches_recorded_counters(node: tuple[HealthServer, NodeMetrics, Flag, Path]) -> None:
    server, metrics, _, _ = node
    for _ in range(5):
        metrics.received()
    metrics.skipped("view_position")
    for latency in (0.1, 0.3, 0.5):
        metrics.analysed(latency)
    metrics.delivered("ORTHANC")
    metrics.delivered("ORTHANC")
    metrics.failed("analyse")
    status, ctype, body = get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }
    assert values[("cxr_node_received_total", ())] == 5
    assert values[("cxr_node_skipped_total", (("reason", "view_position"),))] == 1
    assert values[("cxr_node_analysed_total", ())] == 3
    assert values[("cxr_node_inference_latency_seconds_count", ())] == 3
    assert values[("cxr_node_inference_latency_seconds_sum", ())] == pytest.approx(0.9)
    assert values[("cxr_node_delivered_total", (("destination", "ORTHANC"),))] == 2
    assert values[("cxr_node_failed_total", (("stage", "analyse"),))] == 1
    assert values[("cxr_node_queue_depth", ())] == 4
    assert ("cxr_node_gpu_memory_bytes", ()) in values


def test_concurrent_scrapes(node: tuple[HealthServer, NodeMetrics, Flag, Path]) -> None:
    server, metrics, _, _ = node
    results: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            metrics.received()
            status = get(server.url + "/metrics")[0]
            with lock:
                results.append(status)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [200] * 20
    body = get(server.url + "/metrics")[2]
    assert "cxr_node_received_total 20.0" in body


def test_unknown_path_and_method(node: tuple[HealthServer, NodeMetrics, Flag, Path]) -> None:
    server = node[0]
    assert get(server.url + "/nope")[0] == 404
    req = urllib.request.Request(server.url + "/healthz", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 405


def test_metrics_404_without_metrics(tmp_path: Path) -> None:
    with HealthServer(models_ready=lambda: True, spool_dir=tmp_path, port=0) as server:
        assert get(server.url + "/metrics")[0] == 404
        assert get(server.url + "/readyz")[0] == 200


def test_liveness_callable(tmp_path: Path) -> None:
    alive = Flag()
    with HealthServer(models_ready=lambda: True, spool_dir=tmp_path, port=0, alive=alive) as server:
        assert get(server.url + "/healthz")[0] == 503
        alive.value = True
        assert get(server.url + "/healthz")[0] == 200


def test_port_zero_disables_and_stop_frees_the_port(tmp_path: Path) -> None:
    assert start_health_server(0, models_ready=lambda: True, spool_dir=tmp_path) is None
    server = HealthServer(models_ready=lambda: True, spool_dir=tmp_path, port=0)
    port = server.start()
    server.stop()
    server.stop()  # idempotent
    status, text = probe(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert status == 0 and text
    # the freed port can be bound again by a server with a fixed port
    again = start_health_server(port, models_ready=lambda: True, spool_dir=tmp_path)
    assert again is not None and again.port == port
    again.stop()


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="70000"):
        HealthServer(models_ready=lambda: True, spool_dir=tmp_path, port=70000)
    with pytest.raises(ValueError, match="callable"):
        HealthServer(models_ready=True, spool_dir=tmp_path)  # type: ignore[arg-type]


def test_probe_cli_exit_codes(node: tuple[HealthServer, NodeMetrics, Flag, Path],
                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    server, _, ready, _ = node
    assert main(["--port", str(server.port), "--probe", "/healthz"]) == 0
    assert main(["--port", str(server.port), "--probe", "/readyz"]) == 1
    ready.value = True
    assert main(["--port", str(server.port), "--probe", "readyz"]) == 0
    monkeypatch.setenv("CXR_NODE_HTTP_PORT", str(server.port))
    monkeypatch.setenv("CXR_NODE_HTTP_BIND", "0.0.0.0")  # the probe then uses loopback
    assert main([]) == 0
    monkeypatch.setenv("CXR_NODE_HTTP_PORT", "0")
    assert main([]) == 1


def test_probe_cli_as_the_container_healthcheck_runs_it(node: tuple[HealthServer, NodeMetrics, Flag, Path]) -> None:
    """The exact command of the Dockerfile HEALTHCHECK, in a fresh interpreter."""
    server = node[0]
    env = {**os.environ, "CXR_NODE_HTTP_PORT": str(server.port), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dicom_node.health_http", "--probe", "/healthz"]
    assert subprocess.run(cmd, env=env, timeout=60, capture_output=True).returncode == 0
    server.stop()
    proc = subprocess.run(cmd, env=env, timeout=60, capture_output=True, text=True)
    assert proc.returncode == 1 and "/healthz" in proc.stderr
