"""DICOM receive (SCP): C-ECHO, C-STORE for every storage SOP class, calling-AE allow-list.

C-STORE persists before it answers: the dataset is written *as received* (file meta +
``event.encoded_dataset()``, no decode/re-encode of pixel data) to the spool with
tmp-file/fsync/atomic-rename, then a journal row is committed, and only then does the
handler return 0x0000. Out of disk space (ENOSPC/EDQUOT or free space below the reserve)
answers 0xA700; any other storage failure 0xA701; an undecodable data set 0xC000.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

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

from dicom_node.journal import Journal
from dicom_node.node_metrics import NodeMetrics, skip_reason_category
from dicom_node.routing import RoutingRules
from dicom_node.settings import NodeSettings
from dicom_node.spool import Spool, is_out_of_space

logger = logging.getLogger(__name__)

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


def build_ae(settings: NodeSettings) -> AE:
    """An ``AE`` configured as the node's SCP (contexts, allow-list, limits, timeouts)."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.require_calling_aet = list(settings.allowed_aets)
    ae.network_timeout = max(settings.network_timeout_s, 60.0)
    ae.acse_timeout = settings.network_timeout_s
    ae.dimse_timeout = settings.network_timeout_s
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae


def scp_ssl_context(settings: NodeSettings) -> ssl.SSLContext | None:
    """The SCP's TLS context when ``tls_scp`` is on (``dicom_node.tls.server_context``), else ``None``.

    Raises ``dicom_node.tls.TlsConfigError`` naming the file that is missing, unreadable or insecure."""
    if not settings.tls_scp:
        return None
    from dicom_node.tls import TlsConfigError, server_context

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
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.spool = spool
        self.journal = journal
        self.rules = rules or RoutingRules.from_settings(settings)
        self.on_received = on_received
        self.ae = build_ae(settings)
        self._server: ThreadedAssociationServer | None = None
        self._stopping = False
        self._inflight = 0
        self._cv = threading.Condition()

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
        ]
        s = self.settings
        ssl_context = scp_ssl_context(s)
        self._server = self.ae.start_server(
            (s.bind, s.port), block=False, evt_handlers=handlers, ssl_context=ssl_context
        )
        logger.info(
            "SCP listening",
            extra={
                "event": "listening",
                "ae_title": self.settings.ae_title,
                "bind": self.settings.bind,
                "port": self.port,
                "tls": ssl_context is not None,
            },
        )
        return self.port

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
            assoc.abort()
        self.ae.shutdown()
        logger.info("SCP stopped", extra={"event": "stopped", "port": server.server_address[1]})

    # ---------------------------------------------------------------- handlers
    def _on_requested(self, event: Any) -> None:
        """Log (once, clearly) a caller that pynetdicom is about to reject for its AE title."""
        allowed = self.settings.allowed_aets
        # at EVT_REQUESTED the requestor's AE title is only in the A-ASSOCIATE-RQ primitive
        primitive = event.assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        if allowed and calling not in allowed:
            logger.warning(
                "association rejected: calling AE title %s not recognised (from %s:%s)",
                calling,
                event.assoc.requestor.address,
                event.assoc.requestor.port,
                extra={
                    "event": "association_rejected",
                    "calling_aet": calling,
                    "peer": f"{event.assoc.requestor.address}:{event.assoc.requestor.port}",
                },
            )

    def _on_echo(self, event: Any) -> int:
        logger.debug(
            "C-ECHO", extra={"event": "echo", "calling_aet": str(event.assoc.requestor.ae_title).strip()}
        )
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int:
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

    def _store(self, event: Any) -> int:
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
        try:
            ds = event.dataset
            decision = self.rules.decide(ds, sop_class)
        except Exception as exc:
            logger.error(
                "C-STORE refused: cannot decode the data set: %s",
                clip_text(exc),
                extra={"event": "failed", "stage": "receive", "status": "0xC000", **fields},
            )
            self._count_failed()
            return STATUS_CANNOT_UNDERSTAND
        path = None
        try:
            data = event.encoded_dataset(include_meta=True)
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
                self.metrics.skipped(skip_reason_category(decision.reason))
        if decision.analyse:
            logger.info(
                "received",
                extra={"event": "received", "job_id": job_id, "bytes": len(data), "ms": ms, **fields},
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

    def _count_failed(self) -> None:
        if self.metrics is not None:
            self.metrics.failed("receive")
