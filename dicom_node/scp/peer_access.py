"""Who may associate with the node's SCP: calling AE titles, optionally bound to hosts or networks.

An AE title alone is no credential (any client can claim ``ORTHANC``), so ``allowed_peers`` binds
titles to where they may call from: ``AET@host-or-CIDR`` entries such as ``ORTHANC@10.0.0.5``,
``ORTHANC@orthanc`` (a host name, resolved when a peer calls), ``CR1@10.1.2.0/24`` or ``*@127.0.0.1``
(any title from that address).

Rules, checked when an association is requested (``EVT_REQUESTED``):

* both ``allowed_peers`` and ``allowed_aets`` empty: anyone (only sensible on loopback; the settings
  refuse a non-loopback ``bind`` without an allow-list unless ``allow_any_peer`` is set);
* an AE title named in ``allowed_peers`` is accepted only from its hosts/networks;
* an AE title in ``allowed_aets`` (and not bound in ``allowed_peers``) is accepted from anywhere;
* ``*@net`` accepts any title from ``net`` that is not bound elsewhere;
* everything else is rejected (A-ASSOCIATE-RJ, permanent, "calling AE title not recognised").
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
#: How long a resolved host name is trusted.
RESOLVE_TTL_S = 60.0
AnyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(text: str) -> AnyNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@dataclass(frozen=True)
class PeerRule:
    """One ``AET@host-or-CIDR`` entry (``ae_title`` ``*`` = any title)."""

    ae_title: str
    network: AnyNetwork | None = None
    host: str | None = None

    def __post_init__(self) -> None:
        if (self.network is None) == (self.host is None):
            raise ValueError(f"a peer rule needs a network or a host name, got {self!r}")

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.network if self.network is not None else self.host}"


def parse_peer(text: str) -> PeerRule:
    """Parse ``AET@host-or-CIDR``; ``ValueError`` naming the entry if it is malformed."""
    from dicom_node.settings import validate_ae_title

    if not isinstance(text, str) or text.count("@") != 1:
        raise ValueError(f"allowed peer must look like AET@host-or-CIDR (e.g. ORTHANC@10.0.0.5), got {text!r}")
    aet, where = (p.strip() for p in text.split("@"))
    if aet != "*":
        aet = validate_ae_title(aet, "AE title of allowed peer")
    where = where.strip("[]")
    net = _network(where)
    if net is not None:
        return PeerRule(aet, network=net)
    if not _HOST_RE.match(where) or ".." in where:
        raise ValueError(f"allowed peer {text!r}: {where!r} is neither an IP address, a CIDR network nor a host name")
    return PeerRule(aet, host=where.lower())


@dataclass
class PeerPolicy:
    """The SCP's access decision (see the module docstring)."""

    allowed_aets: frozenset[str] = frozenset()
    peers: tuple[PeerRule, ...] = ()
    _cache: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, allowed_aets: Iterable[str], allowed_peers: Iterable[str | PeerRule]) -> PeerPolicy:
        rules = tuple(p if isinstance(p, PeerRule) else parse_peer(p) for p in allowed_peers)
        return cls(frozenset(a.strip() for a in allowed_aets), rules)

    @property
    def open(self) -> bool:
        """Anyone may associate (no allow-list at all)."""
        return not self.allowed_aets and not self.peers

    def _addresses(self, host: str) -> frozenset[str]:
        now = time.monotonic()
        hit = self._cache.get(host)
        if hit is not None and now - hit[0] < RESOLVE_TTL_S:
            return hit[1]
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            found = frozenset(str(ipaddress.ip_address(i[4][0].split("%")[0])) for i in infos)
        except (OSError, ValueError):
            found = frozenset()
        self._cache[host] = (now, found)
        return found

    def _matches(self, rule: PeerRule, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if rule.network is not None:
            return addr.version == rule.network.version and addr in rule.network
        assert rule.host is not None
        return str(addr) in self._addresses(rule.host)

    def allows(self, calling_aet: str, peer_ip: str) -> bool:
        """May ``calling_aet`` associate from ``peer_ip``?"""
        if self.open:
            return True
        aet = calling_aet.strip()
        bound = [r for r in self.peers if r.ae_title == aet]
        if bound:
            return any(self._matches(r, peer_ip) for r in bound)
        if aet in self.allowed_aets:
            return True
        return any(self._matches(r, peer_ip) for r in self.peers if r.ae_title == "*")


def is_loopback_bind(bind: str) -> bool:
    """True if ``bind`` (the SCP's listen address) is a loopback address or ``localhost``."""
    if bind.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip().strip("[]")).is_loopback
    except ValueError:
        return False
