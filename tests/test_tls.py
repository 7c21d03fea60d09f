"""TLS contexts of ``dicom_node.transport.tls`` against real peers: a pynetdicom SCP checked with dcmtk
``echoscu +tls``, and a pynetdicom SCU talking to dcmtk ``storescp +tls``."""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification  # type: ignore[attr-defined]
from tls_certs import Pki, echoscu_tls, free_port, have_dcmtk_tls, have_openssl, make_pki, wait_for_port

from dicom_node.transport.tls import (
    TlsConfigError,
    check_key_permissions,
    client_context,
    scu_tls_args,
    server_context,
)

needs_openssl = pytest.mark.skipif(not have_openssl(), reason="openssl CLI not on PATH")
needs_dcmtk = pytest.mark.skipif(not have_dcmtk_tls(), reason="dcmtk echoscu/storescp with TLS not on PATH")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not have_openssl():
        pytest.skip("openssl CLI not on PATH")
    return make_pki(tmp_path_factory.mktemp("pki"))


# ------------------------------------------------------------------------------ unit checks
@needs_openssl
def test_server_context_settings(pki: Pki) -> None:
    ctx = server_context(pki.server_crt, pki.server_key, pki.ca_crt)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    optional = server_context(pki.server_crt, pki.server_key, pki.ca_crt, require_client_cert=False)
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    assert server_context(pki.server_crt, pki.server_key, None, False).verify_mode == ssl.CERT_NONE


@needs_openssl
def test_client_context_settings(pki: Pki) -> None:
    ctx = client_context(pki.ca_crt, pki.client_crt, pki.client_key)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert scu_tls_args(ctx, "localhost") == (ctx, "localhost")
    with pytest.raises(TlsConfigError, match="server_hostname"):
        scu_tls_args(ctx, "")
    loose = client_context(pki.ca_crt, check_hostname=False)
    assert scu_tls_args(loose, "10.0.0.1") == (loose, "10.0.0.1")


@needs_openssl
def test_configuration_errors_name_the_file(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(TlsConfigError, match="nope.crt"):
        server_context(missing, pki.server_key, pki.ca_crt)
    with pytest.raises(TlsConfigError, match="needs a CA"):
        server_context(pki.server_crt, pki.server_key, None)
    with pytest.raises(TlsConfigError, match="go together"):
        client_context(pki.ca_crt, cert=pki.client_crt)
    with pytest.raises(TlsConfigError, match="cannot load TLS certificate"):  # key of another certificate
        server_context(pki.server_crt, pki.client_key, pki.ca_crt)
    with pytest.raises(TlsConfigError, match="cannot load CA"):
        client_context(pki.server_key)  # a key is not a CA certificate


@needs_openssl
def test_world_readable_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    loose_key = tmp_path / "loose.key"
    loose_key.write_bytes(pki.server_key.read_bytes())
    loose_key.chmod(0o644)
    with pytest.raises(TlsConfigError, match="0644"):
        check_key_permissions(loose_key)
    with pytest.raises(TlsConfigError, match="chmod 600"):
        server_context(pki.server_crt, loose_key, pki.ca_crt)
    ctx = server_context(pki.server_crt, loose_key, pki.ca_crt, allow_insecure_key_permissions=True)
    assert isinstance(ctx, ssl.SSLContext)


@needs_openssl
def test_unreadable_key_is_a_config_error_naming_file_and_uids(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key the node's uid cannot read (mounted into the container owned by another uid) is a
    TlsConfigError naming the file and both uids; it was a bare PermissionError traceback before.
    The tests run as root, who reads every file, so ``os.access`` answers as an unprivileged uid would."""
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(pki.server_key) else real_access(p, mode)
    )
    with pytest.raises(TlsConfigError) as err:
        server_context(pki.server_crt, pki.server_key, pki.ca_crt)
    message = str(err.value)
    assert f"{str(pki.server_key)!r} is not readable by this process (uid {os.getuid()}" in message
    assert f"file owner uid {pki.server_key.stat().st_uid}" in message


# ------------------------------------------------------------------ pynetdicom SCP + echoscu
def _start_scp(ctx: ssl.SSLContext) -> tuple[AE, object, int]:
    ae = AE(ae_title="AINODE")
    ae.add_supported_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, ssl_context=ctx, evt_handlers=[(evt.EVT_C_ECHO, lambda event: 0x0000)]
    )
    return ae, server, port


@pytest.fixture()
def tls_scp(pki: Pki) -> Iterator[int]:
    """A minimal pynetdicom Verification SCP on 127.0.0.1 using ``server_context`` (mutual TLS)."""
    ae, server, port = _start_scp(server_context(pki.server_crt, pki.server_key, pki.ca_crt))
    try:
        yield port
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        ae.shutdown()


@pytest.mark.integration
@needs_dcmtk
def test_echoscu_with_client_certificate_succeeds(pki: Pki, tls_scp: int) -> None:
    proc = echoscu_tls(tls_scp, ca=pki.ca_crt, key=pki.client_key, cert=pki.client_crt)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.integration
@needs_dcmtk
def test_echoscu_without_client_certificate_is_refused(pki: Pki, tls_scp: int) -> None:
    proc = echoscu_tls(tls_scp, ca=pki.ca_crt)  # anonymous TLS: no client certificate
    assert proc.returncode != 0, proc.stdout + proc.stderr


@pytest.mark.integration
@needs_dcmtk
def test_anonymous_tls_accepted_only_when_client_certificates_are_optional(pki: Pki) -> None:
    """Control for the refusal above: the same echoscu call succeeds when the SCP does not require a certificate."""
    ae, server, port = _start_scp(server_context(pki.server_crt, pki.server_key, pki.ca_crt, require_client_cert=False))
    try:
        proc = echoscu_tls(port, ca=pki.ca_crt)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # a certificate that is sent is still verified
        rogue = echoscu_tls(port, ca=pki.ca_crt, key=pki.rogue_client_key, cert=pki.rogue_client_crt)
        assert rogue.returncode != 0, rogue.stdout + rogue.stderr
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        ae.shutdown()


@pytest.mark.integration
@needs_dcmtk
def test_echoscu_with_certificate_from_another_ca_is_refused(pki: Pki, tls_scp: int) -> None:
    proc = echoscu_tls(tls_scp, ca=pki.ca_crt, key=pki.rogue_client_key, cert=pki.rogue_client_crt)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    # and the same peer with the right certificate still gets in (the server survived the bad handshake)
    ok = echoscu_tls(tls_scp, ca=pki.ca_crt, key=pki.client_key, cert=pki.client_crt)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.integration
@needs_dcmtk
def test_plain_tcp_echo_is_refused(tls_scp: int) -> None:
    proc = subprocess.run(["echoscu", "-to", "5", "-ta", "5", "-td", "5", "127.0.0.1", str(tls_scp)],
                          capture_output=True, text=True, timeout=40)  # fmt: skip
    assert proc.returncode != 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ pynetdicom SCU + storescp
@pytest.fixture()
def tls_storescp(pki: Pki, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk ``storescp +tls`` on 127.0.0.1 requiring a client certificate issued by the test CA."""
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(out), "+tls", str(pki.server_key), str(pki.server_crt),
         "+cf", str(pki.ca_crt), "-rc", "-ta", "10", "-td", "10", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        try:
            wait_for_port(port, proc=proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {proc.communicate(timeout=10)[1].decode(errors='replace')}") from None
        yield port, out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _sc_dataset() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(16))
    return ds


def _scu(ctx: ssl.SSLContext | None, port: int, host: str = "localhost") -> tuple[AE, object]:
    ae = AE(ae_title="AINODE")
    ae.add_requested_context(Verification)
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    tls_args = scu_tls_args(ctx, host) if ctx is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP", tls_args=tls_args)
    return ae, assoc


@pytest.mark.integration
@needs_dcmtk
def test_scu_client_context_stores_into_storescp(pki: Pki, tls_storescp: tuple[int, Path]) -> None:
    port, out = tls_storescp
    ds = _sc_dataset()
    ae, assoc = _scu(client_context(pki.ca_crt, pki.client_crt, pki.client_key), port)
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
        assert assoc.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
        assert assoc.send_c_store(ds).Status == 0x0000  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
    finally:
        ae.shutdown()
    files = list(out.iterdir())
    assert len(files) == 1 and ds.SOPInstanceUID in files[0].name


@pytest.mark.integration
@needs_dcmtk
def test_scu_without_client_certificate_is_refused_by_storescp(pki: Pki, tls_storescp: tuple[int, Path]) -> None:
    port, out = tls_storescp
    ae, assoc = _scu(client_context(pki.ca_crt), port)
    try:
        assert not assoc.is_established  # type: ignore[attr-defined]
    finally:
        ae.shutdown()
    assert list(out.iterdir()) == []


@pytest.mark.integration
@needs_dcmtk
def test_scu_refuses_server_certificate_from_untrusted_ca(pki: Pki, tls_storescp: tuple[int, Path]) -> None:
    port, out = tls_storescp
    ae, assoc = _scu(client_context(pki.rogue_ca_crt, pki.client_crt, pki.client_key), port)
    try:
        assert not assoc.is_established  # type: ignore[attr-defined]
    finally:
        ae.shutdown()
    assert list(out.iterdir()) == []


@pytest.mark.integration
@needs_dcmtk
def test_scu_checks_the_server_host_name(pki: Pki, tls_storescp: tuple[int, Path]) -> None:
    port, _ = tls_storescp
    ctx = client_context(pki.ca_crt, pki.client_crt, pki.client_key)
    ae, assoc = _scu(ctx, port, host="orthanc.example")  # not in the certificate's subjectAltName
    try:
        assert not assoc.is_established  # type: ignore[attr-defined]
    finally:
        ae.shutdown()
    ae, assoc = _scu(ctx, port, host="127.0.0.1")  # IP SAN
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
    finally:
        ae.shutdown()
