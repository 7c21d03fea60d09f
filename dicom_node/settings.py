"""Typed settings of the DICOM node (``NodeSettings``).

Sources, highest priority first: keyword arguments, environment variables
(``CXR_NODE_<NAME>``), an optional YAML file (``--config FILE`` or ``CXR_NODE_CONFIG``;
keys are the lower-case field names), then the defaults below.

List settings accept a comma-separated string (``CXR_NODE_ALLOWED_AETS=ORTHANC,MODALITY1``),
a JSON array string, or a YAML list.

``docs/CONFIGURATION.md`` is generated from this model: ``python -m dicom_node.settings``.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from dicom_node.orthanc_plugin import routing_policy

ENV_PREFIX = "CXR_NODE_"
CONFIG_ENV = "CXR_NODE_CONFIG"

#: SOP classes a frontal chest radiograph normally arrives as (the routing policy's defaults).
CR_IMAGE_STORAGE = routing_policy.CR_IMAGE_STORAGE
DX_FOR_PRESENTATION = routing_policy.DX_FOR_PRESENTATION
DX_FOR_PROCESSING = routing_policy.DX_FOR_PROCESSING
SECONDARY_CAPTURE = routing_policy.SECONDARY_CAPTURE
DEFAULT_CXR_SOP_CLASSES = routing_policy.DEFAULT_SOP_CLASSES

_AET_BAD = re.compile(r"[\\\x00-\x1f]")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DICOM_DEST_RE = re.compile(r"^(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@\[\]]+):(?P<port>[0-9]+)$")

_yaml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("cxr_node_yaml_path", default=None)


def validate_ae_title(value: str, what: str = "AE title") -> str:
    """Return ``value`` stripped if it is a valid DICOM AE title, else raise ``ValueError`` naming it."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    v = value.strip()
    if not v or len(v) > 16 or _AET_BAD.search(v):
        raise ValueError(
            f"{what} must be 1-16 characters without backslash or control characters, got {value!r}"
        )
    return v


@dataclass(frozen=True)
class Destination:
    """Where results are sent: a DICOM peer (``AET@host:port``) or an Orthanc REST URL."""

    kind: Literal["dicom", "rest"]
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("dicom", "rest"):
            raise ValueError(f"destination kind must be 'dicom' or 'rest', got {self.kind!r}")
        if self.kind == "dicom":
            validate_ae_title(self.ae_title, "destination AE title")
            if not self.host:
                raise ValueError(f"destination host is empty in {self.ae_title!r}")
            if not 1 <= self.port <= 65535:
                raise ValueError(f"destination port must be 1-65535, got {self.port!r}")
        elif not self.url.startswith(("http://", "https://")):
            raise ValueError(f"REST destination must be an http(s) URL, got {self.url!r}")

    @property
    def key(self) -> str:
        """Stable identifier stored in the journal (no secrets)."""
        return str(self)

    def __str__(self) -> str:
        if self.kind == "dicom":
            return f"{self.ae_title}@{self.host}:{self.port}"
        return self.url

    def __repr__(self) -> str:
        return f"Destination({str(self)!r})"


def parse_destination(text: str) -> Destination:
    """Parse ``AET@host:port`` or ``http(s)://[user:pass@]host:port`` into a ``Destination``."""
    if not isinstance(text, str):
        raise ValueError(f"destination must be a string, got {text!r}")
    s = text.strip()
    if s.lower().startswith(("http://", "https://")):
        parts = urlsplit(s)
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in REST destination {_mask(s)!r}: {exc}") from None
        if not parts.hostname:
            raise ValueError(f"REST destination has no host: {_mask(s)!r}")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = host + (f":{port}" if port else "")
        url = f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"
        user = unquote(parts.username) if parts.username else None
        pwd = unquote(parts.password) if parts.password else None
        return Destination(kind="rest", url=url, username=user, password=pwd)
    if "://" in s:
        raise ValueError(f"destination URL scheme must be http or https, got {_mask(s)!r}")
    m = _DICOM_DEST_RE.match(s)
    if not m:
        raise ValueError(f"destination must look like AET@host:port or http(s)://host:port, got {text!r}")
    host = m.group("host").strip("[]")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"destination port must be 1-65535, got {port!r} in {text!r}")
    try:
        aet = validate_ae_title(m.group("aet"), "destination AE title")
    except ValueError as exc:
        raise ValueError(f"{exc} (in destination {text!r})") from None
    return Destination(kind="dicom", ae_title=aet, host=host, port=port)


def _mask(url: str) -> str:
    from dicom_node.redact import redact_secrets

    return redact_secrets(url)


def _split_list(value: Any) -> Any:
    """Comma-separated string (or JSON array string) -> list; lists pass through."""
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                loaded = json.loads(s)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list: {value!r} ({exc})") from None
            return loaded
        return [item.strip() for item in s.split(",") if item.strip()]
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return value


CommaList = Annotated[list[str], NoDecode]


class NodeSettings(BaseSettings):
    """Every setting of the node. Env: ``CXR_NODE_<FIELD>``; YAML: ``<field>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    # --- DICOM receive (SCP) ---
    ae_title: str = Field("AINODE", description="AE title of the node (SCP and SCU calling AE)")
    bind: str = Field("127.0.0.1", description="address the SCP listens on (0.0.0.0 for all interfaces)")
    port: int = Field(11112, ge=0, le=65535, description="TCP port of the SCP (0 = pick a free port)")
    max_associations: int = Field(10, ge=1, le=1000, description="maximum simultaneous associations")
    allowed_aets: CommaList = Field(
        default_factory=list,
        description="calling AE titles allowed to associate from any host (spoofable: prefer allowed_peers); "
        "empty = any",
    )
    allowed_peers: CommaList = Field(
        default_factory=list,
        description="calling AE titles bound to where they may call from: AET@host-or-CIDR (ORTHANC@10.0.0.5, "
        "ORTHANC@orthanc, CR1@10.1.2.0/24, *@127.0.0.1); a title listed here is refused from anywhere else",
    )
    allow_any_peer: bool = Field(
        False,
        description="let any AE title from any host associate although bind is not a loopback address "
        "(without it, such a bind needs allowed_peers or allowed_aets)",
    )
    association_request_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="how long a new connection may take to send its A-ASSOCIATE request (idle sockets are closed "
        "after it and never count against max_associations)",
    )
    idle_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="an association that sends nothing for this long is aborted"
    )
    tls_handshake_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="with tls_scp: how long a client may take to complete the TLS handshake (done in the "
        "association's thread: a stalled client never blocks the others)",
    )
    disk_reserve_mb: float = Field(
        200.0, ge=0, description="C-STORE answers 0xA700 when the spool's free space would drop below this"
    )
    max_instance_mb: int = Field(
        256,
        ge=1,
        le=65536,
        description="largest data set the SCP stores: beyond it the partial file is deleted while the rest is "
        "received and discarded, and C-STORE answers 0xA700 with an Error Comment (with chunked_receive off, "
        "checked after the data set was assembled in memory)",
    )
    max_inflated_mb: int = Field(
        256,
        ge=1,
        le=65536,
        description="largest size a Deflated Explicit VR Little Endian data set may inflate to; beyond it C-STORE answers 0xC000 (deflate bomb)",
    )

    # --- storage ---
    spool_dir: Path = Field(
        Path("spool"), description="folder for received instances, results and the journal"
    )
    keep_skipped: bool = Field(False, description="keep spool files of instances that are not analysed")
    keep_delivered: bool = Field(False, description="keep spool files after all results were delivered")
    retention_hours: float = Field(
        168.0,
        ge=0,
        description="finished jobs (delivered, skipped, failed) are purged this long after their last change: "
        "received instance, results, journal rows (0 = never); also `cxr-node purge`",
    )
    purge_interval_s: float = Field(3600.0, gt=0, description="how often the running node purges")
    scp_max_pdu: int = Field(
        131072,
        ge=4096,
        le=4 * 2**20,
        description="largest PDU the SCP accepts, in bytes (advertised to senders, which then send PDUs of up "
        "to this size; fewer, larger PDUs cost less CPU per received MB; 131072 is the most dcmtk and Orthanc use)",
    )
    chunked_receive: bool = Field(
        True,
        description="write each C-STORE data set straight into its spool file as it arrives (needs the pinned "
        "pynetdicom: the SCP refuses to start on another; false: assemble it in memory first, any pynetdicom 3)",
    )

    # --- routing ---
    route_modalities: CommaList = Field(
        default_factory=lambda: ["CR", "DX"], description="Modality values that are analysed"
    )
    route_secondary_capture_modalities: CommaList = Field(
        default_factory=lambda: ["SC", "OT"],
        description="Modality values of secondary captures that are analysed when BodyPartExamined says chest",
    )
    route_sop_classes: CommaList = Field(
        default_factory=lambda: list(DEFAULT_CXR_SOP_CLASSES),
        description="SOP Class UIDs that are analysed (CR, DX presentation/processing, SC)",
    )
    route_body_parts: CommaList = Field(
        default_factory=lambda: ["CHEST", "THORAX"],
        description="BodyPartExamined values that are analysed, besides any containing CHEST, THORA, LUNG, "
        "TORAX, TORACE, POUMON or BRUST (docs/ROUTING.md)",
    )
    route_allow_empty_body_part: bool = Field(True, description="analyse instances without BodyPartExamined")
    route_view_positions: CommaList = Field(
        default_factory=lambda: ["PA", "AP"], description="ViewPosition values that are analysed"
    )
    route_allow_empty_view_position: bool = Field(
        True, description="analyse instances without ViewPosition (unless the header shows a lateral view)"
    )

    # --- inference ---
    bundles_dir: Path = Field(Path("monai_bundles"), description="folder holding the MONAI bundles")
    device: str = Field("auto", description="inference device: auto, cpu, cuda or cuda:N")
    batch_size: int = Field(8, ge=1, le=256, description="maximum inference batch size")
    max_wait_ms: float = Field(20.0, ge=0, description="how long a busy engine waits to fill a batch (a lone image never waits)")
    decode_workers: int = Field(2, ge=1, le=64, description="threads decoding DICOM pixel data")
    memory_keep_mib: int = Field(
        256,
        ge=0,
        le=2047,
        description="freed memory each glibc heap and Pillow's block cache keep for the next images instead of "
        "returning it to the kernel (fresh image buffers cost a page fault per 4 KiB page); 0: the "
        "allocators' defaults (dicom_node/memory_reuse.py)",
    )
    result_workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="processes building and encoding the SR and SC (unset: min(2, CPU cores))",
    )
    threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="image-level decision threshold on P(finding) (unset: the classification bundle's "
        "decision_threshold, chosen on validation data)",
    )
    detection_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="lowest detector score reported as a box (unset: the detection bundle's score_threshold)",
    )
    box_gating: Literal["positive-only", "all"] = Field(
        "positive-only",
        description="positive-only: boxes only on images decided positive (image and boxes never disagree); "
        "all: every box scoring at least the detection threshold",
    )
    heatmaps: bool = Field(
        True, description="Grad-CAM heatmap of the classifier on positive images, drawn in the SC overlay"
    )
    sc_transfer_syntax: Literal["jpeg-baseline", "explicit-vr-little-endian"] = Field(
        "jpeg-baseline",
        description="how the SC overlay is stored and sent: jpeg-baseline (1.2.840.10008.1.2.4.50, lossy, "
        "YBR_FULL_422, ~12x smaller) or explicit-vr-little-endian (uncompressed RGB)",
    )
    sc_jpeg_quality: int = Field(
        90, ge=50, le=100, description="JPEG quality of the SC overlay (libjpeg scale; jpeg-baseline only)"
    )
    analysis_max_attempts: int = Field(
        3, ge=1, description="attempts for an instance whose analysis fails unexpectedly"
    )

    # --- delivery (SCU / REST) ---
    destinations: Annotated[list[Destination], NoDecode] = Field(
        default_factory=list,
        description="where results go: AET@host:port or http(s)://user:pass@host:port (Orthanc REST)",
    )
    delivery_batch_size: int = Field(16, ge=1, le=1000, description="instances sent per association")
    delivery_idle_release_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="keep a destination's association open this long after a batch so the next results "
        "reuse it (0 = one association per batch); keep it below the destination's idle timeout "
        "(Orthanc: DicomScpTimeout, 30 s)",
    )
    retry_base_s: float = Field(5.0, gt=0, description="first retry delay after a transient delivery failure")
    retry_max_s: float = Field(300.0, gt=0, description="maximum retry delay (exponential backoff, jittered)")
    permanent_retry_s: float = Field(
        600.0, gt=0, description="retry delay after a permanent refusal (association rejected, 0xCxxx)"
    )
    network_timeout_s: float = Field(30.0, gt=0, description="connect/ACSE/DIMSE timeout of the SCU")
    poll_interval_s: float = Field(0.5, gt=0, le=60, description="fallback poll of idle workers (new work wakes them at once; retries and backoff use it)")

    # --- health / metrics HTTP ---
    http_bind: str = Field(
        "127.0.0.1",
        description="address of the /healthz, /readyz, /metrics endpoint (keep loopback unless a scraper needs it)",
    )
    http_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description=(
            "port of the health/metrics endpoint (0 = disabled); if it is taken, start fails when the port "
            "was set explicitly, and the node runs without the endpoint (logged as error) when it was not"
        ),
    )

    # --- TLS (DICOM, PS3.15 B.1) ---
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate of the node (SCP server certificate, SCU client certificate)"
    )
    tls_key_file: Path | None = Field(
        None,
        description="PEM private key of tls_cert_file (mode 0600; refused when group/others can read it)",
    )
    tls_ca_file: Path | None = Field(
        None,
        description="PEM CA certificate(s) that issued the peers' certificates (file or c_rehash folder)",
    )
    tls: bool = Field(
        False,
        description="DICOM TLS on both hops, one switch: sets tls_scp and tls_scu (needs cert, key and CA; "
        "Orthanc's side: docs/DEPLOY.md)",
    )
    tls_scp: bool = Field(False, description="the SCP accepts TLS associations only (needs cert and key)")
    tls_require_client_cert: bool = Field(
        True, description="with tls_scp: refuse clients without a certificate issued by tls_ca_file"
    )
    tls_scu: bool = Field(
        False, description="deliver results over TLS (needs tls_ca_file to verify the peer)"
    )
    tls_check_hostname: bool = Field(
        True, description="with tls_scu: the peer certificate must name the destination host"
    )

    # --- logging ---
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["text", "json"] = Field("text", description="text or json (one JSON object per line)")
    pynetdicom_log_level: str = Field(
        "WARNING",
        description="level of pynetdicom's own logger (DEBUG dumps datasets: avoid in production); at INFO or "
        "DEBUG pynetdicom's narration of every PDU and DIMSE message is switched on, ~3 ms of CPU per "
        "association from Orthanc",
    )

    # ----------------------------------------------------------------- validators
    @field_validator(
        "allowed_aets",
        "allowed_peers",
        "route_modalities",
        "route_secondary_capture_modalities",
        "route_sop_classes",
        "route_body_parts",
        "route_view_positions",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("destinations", mode="before")
    @classmethod
    def _destinations(cls, value: Any) -> Any:
        items = _split_list(value)
        if not isinstance(items, list):
            raise ValueError(f"destinations must be a list, got {value!r}")
        return [d if isinstance(d, Destination) else parse_destination(d) for d in items]

    @field_validator("ae_title")
    @classmethod
    def _aet(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("allowed_aets")
    @classmethod
    def _aets(cls, value: list[str]) -> list[str]:
        return [validate_ae_title(v, "allowed calling AE title") for v in value]

    @field_validator("allowed_peers")
    @classmethod
    def _peers(cls, value: list[str]) -> list[str]:
        from dicom_node.scp.peer_access import parse_peer

        return [str(parse_peer(v)) for v in value]

    @field_validator("route_modalities", "route_secondary_capture_modalities", "route_body_parts",
                     "route_view_positions")  # fmt: skip
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [v.strip().upper() for v in value]

    @field_validator("route_sop_classes")
    @classmethod
    def _uids(cls, value: list[str]) -> list[str]:
        for v in value:
            if not _UID_RE.match(v) or len(v) > 64:
                raise ValueError(f"not a valid SOP Class UID: {v!r}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        v = value.strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return v

    @field_validator("log_level", "pynetdicom_log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        v = value.strip().upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
        return v

    @field_validator("http_bind")
    @classmethod
    def _http_bind(cls, value: str) -> str:
        v = value.strip()
        if not v or any(c.isspace() for c in v):
            raise ValueError(f"http_bind must be a host name or IP address, got {value!r}")
        return v

    @field_validator("tls_cert_file", "tls_key_file", "tls_ca_file", mode="before")
    @classmethod
    def _optional_path(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None  # CXR_NODE_TLS_CA_FILE= (empty) means unset
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _fmt(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _open_scp(self) -> NodeSettings:
        from dicom_node.scp.peer_access import is_loopback_bind

        if not is_loopback_bind(self.bind) and not (self.allowed_peers or self.allowed_aets or self.allow_any_peer):
            raise ValueError(
                f"bind={self.bind!r} listens beyond loopback but no allow-list is set: set allowed_peers "
                "(AET@host-or-CIDR, e.g. ORTHANC@10.0.0.5), or allowed_aets, or allow_any_peer=true"
            )
        return self

    @model_validator(mode="after")
    def _routing(self) -> NodeSettings:
        routing_policy.RoutingPolicy(  # raises ValueError naming the offending value
            modalities=frozenset(self.route_modalities),
            secondary_capture_modalities=frozenset(self.route_secondary_capture_modalities),
            sop_classes=frozenset(self.route_sop_classes),
            body_parts=frozenset(self.route_body_parts),
            view_positions=frozenset(self.route_view_positions),
        )
        return self

    @model_validator(mode="after")
    def _backoff(self) -> NodeSettings:
        if self.retry_max_s < self.retry_base_s:
            raise ValueError(
                f"retry_max_s ({self.retry_max_s!r}) must be >= retry_base_s ({self.retry_base_s!r})"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _tls_switch(cls, data: Any) -> Any:
        if isinstance(data, dict):
            on = data.get("tls")
            if isinstance(on, str):
                on = on.strip().lower() in ("1", "true", "yes", "on")
            if on is True:
                data = {**data, "tls_scp": True, "tls_scu": True}
        return data

    @model_validator(mode="after")
    def _tls(self) -> NodeSettings:
        if self.tls_scp:
            missing = [n for n in ("tls_cert_file", "tls_key_file") if getattr(self, n) is None]
            if self.tls_require_client_cert and self.tls_ca_file is None:
                missing.append("tls_ca_file (tls_require_client_cert is on)")
            if missing:
                raise ValueError(f"tls_scp=True needs {', '.join(missing)} to be set")
        if self.tls_scu and self.tls_ca_file is None:
            raise ValueError(
                "tls_scu=True needs tls_ca_file to verify the destination's certificate, got None"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "tls_cert_file and tls_key_file go together, got "
                f"tls_cert_file={self.tls_cert_file!r}, tls_key_file={self.tls_key_file!r}"
            )
        return self

    # ------------------------------------------------------------------- sources
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _yaml_path.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    # ---------------------------------------------------------------- derived
    @property
    def journal_path(self) -> Path:
        """The SQLite journal inside the spool folder."""
        return self.spool_dir / "journal.sqlite3"

    def public_dict(self) -> dict[str, Any]:
        """Settings as a JSON-friendly dict without secrets (destination passwords are never included)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "destinations":
                value = [str(d) for d in value]
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


@contextmanager
def _yaml_source(path: Path | None) -> Iterator[None]:
    token = _yaml_path.set(path)
    try:
        yield
    finally:
        _yaml_path.reset(token)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> NodeSettings:
    """Build ``NodeSettings`` from overrides > env > YAML (``config_file`` or ``$CXR_NODE_CONFIG``) > defaults.

    Raises ``FileNotFoundError`` naming the file if the YAML file does not exist, and
    ``ValueError`` if it is not a mapping.
    """
    import os

    import yaml

    path_text = config_file if config_file is not None else os.environ.get(CONFIG_ENV) or None
    path = Path(path_text) if path_text else None
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"settings file not found: {str(path)!r}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(
                f"settings file {str(path)!r} must contain a mapping, got {type(loaded).__name__}"
            )
    with _yaml_source(path):
        return NodeSettings(**overrides)


# ---------------------------------------------------------------------------- docs
def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not hasattr(annotation, "__args__") else None
    if text is None:
        text = repr(annotation)
    text = re.sub(r"<class '|'>", "", text)
    text = re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", text)
    text = re.sub(r"Annotated\[(.*), NoDecode\]", r"\1", text)
    text = text.replace("PosixPath", "Path").replace("WindowsPath", "Path")
    return text


def _default_text(name: str) -> str:
    field = NodeSettings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else "(empty)"
    if value is None:
        return "(unset)"
    return str(value)


def settings_markdown_table() -> str:
    """Markdown table of every setting (env name, YAML key, type, default, meaning)."""
    lines = [
        "| env variable | YAML key | type | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, field in NodeSettings.model_fields.items():
        env = ENV_PREFIX + name.upper()
        default = _default_text(name).replace("|", "\\|")
        type_name = _type_name(field.annotation).replace("|", "\\|")
        lines.append(f"| `{env}` | `{name}` | {type_name} | `{default}` | {field.description or ''} |")
    return "\n".join(lines) + "\n"


def configuration_markdown() -> str:
    """Full text of ``docs/CONFIGURATION.md``."""
    return (
        "# Configuration\n\n"
        "<!-- generated by `python -m dicom_node.settings > docs/CONFIGURATION.md`; do not edit by hand -->\n\n"
        "`cxr-node serve` reads its settings, highest priority first, from environment variables\n"
        f"(`{ENV_PREFIX}<NAME>`), an optional YAML file (`cxr-node serve --config FILE` or `{CONFIG_ENV}`;\n"
        "keys are the lower-case names below) and the defaults.\n\n"
        "List settings take a comma-separated string in the environment (`CXR_NODE_ALLOWED_AETS=ORTHANC,CR1`),\n"
        "or a JSON array string, or a YAML list. Destinations are `AET@host:port` (DICOM C-STORE) or\n"
        "`http(s)://user:pass@host:port` (Orthanc REST, `POST /instances`); passwords are never logged.\n\n"
        "The journal (`journal.sqlite3`), received instances (`incoming/`) and results (`outbox/`) live in\n"
        "`spool_dir`; together they are the node's state: on restart every job not yet delivered is resumed.\n\n"
        + settings_markdown_table()
    )


if __name__ == "__main__":  # pragma: no cover - doc generator
    import sys

    sys.stdout.write(configuration_markdown())
