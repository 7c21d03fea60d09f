"""OHIF Viewer served same-origin with Orthanc's DICOMweb, for the browser tests.

One small threaded HTTP server on 127.0.0.1:

- ``/app-config.js``: an OHIF configuration whose one data source is ``/dicom-web`` on this origin;
- ``/dicom-web/...``: proxied to the Orthanc DICOMweb plug-in (HTTP basic auth added here, so the
  browser needs no credentials and makes no cross-origin request);
- every other path: a file of OHIF's built ``dist/`` folder, or ``index.html`` when there is no such
  file (OHIF is a single-page application: ``/viewer?StudyInstanceUIDs=...`` is a client route).

The pinned OHIF build is fetched by ``scripts/fetch_ohif.sh`` (``npm pack @ohif/app@VERSION`` +
SHA-256 check) into the git-ignored folder :data:`OHIF_DIR`; :func:`ohif_dist` finds it.
"""

from __future__ import annotations

import json
import mimetypes
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

REPO = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO / "scripts" / "fetch_ohif.sh"
#: where ``scripts/fetch_ohif.sh`` unpacks OHIF (git-ignored)
OHIF_DIR = REPO / ".ohif"
DICOMWEB_PREFIX = "/dicom-web"

_TYPES = {
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".wasm": "application/wasm",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".html": "text/html; charset=utf-8",
}
#: request headers passed on to Orthanc (the rest, cookies included, stay here)
_FORWARD_REQUEST = ("accept", "range", "if-none-match")
#: response headers passed back to the browser
_FORWARD_RESPONSE = ("content-type", "etag", "content-range")


def pinned_ohif() -> tuple[str, str]:
    """``(version, sha256)`` of the OHIF package pinned in ``scripts/fetch_ohif.sh``."""
    text = FETCH_SCRIPT.read_text(encoding="utf-8")
    version = re.search(r'^OHIF_VERSION="([^"]+)"$', text, re.MULTILINE)
    sha = re.search(r'^OHIF_SHA256="([0-9a-f]{64})"$', text, re.MULTILINE)
    if version is None or sha is None:
        raise ValueError(f"OHIF_VERSION / OHIF_SHA256 not found in {FETCH_SCRIPT}")
    return version[1], sha[1]


def ohif_dist() -> Path | None:
    """The unpacked ``dist/`` of the pinned OHIF version, or None when it was not fetched."""
    version, _ = pinned_ohif()
    dist = OHIF_DIR / f"app-{version}" / "dist"
    return dist if (dist / "index.html").is_file() and (dist / ".cxr-verified").is_file() else None


def app_config(dicomweb_root: str = DICOMWEB_PREFIX) -> str:
    """``app-config.js`` with one DICOMweb data source at ``dicomweb_root`` (same origin)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (cxr-ai-node tests)",
            "name": "orthanc",
            "wadoUriRoot": dicomweb_root,
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(BaseHTTPRequestHandler):
    server: OhifServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet; errors are raised
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _send(self, status: int, body: bytes, headers: dict[str, str], *, head: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _answer(self, *, head: bool) -> None:
        path = urlsplit(self.path).path
        if path == DICOMWEB_PREFIX or path.startswith(DICOMWEB_PREFIX + "/"):
            self._proxy(head=head)
            return
        if path == "/app-config.js":
            self._send(200, self.server.config_js.encode(), {"Content-Type": _TYPES[".js"]}, head=head)
            return
        file = self.server.static_file(path)
        body = file.read_bytes()
        ctype = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._send(200, body, {"Content-Type": ctype}, head=head)

    def _proxy(self, *, head: bool) -> None:
        rest = self.path[len(DICOMWEB_PREFIX) :]
        headers = {k: v for k, v in self.headers.items() if k.lower() in _FORWARD_REQUEST}
        try:
            r = self.server.client.request("HEAD" if head else "GET", self.server.dicomweb_url + rest, headers=headers)
        except httpx.HTTPError as exc:
            self._send(502, f"Orthanc unreachable: {exc}".encode(), {"Content-Type": "text/plain"}, head=head)
            return
        self.server.proxied.append((rest, r.status_code))
        out = {k: v for k, v in r.headers.items() if k.lower() in _FORWARD_RESPONSE}
        self._send(r.status_code, r.content, out, head=head)


class OhifServer(ThreadingHTTPServer):
    """OHIF's ``dist/`` plus a DICOMweb proxy to Orthanc on one loopback origin; ``start()`` / ``stop()``."""

    daemon_threads = True

    def __init__(self, dist: Path, dicomweb_url: str, auth: tuple[str, str], port: int = 0) -> None:
        if not (Path(dist) / "index.html").is_file():
            raise FileNotFoundError(f"no OHIF build (index.html) in {dist}")
        super().__init__(("127.0.0.1", port), _Handler)
        self.dist = Path(dist).resolve()
        self.dicomweb_url = dicomweb_url.rstrip("/")
        self.client = httpx.Client(auth=auth, timeout=30.0)
        self.config_js = app_config()
        #: (path after /dicom-web, status) of every proxied request, for failure messages
        self.proxied: list[tuple[str, int]] = []
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def static_file(self, path: str) -> Path:
        """The dist file for a URL path, or ``index.html`` (SPA fallback; never outside ``dist``)."""
        candidate = (self.dist / unquote(path).lstrip("/")).resolve()
        if candidate.is_file() and candidate.is_relative_to(self.dist):
            return candidate
        return self.dist / "index.html"

    def start(self) -> OhifServer:
        self._thread = threading.Thread(target=self.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.client.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
