"""Test helpers: a throw-away PKI made with the ``openssl`` CLI, and dcmtk TLS command lines.

``make_pki(folder)`` writes (PEM, keys mode 0600):

* ``ca.crt``/``ca.key`` – the test CA;
* ``server.crt``/``server.key`` – issued by the CA for ``localhost`` and ``127.0.0.1`` (serverAuth);
* ``client.crt``/``client.key`` – issued by the CA (clientAuth);
* ``rogue-ca.crt`` and ``rogue-client.crt``/``rogue-client.key`` – a second CA and a client it issued
  (must be refused by anything that trusts only ``ca.crt``).

Reusable for the node's own TLS tests (SCP and SCU); needs ``openssl`` on PATH (``have_openssl()``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dicom_node.testing.local_orthanc import free_port  # noqa: F401  (the one copy; tests import it from here)

DAYS = "2"


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def have_dcmtk_tls() -> bool:
    """True when dcmtk's echoscu/storescp are on PATH and built with OpenSSL (``+tls`` in --help)."""
    for tool in ("echoscu", "storescp"):
        exe = shutil.which(tool)
        if exe is None:
            return False
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=20).stdout
        if "+tls" not in out:
            return False
    return True


@dataclass(frozen=True)
class Pki:
    """Paths of the files written by :func:`make_pki`."""

    folder: Path
    ca_crt: Path
    ca_key: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    rogue_ca_crt: Path
    rogue_client_crt: Path
    rogue_client_key: Path

    def __post_init__(self) -> None:
        for name in ("ca_crt", "server_crt", "server_key", "client_crt", "client_key", "rogue_ca_crt",
                     "rogue_client_crt", "rogue_client_key"):  # fmt: skip
            path = getattr(self, name)
            if not Path(path).is_file():
                raise ValueError(f"{name} was not written: {str(path)!r}")


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")


def _key(folder: Path, name: str) -> Path:
    path = folder / name
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", name, cwd=folder)
    path.chmod(0o600)
    return path


def _ca(folder: Path, stem: str, cn: str) -> tuple[Path, Path]:
    key = _key(folder, f"{stem}.key")
    crt = folder / f"{stem}.crt"
    _openssl(
        "req", "-x509", "-new", "-key", key.name, "-sha256", "-days", DAYS, "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", crt.name, cwd=folder,
    )
    return crt, key


def _leaf(folder: Path, stem: str, cn: str, ca: tuple[Path, Path], ext: list[str]) -> tuple[Path, Path]:
    key = _key(folder, f"{stem}.key")
    csr = folder / f"{stem}.csr"
    crt = folder / f"{stem}.crt"
    extfile = folder / f"{stem}.ext"
    extfile.write_text("\n".join(["basicConstraints=CA:FALSE", *ext]) + "\n", encoding="ascii")
    _openssl("req", "-new", "-key", key.name, "-subj", f"/CN={cn}", "-out", csr.name, cwd=folder)
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", ca[0].name, "-CAkey", ca[1].name, "-CAcreateserial",
        "-sha256", "-days", DAYS, "-extfile", extfile.name, "-out", crt.name, cwd=folder,
    )
    return crt, key


def make_pki(folder: Path) -> Pki:
    """Write a CA, a server and a client certificate, and a rogue CA with its own client, into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca", "cxr-ai-node test CA")
    server = _leaf(folder, "server", "localhost", ca, [
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=serverAuth",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ])  # fmt: skip
    client = _leaf(folder, "client", "ORTHANC", ca, [
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=clientAuth",
    ])  # fmt: skip
    rogue_ca = _ca(folder, "rogue-ca", "not the test CA")
    rogue = _leaf(folder, "rogue-client", "ORTHANC", rogue_ca, [
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=clientAuth",
    ])  # fmt: skip
    return Pki(folder, ca[0], ca[1], server[0], server[1], client[0], client[1], rogue_ca[0], rogue[0], rogue[1])


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait (bounded) until 127.0.0.1:``port`` accepts TCP connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def echoscu_tls(port: int, *, ca: Path | None, key: Path | None = None, cert: Path | None = None,
                timeout_s: int = 10, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run dcmtk ``echoscu`` over TLS against 127.0.0.1:``port``.

    ``key``/``cert`` given: authenticated TLS (``+tls key cert``); otherwise anonymous TLS (``+tla``).
    ``ca``: trusted CA for the server certificate (``+cf``); ``None`` skips server verification (``-ic``).
    """
    cmd = ["echoscu", "-to", str(timeout_s), "-ta", str(timeout_s), "-td", str(timeout_s)]
    cmd += ["+tls", str(key), str(cert)] if key is not None and cert is not None else ["+tla"]
    cmd += ["+cf", str(ca)] if ca is not None else ["-ic"]
    cmd += [*extra, "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s * 4 + 10)
