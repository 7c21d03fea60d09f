"""``NodeService``: wires spool, journal, engine, receiver (SCP), analysis worker and deliverer.

``start()`` opens the spool and journal (folders 0700, journal files 0600), starts the health
endpoint (``/healthz``, ``/readyz`` answering 503 until the models are loaded, ``/metrics``), loads
the models once, starts the worker and the deliverer (which resume every job not yet
analysed/delivered), then the SCP (TLS when ``tls_scp``), and logs "ready".
``stop()`` is graceful: the SCP stops accepting and lets in-flight C-STORE writes finish, the
worker finishes in-flight analyses, the deliverer its current batch; anything unfinished stays
in the journal and is resumed by the next start. The health endpoint stops last.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from dicom_node.delivery.deliver import Deliverer
from dicom_node.gc_freeze import freeze_long_lived
from dicom_node.health_http import HealthServer, start_health_server
from dicom_node.memory_reuse import keep_freed_memory
from dicom_node.node_metrics import NodeMetrics
from dicom_node.pipeline.analyse import Analyser, AnalysisWorker, BuildEncoded
from dicom_node.results.sc.encode import ScEncoding
from dicom_node.scp.receive import Receiver, scp_ssl_context
from dicom_node.scp.routing import RoutingRules
from dicom_node.settings import ENV_PREFIX, NodeSettings
from dicom_node.storage.journal import Journal
from dicom_node.storage.retention import Purger
from dicom_node.storage.spool import Spool

logger = logging.getLogger(__name__)

#: Modes of the spool folders and of the journal files: only the node's user may read patient data.
DIR_MODE = 0o700
FILE_MODE = 0o600


def secure_spool(spool_dir: Path, journal_path: Path) -> None:
    """Create ``spool_dir`` (mode 0700) and the journal file (mode 0600) if missing, and tighten the
    modes of existing ones: folders below ``spool_dir`` to 0700, the journal and its ``-wal``/``-shm``
    files to 0600. SQLite creates ``-wal``/``-shm`` with the database file's mode, so pre-creating the
    journal 0600 keeps them private too; spool files written later follow the umask
    (``cxr-node serve`` sets 077)."""
    root = Path(spool_dir)
    root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    journal = Path(journal_path)
    journal.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.close(os.open(journal, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    dirs = [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]
    files = [journal, journal.with_name(journal.name + "-wal"), journal.with_name(journal.name + "-shm")]
    for path, mode in [*((d, DIR_MODE) for d in dirs), *((f, FILE_MODE) for f in files if f.exists())]:
        try:
            if path.stat().st_mode & 0o777 != mode:
                os.chmod(path, mode)
        except OSError as exc:  # e.g. a folder owned by another user: say so, the node still works
            logger.warning(
                "cannot restrict the mode of %s to %04o: %s",
                path,
                mode,
                exc,
                extra={"event": "spool_permissions", "path": str(path), "mode": f"{mode:04o}"},
            )


def _build_engine(s: NodeSettings) -> Analyser:
    """The ``InferenceEngine`` configured by the settings (imports torch: slow)."""
    from models.inference.engine import InferenceEngine

    return InferenceEngine(
        s.bundles_dir,
        device=s.device,
        max_batch_size=s.batch_size,
        max_wait_ms=s.max_wait_ms,
        decode_workers=s.decode_workers,
        decision_threshold=s.threshold,
        detection_score_threshold=s.detection_threshold,
        box_gating=s.box_gating,
        heatmaps=s.heatmaps,
    )


class NodeService:
    """The running node. ``analyser``/``build_encoded`` may be injected (tests); by default the
    ``InferenceEngine`` is built from the settings and the result pool runs
    ``dicom_node.results.build.build_encoded_results``.
    ``analyser_factory`` (called by ``start()`` where the engine would be built, after the health
    endpoint is up; the service closes what it returns) stands in for a slow model load in tests.
    ``metrics`` and ``health`` (the HTTP port) are public for tests and tools."""

    def __init__(
        self,
        settings: NodeSettings,
        *,
        analyser: Analyser | None = None,
        build_encoded: BuildEncoded | None = None,
        analyser_factory: Callable[[NodeSettings], Analyser] | None = None,
    ) -> None:
        if analyser is not None and analyser_factory is not None:
            raise ValueError(
                f"give an analyser or an analyser_factory, not both: {analyser!r}, {analyser_factory!r}"
            )
        self.settings = settings
        self._analyser = analyser
        self._owns_analyser = analyser is None
        self._analyser_factory = analyser_factory or _build_engine
        self._build_encoded = build_encoded
        self.metrics = NodeMetrics()
        self.health_server: HealthServer | None = None
        self.spool: Spool | None = None
        self.journal: Journal | None = None
        self.receiver: Receiver | None = None
        self.worker: AnalysisWorker | None = None
        self.deliverer: Deliverer | None = None
        self.purger: Purger | None = None
        self._started = False
        self._stop_requested = threading.Event()

    # ------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        """Port the SCP listens on."""
        if self.receiver is None:
            raise RuntimeError("service not started")
        return self.receiver.port

    @property
    def health(self) -> int | None:
        """Port of the health/metrics endpoint; ``None`` when it is disabled (``http_port=0``) or not started."""
        return self.health_server.port if self.health_server is not None else None

    @property
    def analyser(self) -> Analyser | None:
        return self._analyser

    @property
    def ready(self) -> bool:
        """True when the models are loaded and the SCP listens."""
        ready = getattr(self._analyser, "ready", True)
        return bool(self._started and ready and self.receiver is not None and self.receiver.listening)

    def start(self) -> NodeService:
        """Start everything; returns self. Raises if already started."""
        if self._started:
            raise RuntimeError("service already started")
        s = self.settings
        t0 = time.perf_counter()
        logger.info("starting cxr-ai-node", extra={"event": "starting", "settings": s.public_dict()})
        keep_freed_memory(s.memory_keep_mib)  # before the first image buffer (dicom_node/memory_reuse.py)
        secure_spool(s.spool_dir, s.journal_path)
        self.spool = Spool(s.spool_dir, reserve_bytes=int(s.disk_reserve_mb * 1024 * 1024))
        self.journal = Journal(s.journal_path)
        secure_spool(s.spool_dir, s.journal_path)  # incoming/, outbox/ and the -wal/-shm files now exist
        orphans = self.spool.remove_orphans(self.journal.known_paths())
        if orphans:
            logger.info(
                "removed spool files that were never acknowledged",
                extra={"event": "spool_cleanup", "files": orphans},
            )
        counts = self.journal.counts()
        pending = {k: v for k, v in counts.items() if k in ("job.received", "job.analysed", "outbox.pending")}
        if any(pending.values()):
            logger.info("resuming unfinished work", extra={"event": "resume", **pending})
        journal = self.journal
        self.metrics.set_queue_depth_source(lambda: journal.counts().get("job.received", 0))
        self.metrics.set_undelivered_source(
            lambda: sum(journal.counts().get(k, 0) for k in ("job.received", "job.analysed"))
        )
        try:
            try:
                self.health_server = start_health_server(
                    s.http_port,
                    host=s.http_bind,
                    models_ready=lambda: self.ready,
                    spool_dir=s.spool_dir,
                    metrics=self.metrics,
                )
            except OSError as exc:
                why = (
                    f"health endpoint cannot listen on {s.http_bind}:{s.http_port}: {exc.strerror or exc} "
                    f"(set {ENV_PREFIX}HTTP_PORT to a free port, or 0 to disable it)"
                )
                if "http_port" in s.model_fields_set:  # configured explicitly (env, YAML, argument): fatal
                    raise OSError(exc.errno, why) from exc
                # the default port is best effort (several nodes/tests on one host); the container sets it
                logger.error(
                    "%s; running without it",
                    why,
                    extra={"event": "http_unavailable", "bind": s.http_bind, "port": s.http_port},
                )
                self.health_server = None
            # TLS files are checked before the (slow) model load: a bad key or certificate fails fast
            scp_ssl_context(s)  # the receiver builds its own when it starts
            self.deliverer = Deliverer(s, self.journal, self.spool, metrics=self.metrics)  # SCU TLS context
            if self._analyser is None:
                self._analyser = self._analyser_factory(s)
            self.metrics.models_loaded((m.name, m.version) for m in getattr(self._analyser, "models", ()))
            self.worker = AnalysisWorker(
                self.journal,
                self.spool,
                self._analyser,
                destinations=[d.key for d in s.destinations],
                batch_size=s.batch_size,
                max_attempts=s.analysis_max_attempts,
                poll_interval_s=s.poll_interval_s,
                build_encoded=self._build_encoded,
                on_analysed=self.deliverer.wake,
                metrics=self.metrics,
                result_workers=s.result_workers,
                sc_encoding=ScEncoding(s.sc_transfer_syntax, s.sc_jpeg_quality),
                memory_keep_mib=s.memory_keep_mib,
            )
            self.receiver = Receiver(
                s,
                self.spool,
                self.journal,
                rules=RoutingRules.from_settings(s),
                on_received=self.worker.wake,
                metrics=self.metrics,
            )
            self.deliverer.start()
            self.worker.start()
            self.receiver.start()
            if s.retention_hours > 0:
                self.purger = Purger(self.journal, self.spool, s.retention_hours * 3600, s.purge_interval_s)
                self.purger.start()
            freeze_long_lived()  # models loaded: keep full collections off them (dicom_node/gc_freeze.py)
        except BaseException:
            self._shutdown_parts()
            raise
        self._started = True
        models = [f"{m.name}@{m.version}" for m in getattr(self._analyser, "models", ())]
        logger.info(
            "ready",
            extra={
                "event": "ready",
                "ae_title": s.ae_title,
                "bind": s.bind,
                "port": self.receiver.port,
                "tls_scp": s.tls_scp,
                "tls_scu": s.tls_scu,
                "http_port": self.health,
                "models": models,
                "destinations": [str(d) for d in s.destinations],
                "ms": (time.perf_counter() - t0) * 1000,
            },
        )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop (idempotent)."""
        if not self._started:
            return
        self._started = False
        logger.info("stopping", extra={"event": "stopping"})
        self._shutdown_parts(timeout)
        gc.unfreeze()  # what start() froze may be collected again (a process that starts nodes again, tests)
        logger.info("stopped", extra={"event": "stopped"})

    def _shutdown_parts(self, timeout: float = 30.0) -> None:
        if self.purger is not None:
            self.purger.stop()
            self.purger = None
        if self.receiver is not None:
            self.receiver.stop(timeout)
        if self.worker is not None:
            self.worker.stop(timeout)
        if self.deliverer is not None:
            self.deliverer.stop(timeout)
        if self._owns_analyser and self._analyser is not None:
            close = getattr(self._analyser, "close", None)
            if close is not None:
                close()
            self._analyser = None
        if self.journal is not None:
            self.journal.close()
        if self.health_server is not None:
            self.health_server.stop()
            self.health_server = None

    def __enter__(self) -> NodeService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- foreground
    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Ask ``run_forever`` to return (signal handler)."""
        if signum is not None:
            logger.info("signal received", extra={"event": "signal", "signal": signal.Signals(signum).name})
        self._stop_requested.set()

    def run_forever(self, *, install_signal_handlers: bool = True) -> None:
        """Start (if needed), block until SIGTERM/SIGINT or ``request_stop()``, then stop."""
        previous: dict[int, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self.request_stop)
        try:
            if not self._started:
                self.start()
            while not self._stop_requested.wait(timeout=1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
