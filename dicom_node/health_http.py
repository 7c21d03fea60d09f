"""Health and metrics HTTP endpoint of the node (stdlib ``ThreadingHTTPServer`` in a daemon thread).

* ``GET /healthz`` – liveness: 200 ``{"status": "ok"}`` while the process serves HTTP (and the
  optional ``alive()`` callable returns true), else 503.
* ``GET /readyz`` – readiness: 200 ``{"ready": true}`` when ``models_ready()`` is true and a file can
  be created in ``spool_dir``; otherwise 503 ``{"ready": false, "reasons": [...]}``.
* ``GET /metrics`` – Prometheus text format from a :class:`~dicom_node.node_metrics.NodeMetrics`.

The server binds to 127.0.0.1 by default: it is for the container health check and a local
Prometheus agent, not for the hospital network. Responses carry no patient data.

``python -m dicom_node.health_http --probe /healthz`` is the container health check: it exits 0
when the endpoint answers 200 (port from ``--port`` or ``$CXR_NODE_HTTP_PORT``, default 8080).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dicom_node.node_metrics import CONTENT_TYPE, NodeMetrics

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
PORT_ENV = "CXR_NODE_HTTP_PORT"
HOST_ENV = "CXR_NODE_HTTP_BIND"


def spool_problem(spool_dir: Path) -> str | None:
    """``None`` if a file can be created, written and removed in ``spool_dir``; else why not."""
    path = Path(spool_dir)
    if not path.is_dir():
        return f"spool directory does not exist: {str(path)!r}"
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".readyz-", delete=True) as fh:
            fh.write(b"1")
            fh.flush()
    except OSError as exc:
        return f"spool directory not writable: {str(path)!r} ({exc.strerror or exc})"
    return None


class HealthServer:
    """HTTP server for ``/healthz``, ``/readyz`` and ``/metrics``.

    ``port=0`` binds an ephemeral port (tests); use :func:`start_health_server` to honour the
    "0 = disabled" convention of the settings. ``metrics=None`` answers ``/metrics`` with 404.
    """

    def __init__(
        self,
        *,
        models_ready: Callable[[], bool],
        spool_dir: Path,
        metrics: NodeMetrics | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        if not callable(models_ready):
            raise ValueError(f"models_ready must be callable, got {models_ready!r}")
        if alive is not None and not callable(alive):
            raise ValueError(f"alive must be callable, got {alive!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"HTTP port must be 0-65535, got {port!r}")
        if not host:
            raise ValueError(f"HTTP bind address is empty: {host!r}")
        self.models_ready = models_ready
        self.spool_dir = Path(spool_dir)
        self.metrics = metrics
        self.host = host
        self.alive = alive
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is None:
            raise RuntimeError("health server is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> int:
        """Bind and serve in a daemon thread; returns the port. Raises ``OSError`` if the port is taken."""
        if self._server is not None:
            raise RuntimeError("health server already started")
        handler = _make_handler(self)
        server_cls = _IPv6Server if ":" in self.host else ThreadingHTTPServer
        server = server_cls((self.host, self._requested_port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="cxr-health-http", daemon=True
        )
        self._thread.start()
        logger.info("health endpoint listening", extra={"event": "http_listening", "bind": self.host, "port": self.port})
        return self.port

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        logger.info("health endpoint stopped", extra={"event": "http_stopped"})

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ answers
    def healthz(self) -> tuple[int, dict[str, Any]]:
        """Status code and JSON body of ``/healthz``."""
        if self.alive is not None:
            try:
                ok = bool(self.alive())
            except Exception as exc:
                return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "failing", "reason": f"liveness check raised {exc!r}"}
            if not ok:
                return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "failing", "reason": "a worker thread is not alive"}
        return HTTPStatus.OK, {"status": "ok"}

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """Status code and JSON body of ``/readyz``."""
        reasons: list[str] = []
        try:
            if not self.models_ready():
                reasons.append("models not loaded")
        except Exception as exc:
            reasons.append(f"model readiness check raised {exc!r}")
        problem = spool_problem(self.spool_dir)
        if problem:
            reasons.append(problem)
        if reasons:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"ready": False, "reasons": reasons}
        return HTTPStatus.OK, {"ready": True}


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _make_handler(owner: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cxr-node-health"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            try:
                if path == "/healthz":
                    self._json(*owner.healthz())
                elif path == "/readyz":
                    self._json(*owner.readyz())
                elif path == "/metrics" and owner.metrics is not None:
                    self._send(HTTPStatus.OK, owner.metrics.render(), CONTENT_TYPE)
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": "not found", "paths": ["/healthz", "/readyz", "/metrics"]})
            except Exception as exc:  # pragma: no cover - defensive: answer 500 rather than drop the connection
                logger.exception("health endpoint failed", extra={"event": "http_error", "path": path})
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__})

        def do_HEAD(self) -> None:  # noqa: N802
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use GET"})

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD  # noqa: N815

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, (json.dumps(body) + "\n").encode("utf-8"), "application/json")

        def _send(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(int(status))
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            if int(status) == HTTPStatus.METHOD_NOT_ALLOWED:
                self.send_header("Allow", "GET")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
            logger.debug("http " + format, *args, extra={"event": "http_request"})

    return Handler


def start_health_server(
    port: int,
    *,
    models_ready: Callable[[], bool],
    spool_dir: Path,
    metrics: NodeMetrics | None = None,
    host: str = DEFAULT_HOST,
    alive: Callable[[], bool] | None = None,
) -> HealthServer | None:
    """Start a :class:`HealthServer` on ``host:port``; ``port == 0`` means disabled and returns ``None``."""
    if port == 0:
        logger.info("health endpoint disabled", extra={"event": "http_disabled"})
        return None
    server = HealthServer(models_ready=models_ready, spool_dir=spool_dir, metrics=metrics, host=host, port=port,
                          alive=alive)  # fmt: skip
    server.start()
    return server


def probe(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET ``url``; returns (status code, body text). Connection errors return (0, the error)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL built by us
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dicom_node.health_http --probe /healthz``: exit 0 on HTTP 200, 1 otherwise."""
    p = argparse.ArgumentParser(prog="python -m dicom_node.health_http", description="probe the node's health endpoint")
    p.add_argument("--probe", default="/healthz", metavar="PATH", help="path to GET (default /healthz)")
    p.add_argument("--host", default=None, help=f"default: ${HOST_ENV} if it is not 0.0.0.0/::, else 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help=f"default: ${PORT_ENV} or {DEFAULT_PORT}")
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    port = args.port if args.port is not None else int(os.environ.get(PORT_ENV) or DEFAULT_PORT)
    if port <= 0:
        print(f"health endpoint disabled ({PORT_ENV}={port})", file=sys.stderr)
        return 1
    host = args.host or os.environ.get(HOST_ENV) or DEFAULT_HOST
    if host in ("0.0.0.0", "::", ""):
        host = DEFAULT_HOST
    if ":" in host:
        host = f"[{host}]"
    path = args.probe if args.probe.startswith("/") else "/" + args.probe
    status, body = probe(f"http://{host}:{port}{path}", timeout=args.timeout)
    if status != 200:
        print(f"{path}: {status or 'no answer'} {body.strip()[:300]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
