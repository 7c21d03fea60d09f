"""TLS for DICOM associations: ``ssl.SSLContext`` builders for the SCP and the SCU.

pynetdicom takes the contexts as they are:

* SCP: ``ae.start_server((host, port), ssl_context=server_context(cert, key, ca))``;
* SCU: ``ae.associate(host, port, ae_title=..., tls_args=(client_context(ca, cert, key), host))``
  (the second item is the server name checked against the peer certificate; see :func:`scu_tls_args`).

Both contexts require TLS 1.2 or later and keep Python's default (secure) cipher suites, which
overlap dcmtk's default "BCP 195" profile. The SCP context requires and verifies a client
certificate issued by ``ca`` by default (mutual TLS, DICOM PS3.15 B.1 "Basic TLS Secure Transport
Connection Profile"). Certificates and keys are PEM files; a key file readable by group or
others is refused unless ``allow_insecure_key_permissions`` (so that a mis-deployed key is noticed).
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class TlsConfigError(ValueError):
    """A certificate, key or CA file is missing, unreadable, insecure or does not match."""


def _existing_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise TlsConfigError(f"{what} file not found: {str(p)!r}")
    if not os.access(p, os.R_OK):
        owner = p.stat().st_uid
        raise TlsConfigError(
            f"{what} file {str(p)!r} is not readable by this process (uid {os.getuid()}, file owner uid "
            f"{owner}, mode {stat.S_IMODE(p.stat().st_mode):04o}); give it to uid {os.getuid()}"
        )
    return p


def check_key_permissions(key: PathLike) -> None:
    """Raise :class:`TlsConfigError` if the private key file is readable/writable by group or others."""
    p = _existing_file(key, "TLS private key")
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TlsConfigError(
            f"TLS private key {str(p)!r} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
            "run chmod 600 on it"
        )


def _load_chain(ctx: ssl.SSLContext, cert: PathLike, key: PathLike, allow_insecure: bool) -> None:
    cert_p = _existing_file(cert, "TLS certificate")
    key_p = _existing_file(key, "TLS private key")
    if not allow_insecure:
        check_key_permissions(key_p)
    try:
        ctx.load_cert_chain(certfile=str(cert_p), keyfile=str(key_p))
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"cannot load TLS certificate {str(cert_p)!r} with key {str(key_p)!r}: {exc.reason or exc}"
        ) from None


def _load_ca(ctx: ssl.SSLContext, ca: PathLike) -> None:
    ca_p = Path(ca)
    try:
        if ca_p.is_dir():
            ctx.load_verify_locations(capath=str(ca_p))
        else:
            ctx.load_verify_locations(cafile=str(_existing_file(ca_p, "TLS CA certificate")))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"cannot load CA certificates from {str(ca_p)!r}: {exc.reason or exc}") from None


def server_context(
    cert: PathLike,
    key: PathLike,
    ca: PathLike | None,
    require_client_cert: bool = True,
    *,
    allow_insecure_key_permissions: bool = False,
) -> ssl.SSLContext:
    """Context for the node's SCP: presents ``cert``/``key``; verifies client certificates against ``ca``.

    With ``require_client_cert`` (default) a client without a certificate issued by ``ca`` is refused
    during the handshake. Without it, a client certificate is verified only if one is sent
    (``ca`` may then be ``None``: no client certificates are asked for).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    _load_chain(ctx, cert, key, allow_insecure_key_permissions)
    if ca is not None:
        _load_ca(ctx, ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise TlsConfigError("require_client_cert needs a CA file to verify client certificates, got ca=None")
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(
    ca: PathLike,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    *,
    check_hostname: bool = True,
    allow_insecure_key_permissions: bool = False,
) -> ssl.SSLContext:
    """Context for the node's SCU: verifies the server certificate against ``ca``; presents
    ``cert``/``key`` as client certificate when given (both or neither).

    With ``check_hostname`` (default) the server certificate must name the host passed as the second
    item of pynetdicom's ``tls_args`` (DNS name or IP address in its subjectAltName).
    """
    if (cert is None) != (key is None):
        raise TlsConfigError(f"client certificate and key go together, got cert={cert!r}, key={key!r}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    _load_ca(ctx, ca)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key, allow_insecure_key_permissions)
    return ctx


def scu_tls_args(ctx: ssl.SSLContext, server_hostname: str) -> tuple[ssl.SSLContext, str]:
    """pynetdicom's ``tls_args`` for ``AE.associate``: the context and the destination host (sent as SNI,
    and checked against the server certificate when ``ctx.check_hostname`` is on)."""
    if not isinstance(server_hostname, str) or not server_hostname.strip():
        raise TlsConfigError(f"server_hostname must be the destination host, got {server_hostname!r}")
    return ctx, server_hostname.strip()
