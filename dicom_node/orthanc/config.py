"""Render the Orthanc configuration shipped with the node for one deployment.

``orthanc.json`` (next to this module) is the one Orthanc configuration of the project.
docker-compose mounts it as is: Orthanc 1.10 substitutes ``${VAR}`` environment variables in
**string** values only (it rejects ``"HttpPort": "${PORT}"`` with "must be an integer"), so
the file uses variables for the credentials (``ORTHANC_USER``, ``ORTHANC_PASSWORD``), the node's
host (``CXR_NODE_HOST``), the AE title and IP address of the pushing modality (``CXR_MODALITY_AET``,
``CXR_MODALITY_HOST``; Orthanc checks the caller's IP address, ``DicomCheckModalityHost``) and the
plug-in script path (``CXR_ORTHANC_PLUGIN_SCRIPT``), and fixed container ports (HTTP 8042,
DICOM 4242, node 11112).

Tests and the demo run Orthanc on loopback with free ports and temporary folders: they call
:func:`render_config` which starts from the same file and replaces what differs
(:class:`OrthancDeployment`), then :func:`write_config`.

Run ``python -m dicom_node.orthanc.config --help`` to render a file from the command line.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The shipped configuration (also used by docker-compose).
SHIPPED_CONFIG = Path(__file__).with_name("orthanc.json")
#: The routing plug-in script loaded by Orthanc's Python plug-in.
PLUGIN_SCRIPT = Path(__file__).resolve().parent.parent / "orthanc_plugin" / "cxr_router.py"
#: Debian's Orthanc Python plug-in (package ``orthanc-python``).
DEBIAN_PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
#: Debian's Orthanc DICOMweb plug-in (package ``orthanc-dicomweb``): QIDO-RS / WADO-RS for web viewers.
DEBIAN_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: URL path under which the DICOMweb plug-in answers (``DicomWeb.Root``).
DICOMWEB_ROOT = "/dicom-web/"

_AET_RE = re.compile(r"^[^\\\x00-\x1f]{1,16}$")
_ENV_RE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def _check_port(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"{name} must be a TCP port 1-65535, got {value!r}")


def _check_aet(name: str, value: str) -> None:
    if not isinstance(value, str) or not _AET_RE.match(value) or value != value.strip():
        raise ValueError(f"{name} must be a DICOM AE title (1-16 characters, no backslash), got {value!r}")


@dataclass(frozen=True)
class Modality:
    """A DICOM peer declared in Orthanc's ``DicomModalities``."""

    name: str
    ae_title: str
    host: str
    port: int
    allow_store: bool = True

    def __post_init__(self) -> None:
        if not self.name or not re.match(r"^[A-Za-z0-9_.-]+$", self.name):
            raise ValueError(f"modality name must be [A-Za-z0-9_.-]+, got {self.name!r}")
        _check_aet(f"AE title of modality {self.name!r}", self.ae_title)
        if not self.host:
            raise ValueError(f"host of modality {self.name!r} is empty")
        _check_port(f"port of modality {self.name!r}", self.port)

    def to_orthanc(self) -> dict[str, Any]:
        return {
            "AET": self.ae_title,
            "Host": self.host,
            "Port": self.port,
            "AllowEcho": True,
            "AllowStore": self.allow_store,
            "AllowFind": False,
            "AllowMove": False,
            "AllowGet": False,
        }


@dataclass(frozen=True)
class DicomTls:
    """Orthanc's half of "DICOM TLS on both hops" (the node's half is ``CXR_NODE_TLS=true``).

    ``certificate``/``private_key``: Orthanc's PEM certificate, presented both as TLS server (the
    node's deliveries) and as TLS client (forwarding to the node), so it needs serverAuth and
    clientAuth; ``trusted``: the CA certificate(s) the node's certificate is checked against. Orthanc's
    DICOM port then accepts TLS only, and the node modality is called with TLS (``UseDicomTls``).
    """

    certificate: Path
    private_key: Path
    trusted: Path

    def to_orthanc(self) -> dict[str, Any]:
        return {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(Path(self.certificate).resolve()),
            "DicomTlsPrivateKey": str(Path(self.private_key).resolve()),
            "DicomTlsTrustedCertificates": str(Path(self.trusted).resolve()),
            "DicomTlsRemoteCertificateRequired": True,
        }


@dataclass(frozen=True)
class OrthancDeployment:
    """What differs between deployments of the shipped configuration.

    ``users`` maps user name to password (HTTP basic auth; at least one). ``node`` is the AI node
    (symbolic name ``cxr-node`` unless ``node.name`` says otherwise); ``modalities`` are the peers
    allowed to C-STORE into Orthanc besides the node. ``dicomweb_plugin`` adds Orthanc's DICOMweb
    plug-in (what OHIF and other web viewers read) with full study/series metadata.
    """

    storage_dir: Path
    users: Mapping[str, str]
    node: Modality
    http_port: int = 8042
    dicom_port: int = 4242
    ae_title: str = "ORTHANC"
    modalities: Sequence[Modality] = ()
    stable_age_s: int = 10
    remote_access: bool = False
    plugin_script: Path = PLUGIN_SCRIPT
    python_plugin: Path = DEBIAN_PYTHON_PLUGIN
    auto_forward: bool = True
    #: the DICOMweb plug-in to load (None: no DICOMweb), answering under :data:`DICOMWEB_ROOT`
    dicomweb_plugin: Path | None = None
    retry_delay_s: float = 10.0
    max_retries: int = 5
    verbose: bool = False
    name: str = "cxr-orthanc"
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: the plug-in's backoff cap (``MaxRetryDelaySeconds``) and when it reports waiting studies (``AlertAfterSeconds``)
    max_retry_delay_s: float = 300.0
    alert_after_s: float = 600.0
    #: DICOM TLS on Orthanc's side (None: plain DICOM)
    dicom_tls: DicomTls | None = None

    def __post_init__(self) -> None:
        _check_port("http_port", self.http_port)
        _check_port("dicom_port", self.dicom_port)
        if self.http_port == self.dicom_port:
            raise ValueError(f"http_port and dicom_port must differ, both are {self.http_port!r}")
        _check_aet("ae_title", self.ae_title)
        if not self.users or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                     for k, v in self.users.items()):  # fmt: skip
            raise ValueError("users must map at least one non-empty user name to a non-empty password")
        if not isinstance(self.stable_age_s, int) or isinstance(self.stable_age_s, bool) or self.stable_age_s < 1:
            raise ValueError(f"stable_age_s must be an integer >= 1 (Orthanc's StableAge), got {self.stable_age_s!r}")
        names = [self.node.name] + [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be unique, got {names!r}")
        if not isinstance(self.extra, Mapping):
            raise ValueError(f"extra must be a mapping of Orthanc options, got {self.extra!r}")


def load_shipped_config(path: Path = SHIPPED_CONFIG) -> dict[str, Any]:
    """The shipped configuration as a dict (``${VAR}`` placeholders left in place)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"Orthanc configuration {str(path)!r} is not valid JSON: {exc}") from None


def render_config(deployment: OrthancDeployment, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Orthanc configuration for ``deployment``: the shipped file with every deployment value set.

    The result contains no ``${VAR}`` placeholder (checked), so it does not depend on the environment.
    """
    cfg = copy.deepcopy(dict(base) if base is not None else load_shipped_config())
    storage = str(Path(deployment.storage_dir).resolve())
    cfg.update(
        {
            "Name": deployment.name,
            "DicomAet": deployment.ae_title,
            "DicomPort": deployment.dicom_port,
            "HttpPort": deployment.http_port,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "RemoteAccessAllowed": deployment.remote_access,
            "AuthenticationEnabled": True,
            "RegisteredUsers": dict(deployment.users),
            "StableAge": deployment.stable_age_s,
            "Plugins": [str(deployment.python_plugin)],
            "PythonScript": str(Path(deployment.plugin_script).resolve()),
        }
    )
    if deployment.dicomweb_plugin is not None:
        cfg["Plugins"].append(str(deployment.dicomweb_plugin))
        cfg["DicomWeb"] = {
            "Enable": True,
            "Root": DICOMWEB_ROOT,
            "EnableWado": False,
            "Ssl": False,
            # OHIF reads the whole study's metadata in one request: answer it from the stored files
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        }
    cfg["DicomModalities"] = {deployment.node.name: deployment.node.to_orthanc()}
    if deployment.dicom_tls is not None:
        cfg.update(deployment.dicom_tls.to_orthanc())
        cfg["DicomModalities"][deployment.node.name]["UseDicomTls"] = True
    for m in deployment.modalities:
        cfg["DicomModalities"][m.name] = m.to_orthanc()
    section = dict(cfg.get("CxrAiNode") or {})
    section.update(
        {
            "NodeModality": deployment.node.name,
            "AutoForward": deployment.auto_forward,
            "RetryDelaySeconds": deployment.retry_delay_s,
            "MaxRetries": deployment.max_retries,
            "MaxRetryDelaySeconds": deployment.max_retry_delay_s,
            "AlertAfterSeconds": deployment.alert_after_s,
            "Verbose": deployment.verbose,
        }
    )
    cfg["CxrAiNode"] = section
    cfg.update(copy.deepcopy(dict(deployment.extra)))
    if cfg.get("DicomCheckModalityHost"):
        for name, m in cfg["DicomModalities"].items():
            if not _is_ip(str(m.get("Host", ""))):
                raise ValueError(
                    f"DicomCheckModalityHost is on and Orthanc compares the caller's IP address with the "
                    f"modality's Host as a string: Host of modality {name!r} must be an IP address, got {m.get('Host')!r}"
                )
    leftover = _ENV_RE.findall(json.dumps(cfg))
    if leftover:
        raise ValueError(f"rendered Orthanc configuration still has environment placeholders: {sorted(set(leftover))}")
    return cfg


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def write_config(deployment: OrthancDeployment, path: Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """Render and write the configuration to ``path`` (mode 0600: it holds passwords); returns ``path``.
    ``overrides``: top-level settings written over the rendered ones (tests: e.g. ``JobsHistorySize``)."""
    cfg = {**render_config(deployment), **(overrides or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _parse_modality(text: str) -> Modality:
    """``name=AET@host:port`` → :class:`Modality`."""
    m = re.match(r"^(?P<name>[^=]+)=(?P<aet>[^@]+)@(?P<host>[^:]+):(?P<port>[0-9]+)$", text)
    if not m:
        raise argparse.ArgumentTypeError(f"modality must look like name=AET@host:port, got {text!r}")
    return Modality(m["name"], m["aet"], m["host"], int(m["port"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a rendered configuration (used by ``scripts/demo.sh``)."""
    p = argparse.ArgumentParser(prog="python -m dicom_node.orthanc.config", description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, required=True, help="configuration file to write")
    p.add_argument("--storage-dir", type=Path, required=True)
    p.add_argument("--http-port", type=int, default=8042)
    p.add_argument("--dicom-port", type=int, default=4242)
    p.add_argument("--user", default="orthanc")
    p.add_argument("--password", required=True)
    p.add_argument("--node", type=_parse_modality, default=_parse_modality("cxr-node=AINODE@127.0.0.1:11112"),
                   help="the AI node as name=AET@host:port")  # fmt: skip
    p.add_argument("--modality", type=_parse_modality, action="append", default=[],
                   help="a peer allowed to store into Orthanc, name=AET@host:port (repeatable)")  # fmt: skip
    p.add_argument("--stable-age", type=int, default=10)
    p.add_argument("--remote-access", action="store_true", help="listen on all interfaces (default: loopback)")
    p.add_argument("--dicom-tls", nargs=3, type=Path, metavar=("CERT", "KEY", "CA"), default=None,
                   help="DICOM TLS on Orthanc's side (TLS-only DICOM port, node called with TLS); "
                        "the node's side: CXR_NODE_TLS=true")  # fmt: skip
    args = p.parse_args(argv)
    dep = OrthancDeployment(
        storage_dir=args.storage_dir,
        users={args.user: args.password},
        node=args.node,
        http_port=args.http_port,
        dicom_port=args.dicom_port,
        modalities=tuple(args.modality),
        stable_age_s=args.stable_age,
        remote_access=args.remote_access,
        dicom_tls=DicomTls(*args.dicom_tls) if args.dicom_tls else None,
    )
    write_config(dep, args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
