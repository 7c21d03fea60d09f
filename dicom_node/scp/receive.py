"""DICOM receive (SCP): C-ECHO, C-STORE for every storage SOP class, calling-AE allow-list.

C-STORE persists before it answers: the dataset is written *as received* (file meta + the
data set bytes, no decode/re-encode of pixel data) to the spool with tmp-file/fsync/atomic-rename,
then a journal row is committed, and only then does the handler return 0x0000. Out of disk
space (ENOSPC/EDQUOT or free space below the reserve) answers 0xA700; any other storage failure
0xA701; an undecodable data set 0xC000.

Chunked receive (default): pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` path writes the P-DATA
fragments straight into a hidden ``.rcv-*.tmp`` file in the spool's ``incoming/`` folder (a
:class:`~dicom_node.storage.spool.StagedFile`) instead of assembling the data set in memory; routing reads
only the header from that file (``stop_before_pixels``); the file is then fsync'ed and renamed.
It is switched on only for this node's own associations, by :mod:`dicom_node.scp.chunked` (the
one module that touches pynetdicom internals: exact version pin, start-up self-test, the node
refuses to start on another pynetdicom unless ``chunked_receive`` is off). A write
error while receiving (ENOSPC) is answered 0xA700 once the data set is complete; the partial file
is deleted at once, and so is the file of a transfer cut off by an abort (``EVT_CONN_CLOSE``).
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.node_metrics import NodeMetrics, skip_reason_category
from dicom_node.scp import chunked
from dicom_node.scp.contexts import SupportedContexts
from dicom_node.scp.deflate_guard import bytes_inflate_beyond, file_inflates_beyond
from dicom_node.scp.peer_access import PeerPolicy
from dicom_node.scp.routing import RoutingRules
from dicom_node.settings import NodeSettings
from dicom_node.storage.journal import Journal
from dicom_node.storage.spool import InstanceTooLargeError, Spool, StagedFile, is_out_of_space
from dicom_node.transport import command_set, uid_memo
from dicom_node.transport.event_logging import sync_standard_handlers
from dicom_node.transport.tcp_options import NODELAY_HANDLERS

logger = logging.getLogger(__name__)
command_set.install()  # DIMSE command sets written directly (same bytes)
uid_memo.install()  # UIDs pynetdicom accepted once are not checked again

#: Transfer syntaxes accepted for storage: every one the inference core decodes. pynetdicom picks,
#: within one proposed presentation context, the first of these the requestor offers, so the order
#: is the preference: lossless compressed (as stored, less to transfer), then uncompressed, and
#: lossy last (so a requestor holding uncompressed data is never asked to compress it lossily).
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLSNearLossless,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_STORAGE_FAILURE = 0xA701
STATUS_CANNOT_UNDERSTAND = 0xC000


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
#: Longest reason/error text the SCP writes to its log and journal.
MAX_REASON_CHARS = 160


def clip_text(text: object, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` as one short printable-ASCII line: control/non-ASCII characters become ``?`` and
    it is cut to ``limit`` characters. A malformed header (e.g. a wrong VR) can make an attribute
    swallow kilobytes of neighbouring elements (pixel data, even patient name); routing reasons and
    parser errors quote such values, so they are clipped before they reach the log or the journal.
    """
    s = _UNPRINTABLE.sub("?", str(text))
    return s if len(s) <= limit else s[: limit - 3] + "..."


class ScpAE(AE):
    """The node's SCP application entity: a connection that has not sent its A-ASSOCIATE request yet
    (an idle or slow TCP client, a TLS handshake in progress) does not count against
    ``maximum_associations``; it is closed after ``association_request_timeout_s``."""

    @property
    def active_associations(self) -> list[Any]:
        return [a for a in super().active_associations if not (a.is_acceptor and a.requestor.primitive is None)]

    @property
    def pending_connections(self) -> int:
        """Connections whose A-ASSOCIATE request has not arrived yet."""
        return sum(1 for a in AE.active_associations.fget(self) if a.is_acceptor and a.requestor.primitive is None)  # type: ignore[attr-defined]


class ScpServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, hardened against stalled clients.

    * TLS: pynetdicom wraps the accepted socket (and so runs the TLS handshake) in the accept loop:
      one client that connects and sends nothing blocked every other association. Here the handshake
      runs in the connection's own thread, bounded by ``handshake_timeout_s``;
    * at most ``max_pending`` connections may wait for their A-ASSOCIATE request or handshake at once;
      beyond it a new connection is closed at once (a flood of idle sockets cannot exhaust threads;
      it can delay genuine peers only while it keeps more than ``max_pending`` sockets open, each of
      which the node closes after ``association_request_timeout_s``).
    """

    handshake_timeout_s: float = 10.0
    #: per-read timeout of a connection until its A-ASSOCIATE request is complete (a client that sends
    #: half a PDU and stalls, "slow loris", is dropped); the Receiver raises it to idle_timeout_s then
    request_timeout_s: float = 10.0
    max_pending: int = 64
    #: listen backlog (socketserver's default of 5 makes the kernel drop the SYNs of a burst of clients)
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: connections accepted whose association thread has not started yet: the AE sees a connection
        #: only once its thread runs, and a burst of accepts outpaces the threads
        self._starting = 0
        self._starting_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[Any, tuple[str, int]]:
        sock = self.socket
        assert sock is not None
        client, address = sock.accept()  # no TLS wrap here: see process_request_thread
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._starting_lock:
            pending = getattr(self.ae, "pending_connections", 0) + self._starting
            if pending < self.max_pending:
                self._starting += 1
                return True
        logger.warning(
            "connection refused: %d connections already wait for their association request",
            pending,
            extra={"event": "connection_refused", "peer": _peer_text(client_address), "pending": pending},
        )
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self._process_accepted(request, client_address)
        finally:
            # the association's own thread (counted by the AE) has started, or the connection is gone
            with self._starting_lock:
                self._starting -= 1

    def _process_accepted(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:  # the handshake runs while the connection counts as starting
            try:
                request.settimeout(self.handshake_timeout_s)
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ValueError) as exc:  # ssl.SSLError and socket.timeout are OSErrors
                logger.warning(
                    "TLS handshake failed: %s",
                    clip_text(type(exc).__name__ + ": " + str(exc)),
                    extra={"event": "tls_handshake_failed", "peer": _peer_text(client_address)},
                )
                self.shutdown_request(request)
                return
        try:
            request.settimeout(self.request_timeout_s)
        except OSError:
            pass
        super().process_request_thread(request, client_address)


def _peer_text(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)


def build_ae(settings: NodeSettings) -> AE:
    """An ``AE`` configured as the node's SCP (contexts, limits, timeouts; the allow-list is checked
    by :class:`Receiver` when an association is requested, with the peer's address)."""
    ae = ScpAE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.idle_timeout_s
    ae.acse_timeout = settings.association_request_timeout_s
    ae.dimse_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.scp_max_pdu
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae


def scp_ssl_context(settings: NodeSettings) -> ssl.SSLContext | None:
    """The SCP's TLS context when ``tls_scp`` is on (``dicom_node.transport.tls.server_context``), else ``None``.

    Raises ``dicom_node.transport.tls.TlsConfigError`` naming the file that is missing, unreadable or insecure."""
    if not settings.tls_scp:
        return None
    from dicom_node.transport.tls import TlsConfigError, server_context

    if settings.tls_cert_file is None or settings.tls_key_file is None:  # NodeSettings refuses this already
        raise TlsConfigError(
            "tls_scp needs tls_cert_file and tls_key_file, "
            f"got {settings.tls_cert_file!r}, {settings.tls_key_file!r}"
        )
    return server_context(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file, settings.tls_require_client_cert
    )


class Receiver:
    """The node's SCP. ``start()`` listens (non-blocking); ``stop()`` is graceful."""

    def __init__(
        self,
        settings: NodeSettings,
        spool: Spool,
        journal: Journal,
        *,
        rules: RoutingRules | None = None,
        on_received: Callable[[int], None] | None = None,
        metrics: NodeMetrics | None = None,
        chunked_receive: bool | None = None,
    ) -> None:
        """``chunked_receive``: receive each data set straight into a spool file (see the module
        docstring) instead of assembling it in memory; both persist before answering. None (the
        default) takes ``settings.chunked_receive``."""
        self.settings = settings
        self.metrics = metrics
        self.spool = spool
        self.journal = journal
        self.rules = rules or RoutingRules.from_settings(settings)
        self.on_received = on_received
        sync_standard_handlers()  # pynetdicom's INFO/DEBUG narration only when its logger prints it
        self.ae = build_ae(settings)
        self.peers = PeerPolicy.build(settings.allowed_aets, settings.allowed_peers)
        self._server: ThreadedAssociationServer | None = None
        self._stopping = False
        self._inflight = 0
        self._cv = threading.Condition()
        self.chunked_receive = settings.chunked_receive if chunked_receive is None else bool(chunked_receive)
        self._staged: set[StagedFile] = set()  # being received, not yet claimed by the handler

    # --------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        """The TCP port actually listened on (useful with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("receiver is not started")
        return int(self._server.server_address[1])

    @property
    def listening(self) -> bool:
        return self._server is not None and not self._stopping

    def start(self) -> int:
        """Start listening; returns the port."""
        if self._server is not None:
            raise RuntimeError("receiver already started")
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            *NODELAY_HANDLERS,
        ]
        if self.chunked_receive:  # refuses to start on a pynetdicom the switch was not written for
            chunked.ensure_installed()
            chunked.register(self.ae, self._stage)
        s = self.settings
        ssl_context = scp_ssl_context(s)
        self._server = self._start_server((s.bind, s.port), handlers, ssl_context)
        logger.info(
            "SCP listening",
            extra={
                "event": "listening",
                "ae_title": self.settings.ae_title,
                "bind": self.settings.bind,
                "port": self.port,
                "tls": ssl_context is not None,
                "chunked_receive": self.chunked_receive,
            },
        )
        return self.port

    def _start_server(
        self, address: tuple[str, int], handlers: list[Any], ssl_context: ssl.SSLContext | None
    ) -> ScpServer:
        """``AE.start_server(block=False)`` with :class:`ScpServer` (TLS handshake off the accept loop)."""
        server = self.ae.make_server(address, evt_handlers=handlers, ssl_context=ssl_context, server_class=ScpServer)
        server.contexts = SupportedContexts(server.contexts)  # copied per association: cheaply (contexts.py)
        server.handshake_timeout_s = self.settings.tls_handshake_timeout_s
        server.request_timeout_s = self.settings.association_request_timeout_s
        server.max_pending = max(64, 8 * self.settings.max_associations)
        thread = threading.Thread(target=server.serve_forever, name=f"cxr-scp-{address[1]}", daemon=True)
        thread.start()
        self.ae._servers.append(server)
        return server

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting associations, let in-flight C-STORE writes finish (up to ``timeout``), then abort."""
        if self._server is None:
            return
        with self._cv:
            self._stopping = True
        server = self._server
        server.shutdown()  # stops listening; running associations keep their threads
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._inflight and time.monotonic() < deadline:
                self._cv.wait(timeout=max(0.0, deadline - time.monotonic()))
            left = self._inflight
        if left:
            logger.warning(
                "C-STORE writes still running at shutdown", extra={"event": "stop", "inflight": left}
            )
        for assoc in list(server.active_associations):
            if assoc.is_acceptor and assoc.requestor.primitive is None:
                assoc.kill()  # still waiting for its A-ASSOCIATE request: nothing to abort
            else:
                assoc.abort()
        self.ae.shutdown()
        chunked.unregister(self.ae)
        with self._cv:
            leftovers, self._staged = list(self._staged), set()
        for staged in leftovers:
            staged.discard()
        logger.info("SCP stopped", extra={"event": "stopped", "port": server.server_address[1]})

    # ----------------------------------------------------------- staged files
    def _stage(self) -> StagedFile:
        """A new staged file for the association whose DUL thread calls (pynetdicom's temp-file hook)."""
        staged = self.spool.stage_incoming(max_bytes=self.settings.max_instance_mb * 2**20)
        staged.owner = chunked.current_association()
        with self._cv:
            self._staged.add(staged)
        return staged

    def _claim(self, name: str) -> StagedFile | None:
        """Take the staged file ``name`` over for the C-STORE handler; None if it was already discarded."""
        with self._cv:
            staged = next((s for s in self._staged if s.name == name), None)
            if staged is not None:
                self._staged.discard(staged)
            return staged

    def _on_conn_close(self, event: Any) -> None:
        """Delete files of data sets still being received when the connection ended (abort)."""
        with self._cv:
            mine = [s for s in self._staged if s.owner is event.assoc]
            self._staged.difference_update(mine)
        for staged in mine:
            staged.discard()
        if mine:
            logger.warning(
                "connection closed during a C-STORE transfer; partial data removed",
                extra={"event": "partial_removed", "files": len(mine)},
            )

    # ---------------------------------------------------------------- handlers
    def _on_requested(self, event: Any) -> None:
        """Check the caller against the allow-list (AE title and, with ``allowed_peers``, its address);
        reject it (A-ASSOCIATE-RJ permanent, "calling AE title not recognised") and log once if refused."""
        # at EVT_REQUESTED the requestor's AE title is only in the A-ASSOCIATE-RQ primitive
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = clip_text(str(getattr(primitive, "calling_ae_title", "") or "").strip(), 16)
        address = str(assoc.requestor.address)
        if self.peers.allows(calling, address):
            try:  # the request is complete: from now on a read may wait as long as the idle timeout
                assoc.dul.socket.socket.settimeout(self.settings.idle_timeout_s)
            except (AttributeError, OSError):
                pass
            return
        logger.warning(
            "association rejected: calling AE title %s not allowed from %s",
            calling,
            address,
            extra={"event": "association_rejected", "calling_aet": calling,
                   "peer": f"{address}:{assoc.requestor.port}"},
        )  # fmt: skip
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_echo(self, event: Any) -> int:
        logger.debug(
            "C-ECHO", extra={"event": "echo", "calling_aet": str(event.assoc.requestor.ae_title).strip()}
        )
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int | Dataset:
        with self._cv:
            if self._stopping:
                return STATUS_OUT_OF_RESOURCES
            self._inflight += 1
        try:
            return self._store(event)
        finally:
            with self._cv:
                self._inflight -= 1
                self._cv.notify_all()

    def _inflates_too_much(self, staged: StagedFile | None, event: Any) -> bool:
        """A deflated data set is measured before pydicom inflates it whole (see dicom_node.scp.deflate_guard)."""
        limit = self.settings.max_inflated_mb * 2**20
        try:
            if staged is not None:
                return file_inflates_beyond(staged.name, limit)
            return bytes_inflate_beyond(event.request.DataSet.getvalue(), limit)
        except (OSError, ValueError, AttributeError):
            return False  # unreadable: the routing read below reports it

    def _store(self, event: Any) -> int | Dataset:
        t0 = time.perf_counter()
        calling = str(event.assoc.requestor.ae_title).strip()
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        sop_class = str(event.request.AffectedSOPClassUID)
        ts = str(event.context.transfer_syntax)
        fields = {
            "sop_instance_uid": sop_uid,
            "sop_class_uid": sop_class,
            "calling_aet": calling,
            "transfer_syntax": ts,
        }
        received_to = chunked.dataset_path_of(event) if self.chunked_receive else None
        staged = None if received_to is None else self._claim(received_to)
        if received_to is not None and staged is None:
            logger.error(
                "C-STORE refused: the received data was already removed (connection closed)",
                extra={"event": "failed", "stage": "receive", "status": "0xA701", **fields},
            )
            self._count_failed()
            return STATUS_STORAGE_FAILURE
        if staged is not None:
            staged.finish_writing()
            if isinstance(staged.error, InstanceTooLargeError):
                staged.discard()
                return self._too_large(fields, t0)
            if staged.error is not None:  # e.g. ENOSPC while receiving: the partial file is gone already
                staged.discard()
                ms = (time.perf_counter() - t0) * 1000
                self._count_failed()
                full = is_out_of_space(staged.error)
                logger.error(
                    "C-STORE refused: %s: %s",
                    "out of disk space" if full else "could not write the received data",
                    staged.error,
                    extra={
                        "event": "failed",
                        "stage": "receive",
                        "status": "0xA700" if full else "0xA701",
                        "ms": ms,
                        **fields,
                    },
                )
                return STATUS_OUT_OF_RESOURCES if full else STATUS_STORAGE_FAILURE
        try:
            if ts == DeflatedExplicitVRLittleEndian and self._inflates_too_much(staged, event):
                raise ValueError(
                    f"the deflated data set inflates to more than max_inflated_mb = {self.settings.max_inflated_mb} MiB"
                )
            # routing needs the header only: never read the pixel data back from the staged file
            ds = (  # large elements (private blobs) are not loaded: routing reads a few small attributes
                pydicom.dcmread(staged.name, stop_before_pixels=True, defer_size=1 << 20)
                if staged is not None
                else event.dataset
            )
            decision = self.rules.decide(ds, sop_class)
        except Exception as exc:
            if staged is not None:
                staged.discard()
            logger.error(
                "C-STORE refused: cannot decode the data set: %s",
                clip_text(exc),
                extra={"event": "failed", "stage": "receive", "status": "0xC000", **fields},
            )
            self._count_failed()
            return STATUS_CANNOT_UNDERSTAND
        path = None
        nbytes = 0
        try:
            if staged is not None:
                nbytes = staged.size
                path = self.spool.store_incoming(sop_uid, staged)
            else:
                data = event.encoded_dataset(include_meta=True)
                nbytes = len(data)
                if nbytes > self.settings.max_instance_mb * 2**20:  # in-memory receive: checked after the fact
                    return self._too_large(fields, t0)
                path = self.spool.store_incoming(sop_uid, data)
            reason = None if decision.analyse else clip_text(decision.reason)
            state = "received" if decision.analyse else "skipped"
            job_id = self.journal.add_job(
                sop_instance_uid=sop_uid,
                sop_class_uid=sop_class,
                transfer_syntax=ts,
                calling_aet=calling,
                path=str(path),
                state=state,
                reason=reason,
            )
        except Exception as exc:
            if staged is not None:
                staged.discard()
            if path is not None:  # not acknowledged: do not leave an orphan behind
                self.spool.remove(path)
            ms = (time.perf_counter() - t0) * 1000
            self._count_failed()
            if is_out_of_space(exc):
                logger.error(
                    "C-STORE refused: out of disk space: %s",
                    exc,
                    extra={"event": "failed", "stage": "receive", "status": "0xA700", "ms": ms, **fields},
                )
                return STATUS_OUT_OF_RESOURCES
            logger.error(
                "C-STORE refused: could not persist the instance: %s",
                exc,
                exc_info=True,
                extra={"event": "failed", "stage": "receive", "status": "0xA701", "ms": ms, **fields},
            )
            return STATUS_STORAGE_FAILURE
        ms = (time.perf_counter() - t0) * 1000
        if self.metrics is not None:
            if decision.analyse:
                self.metrics.received()
            else:
                self.metrics.skipped(getattr(decision, "category", None) or skip_reason_category(decision.reason))
        if decision.analyse:
            logger.info(
                "received",
                extra={
                    "event": "received",
                    "job_id": job_id,
                    "bytes": nbytes,
                    "ms": ms,
                    "chunked": staged is not None,
                    **fields,
                },
            )
            if self.on_received is not None:
                try:
                    self.on_received(job_id)
                except Exception:  # pragma: no cover - a wake-up must never fail a store
                    logger.exception("on_received callback failed", extra={"job_id": job_id})
        else:
            if not self.settings.keep_skipped:
                self.spool.remove(path)
            logger.info(
                "skipped: %s",
                reason,
                extra={"event": "skipped", "job_id": job_id, "reason": reason, "ms": ms, **fields},
            )
        return STATUS_SUCCESS

    def _too_large(self, fields: dict[str, str], t0: float) -> Dataset:
        """C-STORE answer for a data set beyond ``max_instance_mb``: 0xA700 with an Error Comment."""
        self._count_failed()
        comment = f"data set larger than max_instance_mb = {self.settings.max_instance_mb} MiB; not stored"
        logger.error(
            "C-STORE refused: %s",
            comment,
            extra={"event": "failed", "stage": "receive", "status": "0xA700", "reason": "too_large",
                   "ms": (time.perf_counter() - t0) * 1000, **fields},
        )  # fmt: skip
        status = Dataset()
        status.Status = STATUS_OUT_OF_RESOURCES
        status.ErrorComment = comment[:64]
        return status

    def _count_failed(self) -> None:
        if self.metrics is not None:
            self.metrics.failed("receive")
