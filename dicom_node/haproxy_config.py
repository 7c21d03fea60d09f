"""HAProxy in front of N ``cxr-node serve`` replicas (VM sites): ``haproxy.cfg`` and a start-DOWN state file.

DICOM is balanced per association: HAProxy runs in TCP mode, one TCP connection is one association,
``balance roundrobin`` picks a replica per connection. What makes it lose nothing (docs/SCALE.md):

* readiness: every replica is health-checked on its HTTP ``/readyz`` (200 only when the models are
  loaded, the SCP listens and the spool is writable), so a replica loading its models, or one whose
  spool went read-only, takes no associations;
* a cold HAProxy start must not route to replicas before the first check: HAProxy 2.6 starts every
  server UP (``init-state`` only exists from 3.1), so :func:`render_down_state` writes a
  ``server-state-file`` that starts them DOWN; a server then needs ``rise`` passing checks;
* a replica that dies is refused at connect: ``retries`` + ``option redispatch 1`` send the
  connection to another replica (the sender never sees it); an association already running on a
  dying replica aborts, and the sender (Orthanc) re-sends what it has no C-STORE success for;
* ``maxconn`` per server = the node's ``max_associations``: beyond it HAProxy queues the connection
  (``timeout queue``) instead of the node refusing it.

``python -m dicom_node.haproxy_config --replica node-0=10.0.0.11:11112:8080 ... --out-dir DIR`` writes
``DIR/haproxy.cfg`` and ``DIR/cxr-nodes-down.state`` (deploy/haproxy/ holds a rendered example).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BACKEND = "cxr_nodes"
FRONTEND = "dicom"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,252})$")
#: columns of HAProxy's server-state file, version 1 (``show servers state`` of HAProxy 2.6)
STATE_COLUMNS = (
    "be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
    "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
    "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl "
    "srv_check_port srv_check_addr srv_agent_addr srv_agent_port"
)


def _port(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"{what} must be a port 1-65535, got {value!r}")
    return value


@dataclass(frozen=True)
class Replica:
    """One ``cxr-node serve``: its name in HAProxy, host, DICOM port and HTTP (``/readyz``) port."""

    name: str
    host: str
    dicom_port: int
    http_port: int

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"replica name must be 1-63 of [A-Za-z0-9_.-], got {self.name!r}")
        if not _HOST_RE.match(self.host):
            raise ValueError(f"replica host must be an address or host name, got {self.host!r}")
        _port(self.dicom_port, f"DICOM port of replica {self.name!r}")
        _port(self.http_port, f"HTTP port of replica {self.name!r}")

    @classmethod
    def parse(cls, text: str) -> Replica:
        """``name=host:dicom_port:http_port`` (e.g. ``node-0=10.0.0.11:11112:8080``)."""
        name, sep, rest = text.partition("=")
        parts = rest.rsplit(":", 2)
        if not sep or len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
            raise ValueError(f"replica must be name=host:dicom_port:http_port, got {text!r}")
        return cls(name, parts[0], int(parts[1]), int(parts[2]))


@dataclass(frozen=True)
class Balancer:
    """HAProxy's settings for the replicas. Durations in milliseconds (HAProxy's unit)."""

    bind: str
    replicas: tuple[Replica, ...]
    state_file: Path
    stats_socket: Path | None = None
    #: ``log`` target of the global section (``/dev/log`` on a VM; ``stdout`` under a supervisor)
    log_target: str = "/dev/log"
    check_interval_ms: int = 1000
    fall: int = 2
    rise: int = 2
    retries: int = 3
    connect_timeout_ms: int = 3000
    #: an idle association is closed after this (keep it above the node's and Orthanc's idle timeouts)
    idle_timeout_ms: int = 600_000
    queue_timeout_ms: int = 60_000
    #: per replica: the node's ``max_associations`` (HAProxy queues beyond it)
    maxconn_per_replica: int = 10

    def __post_init__(self) -> None:
        if not re.match(r"^[^\s:]*:\d{1,5}$", self.bind):
            raise ValueError(f"bind must be address:port (address may be empty or *), got {self.bind!r}")
        if not self.replicas:
            raise ValueError("a balancer needs at least one replica, got none")
        names = [r.name for r in self.replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique, got {names!r}")
        for field_name in ("check_interval_ms", "fall", "rise", "connect_timeout_ms", "idle_timeout_ms",
                           "queue_timeout_ms", "maxconn_per_replica"):  # fmt: skip
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field_name} must be a positive integer, got {value!r}")
        if not isinstance(self.retries, int) or self.retries < 1:
            raise ValueError(f"retries must be >= 1 (redispatch needs a retry), got {self.retries!r}")
        if not self.log_target or any(c.isspace() for c in self.log_target):
            raise ValueError(f"log target must be one word (/dev/log, stdout, host:port), got {self.log_target!r}")


def render_config(b: Balancer) -> str:
    """The ``haproxy.cfg`` text for ``b`` (HAProxy 2.6 syntax)."""
    stats = f"    stats socket {b.stats_socket} mode 600 level admin\n" if b.stats_socket else ""
    servers = "".join(
        f"    server {r.name} {r.host}:{r.dicom_port} check port {r.http_port}\n" for r in b.replicas
    )
    return (
        "# cxr-ai-node: DICOM associations balanced over the node's replicas (docs/SCALE.md).\n"
        "# Rendered by `python -m dicom_node.haproxy_config`; HAProxy 2.6 (Debian 12).\n"
        "global\n"
        f"    log {b.log_target} local0 info\n"
        f"{stats}"
        "    # servers start DOWN (HAProxy 2.6 has no init-state): they take associations only after\n"
        "    # `rise` passing /readyz checks\n"
        f"    server-state-file {b.state_file}\n"
        "\n"
        "defaults\n"
        "    mode tcp\n"
        "    log global\n"
        "    option tcplog\n"
        "    option dontlognull\n"
        "    load-server-state-from-file global\n"
        f"    timeout connect {b.connect_timeout_ms}ms\n"
        f"    timeout client {b.idle_timeout_ms}ms\n"
        f"    timeout server {b.idle_timeout_ms}ms\n"
        f"    timeout queue {b.queue_timeout_ms}ms\n"
        f"    timeout check {b.connect_timeout_ms}ms\n"
        "    # a replica refusing or timing out at connect: try again, on another replica each time\n"
        f"    retries {b.retries}\n"
        "    option redispatch 1\n"
        "\n"
        f"frontend {FRONTEND}\n"
        f"    bind {b.bind}\n"
        f"    default_backend {BACKEND}\n"
        "\n"
        f"backend {BACKEND}\n"
        "    # one TCP connection = one DICOM association\n"
        "    balance roundrobin\n"
        "    # ready = models loaded, SCP listening, spool writable (the node's /readyz)\n"
        "    option httpchk GET /readyz\n"
        "    http-check expect status 200\n"
        f"    default-server inter {b.check_interval_ms}ms fall {b.fall} rise {b.rise} "
        f"maxconn {b.maxconn_per_replica}\n"
        f"{servers}"
    )


def render_down_state(b: Balancer) -> str:
    """A server-state file (version 1) in which every replica starts DOWN with no passing check.

    HAProxy applies a line by backend and server name; the address and ports must be the
    configured ones (a port in this file overrides the configuration's)."""
    lines = ["1", f"# {STATE_COLUMNS}"]
    for r in b.replicas:
        # op_state 0 = stopped, admin 0, weights 1/1, check status 1 (none) result 0, health 0,
        # check state 6 (configured + enabled), agent 0, no forced ids, no fqdn/srvrecord/ssl
        lines.append(
            f"0 {BACKEND} 0 {r.name} - 0 0 1 1 0 1 0 0 6 0 0 0 - {r.dicom_port} - 0 {r.http_port} - - 0"
        )
    return "\n".join(lines) + "\n"


def write_files(b: Balancer, out_dir: Path) -> tuple[Path, Path]:
    """Write ``haproxy.cfg`` and the state file named by ``b.state_file`` (its file name) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = out_dir / "haproxy.cfg"
    state = out_dir / b.state_file.name
    cfg.write_text(render_config(b), encoding="utf-8")
    state.write_text(render_down_state(b), encoding="utf-8")
    return cfg, state


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: render the two files for a site."""
    p = argparse.ArgumentParser(prog="python -m dicom_node.haproxy_config", description=__doc__.splitlines()[0])
    p.add_argument("--replica", action="append", required=True, type=Replica.parse,
                   help="name=host:dicom_port:http_port (repeat per replica)")  # fmt: skip
    p.add_argument("--bind", default="*:11112", help="where HAProxy accepts associations (default *:11112)")
    p.add_argument("--state-file", type=Path, default=Path("/etc/haproxy/cxr-nodes-down.state"),
                   help="path HAProxy reads the start-DOWN state from (default %(default)s)")  # fmt: skip
    p.add_argument("--stats-socket", type=Path, default=Path("/run/haproxy/admin.sock"))
    p.add_argument("--maxconn-per-replica", type=int, default=10, help="the nodes' max_associations")
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        b = Balancer(bind=args.bind, replicas=tuple(args.replica), state_file=args.state_file,
                     stats_socket=args.stats_socket, maxconn_per_replica=args.maxconn_per_replica)  # fmt: skip
    except ValueError as exc:
        p.error(str(exc))
    for path in write_files(b, args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
