"""docker-compose.yml: structure checks in Python, cross-checks with the shipped Orthanc configuration,
and ``docker-compose config`` validation when the binary is installed (Docker itself cannot run here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from dicom_node.orthanc.config import load_shipped_config
from dicom_node.settings import NodeSettings, parse_destination

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "deploy" / "compose.cpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SPOOL = "/var/lib/cxr-node"
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def load(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose variable interpolation (``${X}``, ``${X:-d}``, ``${X-d}``, ``${X:?msg}``) for the checks below."""

    def repl(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if op in (":-", "-"):
            return env.get(name) or arg if op == ":-" else env.get(name, arg)
        if op in (":?", "?") and not env.get(name):
            raise ValueError(f"{name}: {arg}")
        return env.get(name, "")

    return _VAR.sub(repl, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def node(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]["cxr-node"]


@pytest.fixture(scope="module")
def orthanc(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]["orthanc"]


def bind_mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """container path -> (source, mode) for every short-syntax volume entry."""
    out = {}
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        source, target = parts[0], parts[1]
        out[target] = (source, parts[2] if len(parts) > 2 else "rw")
    return out


# --------------------------------------------------------------------------------- structure
def test_services_and_named_volumes(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"orthanc", "cxr-node", "viewer"}
    declared = set(compose["volumes"])
    assert declared == {"orthanc-db", "cxr-spool"}
    for service in compose["services"].values():
        for source, _ in bind_mounts(service).values():
            if not source.startswith((".", "/")):
                assert source in declared, f"volume {source!r} is not a declared named volume"


def test_node_publishes_nothing_and_sits_on_the_internal_network(compose: dict[str, Any], node: dict[str, Any]) -> None:
    assert "ports" not in node and "expose" not in node
    assert node.get("network_mode") is None
    assert list(node["networks"]) == ["backend"]
    assert compose["networks"]["backend"]["internal"] is True
    assert node["environment"]["CXR_NODE_HTTP_BIND"] == "127.0.0.1"


def test_orthanc_publishes_only_http_and_dicom(orthanc: dict[str, Any]) -> None:
    container_ports = sorted(int(p.rsplit(":", 1)[1]) for p in orthanc["ports"])
    cfg = load_shipped_config()
    assert container_ports == sorted([cfg["HttpPort"], cfg["DicomPort"]])
    http = next(p for p in orthanc["ports"] if p.endswith(f":{cfg['HttpPort']}"))
    assert interpolate(http, {}).startswith("127.0.0.1:"), "Orthanc HTTP must default to loopback"
    assert set(orthanc["networks"]) == {"frontend", "backend"}


def test_gpu_reservation() -> None:
    node = load(ROOT / "deploy" / "compose.gpu.yml")["services"]["cxr-node"]
    (device,) = node["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]


def test_node_service_settings(node: dict[str, Any]) -> None:
    env = node["environment"]
    assert node["restart"] == "unless-stopped"
    assert "/readyz" in node["healthcheck"]["test"]
    assert node["read_only"] is True and "ALL" in node["cap_drop"]
    assert bind_mounts(node)[SPOOL] == ("cxr-spool", "rw")
    assert env["CXR_NODE_SPOOL_DIR"] == SPOOL
    assert env["CXR_NODE_BIND"] == "0.0.0.0"
    fields = set(NodeSettings.model_fields)
    known = {}
    for key, value in env.items():
        assert key.startswith("CXR_NODE_"), key
        name = key[len("CXR_NODE_"):].lower()
        assert name in fields, f"{key} is not a NodeSettings field"
        known[name] = interpolate(str(value), {})
    settings = NodeSettings.model_validate(known)  # the defaults of the compose file are valid settings
    assert settings.allowed_peers, "the calling-AE allow-list, bound to Orthanc's host, must be on"


def test_node_and_orthanc_agree_with_the_shipped_orthanc_config(node: dict[str, Any], orthanc: dict[str, Any]) -> None:
    cfg = load_shipped_config()
    env = node["environment"]
    modality = cfg["DicomModalities"][cfg["CxrAiNode"]["NodeModality"]]
    # Orthanc -> node
    # Orthanc checks the node's address (DicomCheckModalityHost): the node's fixed IP on the backend network
    assert cfg["DicomCheckModalityHost"] is True
    node_ip = interpolate(orthanc["environment"][modality["Host"].strip("${}")], {})
    assert node_ip == interpolate(node["networks"]["backend"]["ipv4_address"], {}) == "172.29.113.10"
    assert env["CXR_NODE_AE_TITLE"] == modality["AET"]
    assert int(env["CXR_NODE_PORT"]) == modality["Port"]
    # node accepts Orthanc's calling AE title, only it, and only from the orthanc container
    assert "CXR_NODE_ALLOWED_AETS" not in env
    assert env["CXR_NODE_ALLOWED_PEERS"].split(",") == [f"{cfg['DicomAet']}@orthanc"]
    # the pushing modality's address is required
    with pytest.raises(ValueError, match="CXR_MODALITY_HOST"):
        interpolate(orthanc["environment"]["CXR_MODALITY_HOST"], {})
    # node -> Orthanc
    (dest,) = [parse_destination(d) for d in env["CXR_NODE_DESTINATIONS"].split(",")]
    assert (dest.ae_title, dest.host, dest.port) == (cfg["DicomAet"], "orthanc", cfg["DicomPort"])
    assert cfg["DicomModalities"][cfg["CxrAiNode"]["NodeModality"]]["AllowStore"] is True


def _entrypoint() -> Any:
    """deploy/orthanc/entrypoint.py, with the config module it finds next to itself in the image."""
    import importlib.util

    import dicom_node.orthanc.config as config_module

    sys.modules.setdefault("cxr_orthanc_config", config_module)
    spec = importlib.util.spec_from_file_location("cxr_orthanc_entrypoint", ROOT / "deploy" / "orthanc" / "entrypoint.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_orthanc_image_renders_the_shipped_config(orthanc: dict[str, Any]) -> None:
    ep = _entrypoint()
    env = {"ORTHANC_USER": "u", "ORTHANC_PASSWORD": "p", "CXR_NODE_HOST": "172.29.113.10",
           "CXR_MODALITY_AET": "MODALITY", "CXR_MODALITY_HOST": "10.0.0.5"}  # fmt: skip
    cfg = ep.container_config(env)
    assert cfg["RegisteredUsers"] == {"u": "p"} and cfg["StorageDirectory"] == "/var/lib/orthanc/db"
    assert [PurePosixPath(p).name for p in cfg["Plugins"]] == ["libOrthancPython.so", "libOrthancDicomWeb.so", "libOrthancGdcm.so"]
    assert cfg["DicomModalities"]["cxr-node"]["Host"] == "172.29.113.10"
    assert cfg["CxrAiNode"] == {**load_shipped_config()["CxrAiNode"], **{k: cfg["CxrAiNode"][k] for k in cfg["CxrAiNode"]}}
    assert "DicomTlsEnabled" not in cfg
    for name in ("ORTHANC_PASSWORD", "CXR_MODALITY_HOST"):
        with pytest.raises(ep.ConfigError, match=name):
            ep.container_config({**env, name: ""})
    with pytest.raises(ep.ConfigError, match="CXR_ORTHANC_TLS_CERT"):
        ep.container_config({**env, "CXR_ORTHANC_DICOM_TLS": "true"})
    assert set(env) <= set(orthanc["environment"])


def test_password_has_no_default(orthanc: dict[str, Any]) -> None:
    for name in ("ORTHANC_PASSWORD", "ORTHANC_USER"):
        value = orthanc["environment"][name]
        m = _VAR.fullmatch(value)
        assert m and m.group(1) == name and m.group(2) == ":?", f"{name} must be required, got {value!r}"
    with pytest.raises(ValueError, match="ORTHANC_PASSWORD"):
        interpolate(orthanc["environment"]["ORTHANC_PASSWORD"], {"ORTHANC_PASSWORD": ""})
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )  # fmt: skip
    assert example["ORTHANC_PASSWORD"] == "", ".env.example must not carry a usable password"
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_orthanc_switches_nagle_off(orthanc: dict[str, Any]) -> None:
    """DCMTK in Orthanc keeps Nagle on without TCP_NODELAY=1: 49 vs 5 ms per C-STORE (BENCHMARKS.md)."""
    assert orthanc["environment"]["TCP_NODELAY"] == "1"


def test_every_variable_of_the_compose_file_is_documented() -> None:
    used = set(_VAR.findall(COMPOSE.read_text(encoding="utf-8")))
    names = {u[0] for u in used}
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    undocumented = {n for n in names if not re.search(rf"^{n}=", example, re.MULTILINE)}
    assert not undocumented, f"variables used in docker-compose.yml but not in .env.example: {sorted(undocumented)}"


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that knows Compose's ``!reset`` / ``!override`` merge tags."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: {"__reset__": True})
_ComposeLoader.add_constructor(
    "!override", lambda loader, node: {"__override__": loader.construct_object(node, deep=True)}
)


def test_cpu_override() -> None:
    override = yaml.load(CPU_OVERRIDE.read_text(encoding="utf-8"), Loader=_ComposeLoader)  # noqa: S506
    node = override["services"]["cxr-node"]
    assert set(override["services"]) == {"cxr-node"}
    assert node["build"]["args"]["VARIANT"] == "cpu"
    assert node["build"]["args"]["WHEELHOUSE"] == ".wheelhouse/cpu"
    assert node["environment"]["CXR_NODE_DEVICE"] == "cpu"
    assert "deploy" not in node, "the GPU reservation lives in deploy/compose.gpu.yml only"


# ------------------------------------------------------------------------- docker-compose config
def _compose_cmd() -> list[str] | None:
    """``docker-compose`` (v1, Debian) or ``docker compose`` (v2 plug-in), whichever is installed."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


COMPOSE_CMD = _compose_cmd()


def _run_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    cmd = COMPOSE_CMD
    assert cmd is not None
    # a clean environment: variables of the caller must not satisfy the required ones
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return subprocess.run(
        [*cmd, "--env-file", str(env_file), "-f", str(COMPOSE), "--project-directory", str(ROOT), "config"],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.skipif(COMPOSE_CMD is None, reason="docker-compose not installed")
def test_docker_compose_config_validates(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    env_file.write_text("ORTHANC_USER=radiology\nORTHANC_PASSWORD=s3cret-for-the-test\nORTHANC_HTTP_PORT=18042\n"
                        "CXR_MODALITY_HOST=192.0.2.20\n")  # fmt: skip
    proc = _run_config(env_file)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["services"]["orthanc"]["environment"]["ORTHANC_PASSWORD"] == "s3cret-for-the-test"
    ports = cfg["services"]["orthanc"]["ports"]
    published = {(str(p["host_ip"]) if isinstance(p, dict) else None, str(p["published"]) if isinstance(p, dict) else p)
                 for p in ports}  # fmt: skip
    assert ("127.0.0.1", "18042") in published or "127.0.0.1:18042:8042/tcp" in ports
    assert "ports" not in cfg["services"]["cxr-node"]
    assert cfg["services"]["cxr-node"]["build"]["args"]["VARIANT"] == "cuda"


@pytest.mark.skipif(COMPOSE_CMD is None, reason="docker-compose not installed")
def test_docker_compose_refuses_to_start_without_password(tmp_path: Path) -> None:
    proc = _run_config(ENV_EXAMPLE)  # as shipped: empty password
    assert proc.returncode != 0
    assert "set ORTHANC_PASSWORD in .env" in proc.stderr
    env_file = tmp_path / "nopass.env"
    env_file.write_text("ORTHANC_USER=radiology\n")
    proc = _run_config(env_file)
    assert proc.returncode != 0 and "ORTHANC_PASSWORD" in proc.stderr
