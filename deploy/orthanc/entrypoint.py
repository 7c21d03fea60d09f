"""Entry point of the cxr-ai-orthanc image: render Orthanc's configuration from the environment, start Orthanc.

The configuration is the project's ``orthanc.json`` rendered by ``dicom_node/orthanc/config.py``
(copied into the image as ``cxr_orthanc_config``), the same code the integration tests start Orthanc
with, plus Debian's DICOMweb and GDCM plug-ins. It is written to ``$CXR_ORTHANC_RUN_DIR`` (default
``/tmp/cxr-orthanc``, a tmpfs in compose; mode 0600, it holds the password) and Orthanc is exec'd on it.

Environment (set by docker-compose.yml; see docs/DEPLOY.md):

- ``ORTHANC_USER``, ``ORTHANC_PASSWORD``: HTTP credentials (required, non-empty);
- ``CXR_NODE_HOST`` (IP address), ``CXR_NODE_AET`` (``AINODE``), ``CXR_NODE_PORT`` (11112): the AI node;
- ``CXR_MODALITY_AET``, ``CXR_MODALITY_HOST`` (IP address): the modality allowed to store into Orthanc;
- ``CXR_ORTHANC_STABLE_AGE`` (10 s);
- ``CXR_ORTHANC_DICOM_TLS=true`` with ``CXR_ORTHANC_TLS_CERT``, ``CXR_ORTHANC_TLS_KEY``, ``CXR_ORTHANC_TLS_CA``:
  DICOM TLS on both of Orthanc's hops (the node's half is ``CXR_NODE_TLS=true``).

``entrypoint.py --probe`` is the container health check: Orthanc answers ``GET /cxr-ai/status`` (so the
routing plug-in is loaded) with the configured credentials.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cxr_orthanc_config import (  # noqa: E402 - the module sits next to this file in the image
    DEBIAN_DICOMWEB_PLUGIN,
    DicomTls,
    Modality,
    OrthancDeployment,
    render_config,
)

DEBIAN_GDCM_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancGdcm.so")
STORAGE = Path("/var/lib/orthanc/db")
PLUGIN_SCRIPT = HERE / "orthanc_plugin" / "cxr_router.py"
HTTP_PORT = 8042
DICOM_PORT = 4242


class ConfigError(ValueError):
    """A missing or invalid environment variable; the message names it."""


def _require(env: dict[str, str], name: str, hint: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is empty or not set: {hint}")
    return value


def _flag(env: dict[str, str], name: str) -> bool:
    value = env.get(name, "false").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", ""):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value in ("true", "1", "yes")


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def deployment_from_env(env: dict[str, str]) -> OrthancDeployment:
    """The Orthanc deployment the container's environment describes (ConfigError / ValueError when invalid)."""
    user = _require(env, "ORTHANC_USER", "set ORTHANC_USER in .env")
    password = _require(env, "ORTHANC_PASSWORD", "set ORTHANC_PASSWORD in .env (there is no default password)")
    node = Modality("cxr-node", env.get("CXR_NODE_AET", "AINODE"), _require(env, "CXR_NODE_HOST", "the node's IP address"),
                    _int(env, "CXR_NODE_PORT", 11112))  # fmt: skip
    modality = Modality("modality", _require(env, "CXR_MODALITY_AET", "the AE title of the modality"),
                        _require(env, "CXR_MODALITY_HOST", "the IP address the modality calls Orthanc from"), 104)  # fmt: skip
    tls = None
    if _flag(env, "CXR_ORTHANC_DICOM_TLS"):
        files = [Path(_require(env, f"CXR_ORTHANC_TLS_{k}", "needed with CXR_ORTHANC_DICOM_TLS=true")) for k in ("CERT", "KEY", "CA")]
        for f in files:
            if not f.is_file():
                raise ConfigError(f"DICOM TLS file {str(f)!r} does not exist (mount the certificate folder)")
        tls = DicomTls(*files)
    return OrthancDeployment(
        storage_dir=STORAGE,
        users={user: password},
        node=node,
        http_port=HTTP_PORT,
        dicom_port=DICOM_PORT,
        modalities=(modality,),
        stable_age_s=_int(env, "CXR_ORTHANC_STABLE_AGE", 10),
        remote_access=True,
        plugin_script=PLUGIN_SCRIPT,
        dicomweb_plugin=DEBIAN_DICOMWEB_PLUGIN,
        dicom_tls=tls,
    )


def container_config(env: dict[str, str]) -> dict[str, object]:
    """The rendered configuration: the project's renderer plus the GDCM plug-in (JPEG 2000, JPEG-LS ...)."""
    cfg = render_config(deployment_from_env(env))
    cfg["Plugins"] = [*cfg["Plugins"], str(DEBIAN_GDCM_PLUGIN)]  # type: ignore[list-item]
    return cfg


def probe(env: dict[str, str]) -> int:
    """Health check: 0 when Orthanc answers /cxr-ai/status with 200 for the configured user."""
    token = base64.b64encode(f"{env.get('ORTHANC_USER', '')}:{env.get('ORTHANC_PASSWORD', '')}".encode()).decode()
    req = urllib.request.Request(f"http://127.0.0.1:{HTTP_PORT}/cxr-ai/status", headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=4) as r:
            json.load(r)
            return 0
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cxr-orthanc health: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    if argv[1:] == ["--probe"]:
        return probe(env)
    try:
        cfg = container_config(env)
    except ValueError as exc:
        print(f"cxr-orthanc: refusing to start: {exc}", file=sys.stderr, flush=True)
        return 2
    run_dir = Path(env.get("CXR_ORTHANC_RUN_DIR", "/tmp/cxr-orthanc"))
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = run_dir / "orthanc.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    tls = "on" if cfg.get("DicomTlsEnabled") else "off"
    print(f"cxr-orthanc: starting Orthanc (DICOM {DICOM_PORT}, HTTP {HTTP_PORT}, DICOM TLS {tls})", file=sys.stderr, flush=True)
    os.execvp("Orthanc", ["Orthanc", str(path)])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
