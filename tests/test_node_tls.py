"""The running ``NodeService`` with DICOM TLS on (``tls_scp``/``tls_scu``), against real dcmtk peers on
127.0.0.1 with certificates made by ``openssl`` (``tests/tls_certs.py``):

* dcmtk ``storescu +tls`` with a client certificate from the node's CA stores into the node, the
  instance is in the journal, and the results reach dcmtk ``storescp +tls`` over TLS;
* a client without a certificate, with a certificate from another CA, or without TLS is refused
  and nothing is stored;
* broken TLS settings stop ``start()`` with an error naming the file, leaving nothing listening.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from dicom_factory import have_dcmtk
from pydantic import ValidationError
from service_helpers import FakeAnalyser, _cxr, _settings, _wait
from tls_certs import Pki, _leaf, free_port, have_dcmtk_tls, have_openssl, make_pki, wait_for_port

from dicom_node.service import NodeService
from dicom_node.settings import NodeSettings
from dicom_node.transport.tls import TlsConfigError

needs_peers = [
    pytest.mark.integration,
    pytest.mark.skipif(not have_openssl(), reason="openssl CLI not on PATH"),
    pytest.mark.skipif(
        not (have_dcmtk("storescu", "storescp") and have_dcmtk_tls()), reason="dcmtk with TLS not on PATH"
    ),
]


def integration(fn):  # type: ignore[no-untyped-def]
    """Mark a test as needing openssl and dcmtk with TLS (real peers on 127.0.0.1)."""
    for mark in needs_peers:
        fn = mark(fn)
    return fn


SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
TIMEOUT = "10"


class NodePki:
    """The test PKI plus the node's own certificate (serverAuth for its SCP, clientAuth for its SCU)."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.node_crt, self.node_key = _leaf(
            pki.folder,
            "node",
            "AINODE",
            (pki.ca_crt, pki.ca_key),
            [
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "extendedKeyUsage=serverAuth,clientAuth",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
        )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> NodePki:
    if not have_openssl():
        pytest.skip("openssl CLI not on PATH")
    return NodePki(make_pki(tmp_path_factory.mktemp("pki")))


class TlsStoreSCP:
    """dcmtk ``storescp +tls`` (server certificate for 127.0.0.1, client certificates from the test CA)."""

    def __init__(self, pki: Pki, out: Path) -> None:
        self.port = free_port()
        self.out = out
        out.mkdir()
        self.proc = subprocess.Popen(
            ["storescp", "-aet", "DEST", "-od", str(out), "+tls", str(pki.server_key), str(pki.server_crt),
             "+cf", str(pki.ca_crt), "-ta", TIMEOUT, "-td", TIMEOUT, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            wait_for_port(self.port, proc=self.proc)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}: {self.proc.communicate(timeout=10)[1].decode(errors='replace')}"
            ) from None

    @property
    def destination(self) -> str:
        return f"DEST@127.0.0.1:{self.port}"

    def files(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(f) for f in sorted(self.out.iterdir())]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture()
def tls_dest(certs: NodePki, tmp_path: Path) -> Iterator[TlsStoreSCP]:
    d = TlsStoreSCP(certs.pki, tmp_path / "destination")
    yield d
    d.stop()


def _tls_settings(tmp_path: Path, certs: NodePki, destination: str, **overrides: object) -> NodeSettings:
    dest = SimpleNamespace(destination=destination)  # what service_helpers._settings reads from its StoreSCP
    params: dict[str, object] = {
        "http_port": 0,
        "tls_scp": True,
        "tls_scu": True,
        "tls_cert_file": certs.node_crt,
        "tls_key_file": certs.node_key,
        "tls_ca_file": certs.pki.ca_crt,
    }
    params.update(overrides)
    return _settings(tmp_path, dest, **params)


def _storescu(port: int, tls: list[str], *files: Path) -> subprocess.CompletedProcess[str]:
    cmd = ["storescu", "-aet", "STORESCU", "-aec", "AINODE", "-to", TIMEOUT, "-ta", TIMEOUT, "-td", TIMEOUT,
           *tls, "127.0.0.1", str(port), *map(str, files)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _nothing_stored(svc: NodeService) -> bool:
    assert svc.journal is not None and svc.spool is not None
    return svc.journal.counts() == {} and not any(svc.spool.incoming.iterdir())


@integration
def test_storescu_over_tls_is_received_and_results_are_delivered_over_tls(
    tmp_path: Path, certs: NodePki, tls_dest: TlsStoreSCP
) -> None:
    src = _cxr(tmp_path, 1)
    uid = str(pydicom.dcmread(src).SOPInstanceUID)
    pki = certs.pki
    with NodeService(_tls_settings(tmp_path, certs, tls_dest.destination), analyser=FakeAnalyser()) as svc:
        proc = _storescu(
            svc.port, ["+tls", str(pki.client_key), str(pki.client_crt), "+cf", str(pki.ca_crt)], src
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert svc.journal is not None
        jobs = svc.journal.jobs()
        assert [j.sop_instance_uid for j in jobs] == [uid]
        assert _wait(lambda: svc.journal.counts().get("job.delivered") == 1, 30), svc.journal.counts()  # type: ignore[union-attr]
    results = tls_dest.files()
    assert sorted(str(r.SOPClassUID) for r in results) == [SC_STORAGE, SR_3D]
    assert {str(r.StudyInstanceUID) for r in results} == {str(pydicom.dcmread(src).StudyInstanceUID)}


@integration
@pytest.mark.parametrize(
    "who",
    ["no client certificate", "certificate from another CA", "no TLS at all"],
)
def test_clients_without_a_valid_certificate_are_refused(tmp_path: Path, certs: NodePki, who: str) -> None:
    pki = certs.pki
    tls = {
        "no client certificate": ["+tla", "+cf", str(pki.ca_crt)],
        "certificate from another CA": [
            "+tls",
            str(pki.rogue_client_key),
            str(pki.rogue_client_crt),
            "+cf",
            str(pki.ca_crt),
        ],  # fmt: skip
        "no TLS at all": [],
    }[who]
    src = _cxr(tmp_path, 2)
    # nothing should be delivered anyway; tls_scu off so that no CA-verified destination is needed
    settings = _tls_settings(tmp_path, certs, f"DEST@127.0.0.1:{free_port()}", tls_scu=False)
    with NodeService(settings, analyser=FakeAnalyser()) as svc:
        refused = _storescu(svc.port, tls, src)
        assert refused.returncode != 0, refused.stdout + refused.stderr
        assert _nothing_stored(svc)
        # control: the node survived the failed handshake and the right certificate gets in
        ok = _storescu(
            svc.port, ["+tls", str(pki.client_key), str(pki.client_crt), "+cf", str(pki.ca_crt)], src
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert svc.journal is not None and len(svc.journal.jobs()) == 1


@integration
def test_optional_client_certificate_accepts_anonymous_tls(tmp_path: Path, certs: NodePki) -> None:
    """``tls_require_client_cert=False``: TLS without a client certificate is accepted (and still encrypted)."""
    pki = certs.pki
    settings = _tls_settings(
        tmp_path, certs, f"DEST@127.0.0.1:{free_port()}", tls_scu=False, tls_require_client_cert=False
    )
    with NodeService(settings, analyser=FakeAnalyser()) as svc:
        proc = _storescu(svc.port, ["+tla", "+cf", str(pki.ca_crt)], _cxr(tmp_path, 3))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        plain = _storescu(svc.port, [], _cxr(tmp_path, 4))
        assert plain.returncode != 0, plain.stdout + plain.stderr
        assert svc.journal is not None and len(svc.journal.jobs()) == 1


@integration
def test_delivery_to_a_peer_with_an_untrusted_certificate_is_retried_not_sent(
    tmp_path: Path, certs: NodePki, tls_dest: TlsStoreSCP
) -> None:
    """The node trusts only the rogue CA here, so storescp's certificate fails verification: nothing is
    sent, the outbox rows stay pending with a recorded failed attempt."""
    pki = certs.pki
    settings = _tls_settings(
        tmp_path, certs, tls_dest.destination, tls_scp=False, tls_ca_file=pki.rogue_ca_crt, retry_base_s=5,
        retry_max_s=10,
    )  # fmt: skip
    with NodeService(settings, analyser=FakeAnalyser()) as svc:
        proc = _storescu(svc.port, [], _cxr(tmp_path, 5))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert svc.journal is not None
        assert _wait(lambda: svc.journal.outbox() and all(o.attempts >= 1 for o in svc.journal.outbox()), 30)  # type: ignore[union-attr]
        assert svc.journal.counts().get("outbox.delivered", 0) == 0
    assert tls_dest.files() == []


@integration
@pytest.mark.parametrize("side", ["tls_scp", "tls_scu"])
def test_bad_tls_files_fail_start_before_the_model_load(tmp_path: Path, certs: NodePki, side: str) -> None:
    """A world-readable key: ``start()`` raises naming the file, before the analyser is built, and leaves
    neither the health endpoint nor the SCP listening."""
    loose_key = tmp_path / "loose.key"
    loose_key.write_bytes(certs.node_key.read_bytes())
    loose_key.chmod(0o644)
    http_port, dicom_port = free_port(), free_port()
    settings = _tls_settings(
        tmp_path, certs, f"DEST@127.0.0.1:{free_port()}", tls_key_file=loose_key, port=dicom_port,
        http_port=http_port, tls_scp=side == "tls_scp", tls_scu=side == "tls_scu",
    )  # fmt: skip
    built: list[NodeSettings] = []
    svc = NodeService(settings, analyser_factory=lambda s: built.append(s) or FakeAnalyser())
    with pytest.raises(TlsConfigError, match="loose.key.*chmod 600"):
        svc.start()
    assert built == []
    for port in (http_port, dicom_port):
        with socket.socket() as s:
            s.settimeout(0.5)
            assert s.connect_ex(("127.0.0.1", port)) != 0, port


# ------------------------------------------------------------------ settings (no peers needed)
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CXR_NODE_TLS_SCP": "true"}, "tls_scp=True needs tls_cert_file, tls_key_file, tls_ca_file"),
        (
            {"CXR_NODE_TLS_SCP": "true", "CXR_NODE_TLS_CERT_FILE": "n.crt", "CXR_NODE_TLS_KEY_FILE": "n.key"},
            "needs tls_ca_file \\(tls_require_client_cert is on\\)",
        ),
        ({"CXR_NODE_TLS_SCU": "1"}, "tls_scu=True needs tls_ca_file"),
        ({"CXR_NODE_TLS_CERT_FILE": "n.crt"}, "tls_cert_file and tls_key_file go together.*n.crt"),
        ({"CXR_NODE_HTTP_PORT": "70000"}, "http_port"),
        ({"CXR_NODE_HTTP_BIND": "local host"}, "'local host'"),
    ],
)
def test_tls_and_http_settings_are_validated(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key in [k for k in os.environ if k.startswith("CXR_NODE_")]:
        monkeypatch.delenv(key)
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    with pytest.raises(ValidationError, match=message):
        NodeSettings()


def test_tls_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in [k for k in os.environ if k.startswith("CXR_NODE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CXR_NODE_TLS_SCP", "true")
    monkeypatch.setenv("CXR_NODE_TLS_REQUIRE_CLIENT_CERT", "false")
    monkeypatch.setenv("CXR_NODE_TLS_CERT_FILE", str(tmp_path / "n.crt"))
    monkeypatch.setenv("CXR_NODE_TLS_KEY_FILE", str(tmp_path / "n.key"))
    monkeypatch.setenv("CXR_NODE_TLS_CA_FILE", "")  # empty = unset
    s = NodeSettings()
    assert s.tls_scp and not s.tls_require_client_cert and s.tls_ca_file is None
    assert s.tls_key_file == tmp_path / "n.key" and not s.tls_scu and s.tls_check_hostname
    assert (s.http_bind, s.http_port) == ("127.0.0.1", 8080)
    assert s.public_dict()["tls_cert_file"] == str(tmp_path / "n.crt")
