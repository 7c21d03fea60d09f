"""DICOM TLS on both hops with one switch on each side: Orthanc (``OrthancDeployment.dicom_tls``: a
TLS-only DICOM port, the node called with ``UseDicomTls``) and the node (``CXR_NODE_TLS=true``: TLS-only
SCP with client certificates, deliveries over TLS). A CXR uploaded to Orthanc is forwarded to the
node over TLS and its SR + SC come back over TLS; a plain (non-TLS) C-ECHO is refused by both."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from integration_helpers import NodeProcess, make_image

from dicom_node.orthanc.config import DicomTls
from dicom_node.testing.local_orthanc import LocalOrthanc, echoscu, free_port, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tls_certs import _leaf, have_openssl, make_pki  # noqa: E402

pytestmark = pytest.mark.integration

BOTH = ["keyUsage=critical,digitalSignature,keyEncipherment", "extendedKeyUsage=serverAuth,clientAuth",
        "subjectAltName=DNS:localhost,IP:127.0.0.1"]  # fmt: skip


def test_tls_on_both_hops(binaries: None, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not have_openssl():
        pytest.skip("openssl CLI not on PATH")
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from dicom_node.transport.tls import client_context, scu_tls_args

    pki = make_pki(tmp_path / "pki")
    orthanc_crt, orthanc_key = _leaf(pki.folder, "orthanc", "ORTHANC", (pki.ca_crt, pki.ca_key), BOTH)
    node_crt, node_key = _leaf(pki.folder, "node", "AINODE", (pki.ca_crt, pki.ca_key), BOTH)
    tls_args = scu_tls_args(client_context(pki.ca_crt, orthanc_crt, orthanc_key), "127.0.0.1")

    def tls_echo(port: int, calling: str, called: str) -> bool:
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
        ok = assoc.is_established and int(assoc.send_c_echo().get("Status", -1)) == 0
        if assoc.is_established:
            assoc.release()
        return ok

    orthanc = LocalOrthanc(workdir=tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port(),
                           node_port=free_port(), dicom_tls=DicomTls(orthanc_crt, orthanc_key, pki.ca_crt))  # fmt: skip
    node = NodeProcess(workdir=tmp_path / "node", port=orthanc.node_port, orthanc_dicom_port=orthanc.dicom_port,
                       env_overrides={"CXR_NODE_TLS": "true", "CXR_NODE_TLS_CERT_FILE": str(node_crt),
                                      "CXR_NODE_TLS_KEY_FILE": str(node_key), "CXR_NODE_TLS_CA_FILE": str(pki.ca_crt)},
                       ready_check=lambda: tls_echo(orthanc.node_port, "ORTHANC", "AINODE"))  # fmt: skip
    try:
        orthanc.start()
        node.start()
        assert not echoscu(orthanc.node_port, calling_aet="ORTHANC"), "the node answered plain DICOM"
        assert not echoscu(orthanc.dicom_port, calling_aet="AINODE", called_aet="ORTHANC"), "Orthanc answered plain DICOM"
        assert tls_echo(orthanc.dicom_port, "AINODE", "ORTHANC")
        cxr = make_image("CR", seed=51)
        import io

        buf = io.BytesIO()
        cxr.save_as(buf, enforce_file_format=True)
        orthanc.upload(buf.getvalue())
        study = str(cxr.StudyInstanceUID)
        wait_until(lambda: len(orthanc.find_sr_in_study(study)) == 1 and len(orthanc.study_instances(study)) == 3, 180,
                   what="the SR and the SC back in Orthanc over TLS")  # fmt: skip
    finally:
        node.stop()
        orthanc.stop()
    tls_lines = [r for r in node.log_records() if r.get("event") == "listening"]
    assert tls_lines and tls_lines[-1]["tls"] is True
