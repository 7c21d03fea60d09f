"""Delivery of result objects: C-STORE SCU (and optional Orthanc REST) with persisted retry/backoff.

One association per destination and batch, presenting only the (SOP class, transfer syntax)
pairs being sent; files are sent from the spool as stored (no re-encode). Outcomes:

* success or warning status -> delivered;
* transient (connection refused, timeout, association aborted, rejected-transient, 0xA7xx,
  other failures) -> exponential backoff ``retry_base_s * 2**(n-1)`` capped at ``retry_max_s``,
  jittered, stored in the journal (``attempts``, ``next_attempt_at``) so it survives restarts;
* permanent (association rejected-permanent, e.g. calling AE not recognised; 0xCxxx, 0xA9xx,
  0x0122, presentation context refused; HTTP 4xx) -> logged at ERROR and retried every
  ``permanent_retry_s``: never dropped, never a hot loop.
"""

from __future__ import annotations

import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE

from dicom_node.delivery.kept import KeptAssociation, KeptAssociations, is_usable
from dicom_node.delivery.uncompressed import (
    FALLBACK_TRANSFER_SYNTAX,
    needs_fallback_context,
    uncompressed_copy,
)
from dicom_node.node_metrics import NodeMetrics
from dicom_node.settings import Destination, NodeSettings
from dicom_node.storage.journal import Job, Journal, OutboxItem
from dicom_node.storage.spool import Spool
from dicom_node.transport import command_set, uid_memo
from dicom_node.transport.event_logging import sync_standard_handlers
from dicom_node.transport.reactor_checkpoint import install_checkpoint
from dicom_node.transport.tcp_options import NODELAY_HANDLERS

logger = logging.getLogger(__name__)
command_set.install()  # DIMSE command sets written directly (same bytes)
uid_memo.install()  # UIDs pynetdicom accepted once are not checked again

#: pynetdicom accepts at most 128 presentation contexts per association.
MAX_CONTEXTS = 120


@dataclass(frozen=True)
class Outcome:
    """Result of one delivery attempt of one item."""

    delivered: bool
    permanent: bool = False
    error: str | None = None
    status: int | None = None

    def __post_init__(self) -> None:
        if self.delivered == (self.error is not None):
            raise ValueError(f"an outcome is either delivered or has an error, got {self!r}")


DELIVERED = Outcome(True)


def classify_status(status: int) -> Outcome:
    """Map a C-STORE response status to an ``Outcome``."""
    if status == 0x0000 or status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return Outcome(True, status=status)
    text = f"C-STORE status 0x{status:04X}"
    if 0xA700 <= status <= 0xA7FF or status in (0x0110, 0x0213):
        return Outcome(
            False, permanent=False, error=text + " (out of resources / processing failure)", status=status
        )
    if 0xC000 <= status <= 0xCFFF or 0xA900 <= status <= 0xA9FF or status in (0x0122, 0x0124, 0x0211, 0x0212):
        return Outcome(False, permanent=True, error=text + " (refused)", status=status)
    return Outcome(False, permanent=False, error=text, status=status)


def backoff_delay(attempts: int, base_s: float, max_s: float, *, rng: random.Random | None = None) -> float:
    """Jittered exponential backoff after ``attempts`` failed attempts (>= 1): in [0.5, 1] x min(max, base*2**(n-1))."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts!r}")
    raw = min(max_s, base_s * (2 ** min(attempts - 1, 30)))
    r = (rng or random).uniform(0.5, 1.0)
    return raw * r


#: pynetdicom sends a C-STORE given as a file path from the file, as stored (file meta read, data
#: set streamed in PDU-sized fragments), instead of decoding the whole file with pydicom and encoding
#: it again: ~1 ms less CPU per 11 KB SR, ~13 ms less per 3.9 MB uncompressed SC (BENCHMARKS.md). It
#: is pynetdicom's public, process-wide switch; in this process only the sender sends files by path.
def send_files_as_stored() -> None:
    """Switch pynetdicom's ``STORE_SEND_CHUNKED_DATASET`` on (idempotent)."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True


class DicomSender:
    """Sends a batch of spool files to one DICOM destination.

    The association is kept open for ``idle_release_s`` after a batch (parked, see
    :mod:`dicom_node.delivery.kept`) and reused by the next batch to the same destination when it
    was negotiated for the batch's (SOP class, transfer syntax) pairs; a new association requests
    the pairs of the association it replaces too, so alternating batches share one. A kept
    association that turns out dead (the peer closed it while idle, or at the moment of sending)
    costs nothing: what it did not answer is sent at once on a fresh association, and only that
    attempt's outcome counts. ``idle_release_s = 0``: one association per batch, as before.

    Each compressed pair is proposed together with the same SOP class in Explicit VR Little Endian;
    a destination that accepts only the latter gets a decompressed copy (:mod:`dicom_node.delivery.uncompressed`).

    The outcomes are returned as soon as the last C-STORE response is in; releases (A-RELEASE and
    the DUL thread's stop, ~12 ms with pynetdicom) run on a helper thread meanwhile. ``close()``
    releases the kept associations and waits for the pending releases."""

    def __init__(
        self,
        calling_aet: str,
        timeout_s: float,
        *,
        ssl_context: ssl.SSLContext | None = None,
        idle_release_s: float = 0.0,
    ) -> None:
        self.calling_aet = calling_aet
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context
        self._releases = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-release")
        self.kept = KeptAssociations(idle_release_s, self._release)
        #: associations opened (a test and benchmark counter)
        self.opened = 0
        #: the (SOP class, transfer syntax) pairs of each destination's last association
        self._recent: dict[str, list[tuple[str, str]]] = {}
        send_files_as_stored()
        sync_standard_handlers()  # pynetdicom's INFO/DEBUG narration only when its logger prints it

    def close(self) -> None:
        """Release the kept associations and wait for the releases still running (idempotent)."""
        self.kept.close()
        self._releases.shutdown(wait=True)

    def _release(self, kept: KeptAssociation) -> None:
        try:
            self._releases.submit(_release_quietly, kept)
        except RuntimeError:  # closed (stopping): release here
            _release_quietly(kept)

    def send(self, dest: Destination, items: Sequence[OutboxItem]) -> list[Outcome]:
        """One outcome per item, in order."""
        pairs = list(dict.fromkeys((i.sop_class_uid, i.transfer_syntax) for i in items))
        # a new association also asks for what the destination's previous one carried
        wanted = list(dict.fromkeys([*pairs, *self._recent.get(dest.key, ())]))
        kept = self.kept.take(dest.key, set(pairs[:MAX_CONTEXTS]))
        if kept is not None:
            outcomes, lost = self._send_on(kept, items)
            if lost is None:
                self.kept.keep(dest.key, kept)
                return outcomes
            # the kept association was gone (closed by the peer while idle): the items it did not
            # answer go out on a fresh association now, and only that attempt counts
            logger.info(
                "kept association lost, sending on a new one",
                extra={"event": "kept_association_lost", "destination": dest.key, "items": len(items) - lost},
            )
            self.kept.discard(kept)
            return outcomes[:lost] + self._send_fresh(dest, items[lost:], wanted)
        return self._send_fresh(dest, items, wanted)

    def _send_fresh(
        self, dest: Destination, items: Sequence[OutboxItem], wanted: list[tuple[str, str]]
    ) -> list[Outcome]:
        """Open an association for ``wanted`` (``items``' pairs first), send ``items``, keep it."""
        kept = self._associate(dest, wanted, len(items))
        if isinstance(kept, list):  # the refusal, one outcome per item
            return kept
        self._recent[dest.key] = [p for p in wanted if p in kept.requested]
        outcomes, _lost = self._send_on(kept, items)
        self.kept.keep(dest.key, kept)  # released at once when no longer established
        return outcomes

    def _associate(
        self, dest: Destination, wanted: list[tuple[str, str]], n_items: int
    ) -> KeptAssociation | list[Outcome]:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = self.timeout_s
        ae.dimse_timeout = self.timeout_s
        ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        contexts: list[tuple[str, str]] = []
        for sop_class, ts in wanted:  # the item's own pair first, its uncompressed fallback next
            contexts.append((sop_class, ts))
            if needs_fallback_context(ts):
                contexts.append((sop_class, FALLBACK_TRANSFER_SYNTAX))
        contexts = list(dict.fromkeys(contexts))[:MAX_CONTEXTS]
        for sop_class, ts in contexts:
            ae.add_requested_context(sop_class, ts)
        tls_args = None
        if self.ssl_context is not None:
            from dicom_node.transport.tls import scu_tls_args

            tls_args = scu_tls_args(self.ssl_context, dest.host)
        assoc = ae.associate(
            dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args, evt_handlers=NODELAY_HANDLERS
        )
        self.opened += 1
        if not assoc.is_established:
            if assoc.is_rejected:
                prim = assoc.acceptor.primitive
                result = getattr(prim, "result", None)
                why = f"association rejected ({getattr(prim, 'result_str', result)}, {getattr(prim, 'reason_str', '')})"
                return [Outcome(False, permanent=result != 0x02, error=why)] * n_items
            # pynetdicom reports a refused/timed-out TCP connection as an aborted association
            why = "connection failed (refused or timed out) or association aborted"
            return [Outcome(False, error=why)] * n_items
        install_checkpoint(assoc)
        accepted = frozenset(
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        )
        return KeptAssociation(assoc, requested=frozenset(contexts), accepted=accepted)

    def _send_on(
        self, kept: KeptAssociation, items: Sequence[OutboxItem]
    ) -> tuple[list[Outcome], int | None]:
        """Send ``items`` over ``kept``: (one outcome per item, index of the first item the association
        lost before answering when it was a reused one that died, else None)."""
        assoc = kept.assoc
        reused = kept.uses > 1
        outcomes: list[Outcome] = []
        for n, item in enumerate(items):
            if not assoc.is_established:
                if reused:
                    return outcomes, n
                outcomes.extend([Outcome(False, error="association lost")] * (len(items) - n))
                break
            pair = (item.sop_class_uid, item.transfer_syntax)
            fallback = (item.sop_class_uid, FALLBACK_TRANSFER_SYNTAX)
            if pair not in kept.requested:
                outcomes.append(Outcome(False, error="deferred: too many SOP class/transfer syntax pairs"))
                continue
            uncompressed = (
                pair not in kept.accepted and fallback in kept.accepted and needs_fallback_context(pair[1])
            )
            if pair not in kept.accepted and not uncompressed:
                outcomes.append(
                    Outcome(
                        False,
                        permanent=True,
                        error=f"presentation context refused for {item.sop_class_uid} / {item.transfer_syntax}",
                    )
                )
                continue
            if not Path(item.path).is_file():
                outcomes.append(Outcome(False, permanent=True, error=f"result file missing: {item.path}"))
                continue
            if uncompressed:
                try:
                    payload: Path | Dataset = uncompressed_copy(item.path)
                except ValueError as exc:
                    outcomes.append(Outcome(False, permanent=True, error=str(exc)))
                    continue
            else:
                payload = Path(item.path)
            t0 = time.monotonic()
            kept.pause_reactor()  # pynetdicom's own pause can let the reactor take the response
            status = assoc.send_c_store(payload)
            if "Status" not in status:
                # no response at once: the association broke (pynetdicom answers an abort or a closed
                # connection at once; a peer that is merely slow costs the DIMSE timeout and counts).
                # On a reused association that is the peer having closed it: retried on a fresh one
                if reused and time.monotonic() - t0 < 0.9 * self.timeout_s:
                    return outcomes, n
                outcomes.append(Outcome(False, error="no C-STORE response (timeout or association aborted)"))
            else:
                outcomes.append(classify_status(int(status.Status)))
        return outcomes, None


def _release_quietly(kept: KeptAssociation) -> None:
    """Release ``kept`` (abort it when the peer has already gone); a failure only means the peer
    already closed it (the results are in)."""
    assoc = kept.assoc
    try:
        usable = assoc.is_established and is_usable(assoc)
        kept.resume_reactor()  # a parked reactor finishes an association the peer closed
        if usable:
            kept.pause_reactor()  # (the release response is read by release() itself)
            assoc.release()
            return
        deadline = time.monotonic() + 1.0
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.005)
        if assoc.is_established and getattr(assoc.dul.state_machine, "current_state", "") == "Sta6":
            assoc.abort()
        else:
            assoc.kill()
    except Exception as exc:  # pragma: no cover - pynetdicom internals
        logger.warning("association release failed: %s", exc, extra={"event": "release_failed"})


class RestSender:
    """Sends spool files to an Orthanc REST endpoint (``POST /instances``) with pyorthanc."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def send(self, dest: Destination, items: Sequence[OutboxItem]) -> list[Outcome]:
        import httpx
        from pyorthanc import Orthanc

        outcomes: list[Outcome] = []
        client = Orthanc(dest.url, username=dest.username, password=dest.password, timeout=self.timeout_s)
        try:
            for item in items:
                try:
                    client.post_instances(Path(item.path).read_bytes())
                    outcomes.append(DELIVERED)
                except (httpx.TransportError, OSError) as exc:
                    outcomes.append(Outcome(False, error=f"{type(exc).__name__}: {exc}"))
                except httpx.HTTPError as exc:  # pyorthanc raises HTTPError("HTTP code: 401, ...")
                    code = _http_code(exc)
                    permanent = code is not None and 400 <= code < 500 and code not in (408, 429)
                    outcomes.append(Outcome(False, permanent=permanent, error=f"HTTP {code} from {dest}"))
        finally:
            client.close()
        return outcomes


def _http_code(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    try:
        if response is not None:
            return int(response.status_code)
    except (RuntimeError, AttributeError, TypeError, ValueError):
        pass
    m = re.search(r"HTTP code: (\d{3})", str(exc))
    return int(m.group(1)) if m else None


def scu_ssl_context(settings: NodeSettings) -> ssl.SSLContext | None:
    """The SCU's TLS context when ``tls_scu`` is on (built once; the node's certificate, if
    configured, is presented as client certificate), else ``None``."""
    if not settings.tls_scu:
        return None
    from dicom_node.transport.tls import TlsConfigError, client_context

    if settings.tls_ca_file is None:  # NodeSettings refuses this already
        raise TlsConfigError("tls_scu needs tls_ca_file to verify the destination, got None")
    return client_context(
        settings.tls_ca_file,
        settings.tls_cert_file,
        settings.tls_key_file,
        check_hostname=settings.tls_check_hostname,
    )


class Deliverer:
    """Background thread delivering due outbox rows to their destinations."""

    def __init__(
        self,
        settings: NodeSettings,
        journal: Journal,
        spool: Spool,
        *,
        on_job_delivered: Callable[[Job], None] | None = None,
        rng: random.Random | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.spool = spool
        self.metrics = metrics
        self.destinations: dict[str, Destination] = {d.key: d for d in settings.destinations}
        self.dicom = DicomSender(
            settings.ae_title,
            settings.network_timeout_s,
            ssl_context=scu_ssl_context(settings),
            idle_release_s=settings.delivery_idle_release_s,
        )
        self.rest = RestSender(settings.network_timeout_s)
        self.on_job_delivered = on_job_delivered
        self._rng = rng or random.Random()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the delivery thread (resumes every pending outbox row)."""
        if self._thread is not None:
            raise RuntimeError("deliverer already started")
        self._thread = threading.Thread(target=self._run, name="cxr-deliver", daemon=True)
        self._thread.start()

    def wake(self, _job_id: int | None = None) -> None:
        """New outbox rows are waiting."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current batch (bounded by the network timeout)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.dicom.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.run_once()
            except Exception:
                logger.exception("delivery loop error", extra={"event": "deliver_error"})
                sent = 0
            if sent:
                continue
            wait = self.settings.poll_interval_s
            due = self.journal.next_due_at()
            if due is not None:
                wait = min(wait, max(0.0, due - time.time()))
            self._wake.wait(timeout=max(wait, 0.01))
            self._wake.clear()

    def run_once(self) -> int:
        """Deliver one batch per destination of the rows due now; returns how many rows were attempted."""
        batch = self.settings.delivery_batch_size
        due = self.journal.due_outbox(time.time(), limit=batch * max(1, len(self.destinations)) * 4)
        groups: dict[str, list[OutboxItem]] = {}
        for item in due:
            group = groups.setdefault(item.destination, [])
            if len(group) < batch:
                group.append(item)
        attempted = 0
        for key, items in groups.items():
            if self._stop.is_set():
                break
            attempted += len(items)
            self._deliver(key, items)
        return attempted

    def _deliver(self, key: str, items: list[OutboxItem]) -> None:
        dest = self.destinations.get(key)
        t0 = time.perf_counter()
        if dest is None:
            outcomes = [
                Outcome(False, permanent=True, error=f"destination {key} is no longer configured")
            ] * len(items)
        else:
            sender = self.dicom if dest.kind == "dicom" else self.rest
            try:
                outcomes = sender.send(dest, items)
            except Exception as exc:  # a bug or an unexpected library error: transient, never lost
                logger.exception(
                    "delivery to %s raised", key, extra={"event": "deliver_error", "destination": key}
                )
                outcomes = [Outcome(False, error=f"{type(exc).__name__}: {exc}")] * len(items)
        ms = (time.perf_counter() - t0) * 1000 / max(1, len(items))
        for item, outcome in zip(items, outcomes, strict=True):
            self._record(item, outcome, ms)

    def _record(self, item: OutboxItem, outcome: Outcome, ms: float) -> None:
        fields = {
            "job_id": item.job_id,
            "sop_instance_uid": item.sop_instance_uid,
            "sop_class_uid": item.sop_class_uid,
            "destination": item.destination,
        }
        if outcome.delivered:
            # logged before the journal commit: the log holds every C-STORE the destination accepted,
            # also one whose commit a crash cut off (that result is sent again and logged twice)
            logger.info(
                "delivered", extra={"event": "delivered", "attempts": item.attempts + 1, "ms": ms, **fields}
            )
            job = self.journal.mark_delivered(item.id)
            if self.metrics is not None:
                dest = self.destinations.get(item.destination)
                self.metrics.delivered(
                    dest.ae_title if dest is not None and dest.kind == "dicom" else item.destination
                )
            if job is not None:
                self._job_done(job)
            return
        attempts = item.attempts + 1
        s = self.settings
        if outcome.permanent:
            delay = s.permanent_retry_s * self._rng.uniform(0.9, 1.0)
            level, what = logging.ERROR, "delivery refused (permanent), will retry slowly"
        else:
            delay = backoff_delay(attempts, s.retry_base_s, s.retry_max_s, rng=self._rng)
            level, what = logging.WARNING, "delivery failed (transient), will retry"
        self.journal.mark_attempt_failed(
            item.id, outcome.error or "", time.time() + delay, permanent=outcome.permanent
        )
        if self.metrics is not None:
            self.metrics.failed("deliver")
        logger.log(
            level,
            "%s: %s",
            what,
            outcome.error,
            extra={
                "event": "delivery_failed",
                "attempts": attempts,
                "retry_in_s": delay,
                "permanent": outcome.permanent,
                **fields,
            },
        )

    def _job_done(self, job: Job) -> None:
        if not self.settings.keep_delivered:
            paths = [o.path for o in self.journal.outbox(job_id=job.id)]
            if job.path:
                paths.append(job.path)
            in_use = self.journal.paths_in_use(paths)
            for p in dict.fromkeys(paths):
                if p not in in_use:
                    self.spool.remove(p)
        logger.info(
            "job delivered",
            extra={
                "event": "job_delivered",
                "job_id": job.id,
                "sop_instance_uid": job.sop_instance_uid,
                "ms": (time.time() - job.received_at) * 1000,
            },
        )
        if self.on_job_delivered is not None:
            self.on_job_delivered(job)
