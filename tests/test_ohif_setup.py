"""What the OHIF browser test relies on, checked without a browser: the pinned OHIF package, the
CI set-up that installs it, and the same-origin server (files, SPA fallback, config, DICOMweb proxy)."""

from __future__ import annotations

import http.client
import json
import re
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from ohif_server import OHIF_DIR, OhifServer, app_config, pinned_ohif  # noqa: E402


def test_ohif_is_pinned_by_exact_version_and_checksum() -> None:
    version, sha = pinned_ohif()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"OHIF must be pinned to an exact release, got {version!r}"
    assert re.fullmatch(r"[0-9a-f]{64}", sha)
    script = (ROOT / "scripts" / "fetch_ohif.sh").read_text()
    assert 'npm pack --silent "@ohif/app@$OHIF_VERSION"' in script
    assert "sha256sum --check" in script


def test_ci_setup_installs_the_browser_test_dependencies_and_never_commits_ohif() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    ci_block = setup[setup.index('if [[ "${1:-}" == "--ci" ]]'):]
    assert "orthanc-dicomweb chromium" in ci_block
    assert 'bash "$REPO/scripts/fetch_ohif.sh"' in setup
    assert "/.ohif" in (ROOT / ".gitignore").read_text().splitlines()  # also matches a link (worktrees share one build)
    assert OHIF_DIR == ROOT / ".ohif"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"playwright>=' in pyproject  # pinned exactly in constraints.txt (tests/test_constraints.py)


class _FakeDicomWeb(BaseHTTPRequestHandler):
    """Stands in for Orthanc's DICOMweb: answers with what it was asked (path, auth, Accept)."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization"),
                           "accept": self.headers.get("Accept"), "cookie": self.headers.get("Cookie")}).encode()  # fmt: skip
        self.send_response(404 if "missing" in self.path else 200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[OhifServer, Path]]:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<html>OHIF</html>")
    (dist / "app.bundle.js").write_text("console.log(1)")
    (dist / "assets" / "x.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("outside dist")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _FakeDicomWeb)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    server = OhifServer(dist, f"http://127.0.0.1:{upstream.server_address[1]}/dicom-web", ("u", "p")).start()
    try:
        yield server, tmp_path
    finally:
        server.stop()
        upstream.shutdown()
        upstream.server_close()


def test_server_serves_dist_with_spa_fallback_and_never_outside_it(served: tuple[OhifServer, Path]) -> None:
    server, _ = served
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/app.bundle.js").headers["content-type"] == "application/javascript"
        assert c.get("/assets/x.wasm").headers["content-type"] == "application/wasm"
        for route in ("/viewer?StudyInstanceUIDs=1.2.3", "/", "/some/client/route"):
            r = c.get(route)
            assert (r.status_code, r.text) == (200, "<html>OHIF</html>"), route
    for escape in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/../../secret.txt", "/assets/%2E%2E/%2E%2E/secret.txt"):
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        conn.request("GET", escape)  # sent as is (httpx would normalise the dots away)
        body = conn.getresponse().read().decode()
        conn.close()
        assert body == "<html>OHIF</html>", escape


def test_server_config_points_ohif_at_its_own_dicomweb(served: tuple[OhifServer, Path]) -> None:
    server, _ = served
    text = httpx.get(server.url + "/app-config.js").text
    assert text == app_config()
    config = json.loads(text.removeprefix("window.config = ").rstrip(";\n"))
    (source,) = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    for key in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert source["configuration"][key] == "/dicom-web"  # same origin: no CORS, no credentials in the page


def test_server_proxies_dicomweb_with_the_orthanc_credentials(served: tuple[OhifServer, Path]) -> None:
    server, _ = served
    r = httpx.get(server.url + "/dicom-web/studies/1.2/series?limit=3",
                  headers={"Accept": "application/dicom+json", "Cookie": "session=browser"})  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
    seen = r.json()
    assert seen["path"] == "/dicom-web/studies/1.2/series?limit=3"
    assert seen["auth"] == "Basic dTpw"  # base64("u:p"), added by the proxy
    assert seen["accept"] == "application/dicom+json" and seen["cookie"] is None
    assert httpx.get(server.url + "/dicom-web/missing").status_code == 404
    assert server.proxied[-1] == ("/missing", 404)
