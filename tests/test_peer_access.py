"""The SCP's allow-list: AE titles bound to hosts / networks (issue 13 point 3: AE titles alone were spoofable)."""

from __future__ import annotations

import pytest

from dicom_node.scp.peer_access import PeerPolicy, is_loopback_bind, parse_peer
from dicom_node.settings import NodeSettings


def test_parse_peer_entries() -> None:
    assert str(parse_peer("ORTHANC@10.0.0.5")) == "ORTHANC@10.0.0.5/32"
    assert str(parse_peer(" CR1 @ 10.1.2.0/24")) == "CR1@10.1.2.0/24"
    assert str(parse_peer("ORTHANC@orthanc")) == "ORTHANC@orthanc"
    assert str(parse_peer("*@127.0.0.1")) == "*@127.0.0.1/32"
    assert str(parse_peer("PACS@[::1]")) == "PACS@::1/128"
    for bad in ("ORTHANC", "@10.0.0.1", "A@B@C", "ORTHANC@bad host", "ORTHANC@-x", "TOO_LONG_AE_TITLE_X@1.2.3.4"):
        with pytest.raises(ValueError):
            parse_peer(bad)


def test_bound_titles_only_from_their_networks() -> None:
    p = PeerPolicy.build(["MODALITY"], ["ORTHANC@127.0.0.1", "CR1@10.1.2.0/24", "*@192.0.2.0/24"])
    assert p.allows("ORTHANC", "127.0.0.1")
    assert not p.allows("ORTHANC", "127.0.0.2")  # the spoofing case
    assert not p.allows("ORTHANC", "192.0.2.7")  # a bound title is not freed by a wildcard rule
    assert p.allows("CR1", "10.1.2.77") and not p.allows("CR1", "10.1.3.1")
    assert p.allows("MODALITY", "203.0.113.9")  # allowed_aets: from anywhere (legacy)
    assert p.allows("ANYONE", "192.0.2.7") and not p.allows("ANYONE", "203.0.113.9")
    assert p.allows("ORTHANC", "::ffff:127.0.0.1")  # IPv4-mapped address of a dual-stack socket
    assert PeerPolicy.build([], []).allows("X", "203.0.113.9")  # no list: open


def test_host_names_are_resolved() -> None:
    p = PeerPolicy.build([], ["ORTHANC@localhost"])
    assert p.allows("ORTHANC", "127.0.0.1")
    assert not p.allows("ORTHANC", "127.0.0.2")
    assert not PeerPolicy.build([], ["ORTHANC@no-such-host.invalid"]).allows("ORTHANC", "127.0.0.1")


def test_an_scp_beyond_loopback_needs_an_allow_list() -> None:
    assert is_loopback_bind("127.0.0.1") and is_loopback_bind("::1") and is_loopback_bind("localhost")
    assert not is_loopback_bind("0.0.0.0")
    with pytest.raises(ValueError, match="no allow-list"):
        NodeSettings(bind="0.0.0.0")
    assert NodeSettings(bind="0.0.0.0", allowed_peers="ORTHANC@10.0.0.5").allowed_peers == ["ORTHANC@10.0.0.5/32"]
    assert NodeSettings(bind="0.0.0.0", allow_any_peer=True).bind == "0.0.0.0"
    with pytest.raises(ValueError, match="AET@host-or-CIDR"):
        NodeSettings(allowed_peers="ORTHANC")


def test_tls_is_one_switch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = {n: tmp_path / n for n in ("c", "k", "ca")}
    for f in files.values():
        f.write_text("x")
    s = NodeSettings(tls=True, tls_cert_file=files["c"], tls_key_file=files["k"], tls_ca_file=files["ca"])
    assert s.tls_scp and s.tls_scu
