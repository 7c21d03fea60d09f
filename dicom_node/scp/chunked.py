"""pynetdicom's chunked C-STORE receive steered into the node's spool: the one module that touches
pynetdicom internals, written for exactly one pynetdicom version and checked before use.

Why not the public switch alone. ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET = True`` writes each
received data set into a ``tempfile.NamedTemporaryFile`` and hands the handler ``event.dataset_path``.
That cannot keep the SCP's guarantees: the file lies in the system temp folder (persisting it means a
second full copy into the spool's file system); nothing limits its size while it arrives
(``max_instance_mb`` could only be checked after a multi-GiB transfer had filled the disk); the partial
file of an aborted transfer is never deleted; and the flag is process-wide (every other AE of the
process would change behaviour).

So, inside ``pynetdicom.dimse_messages`` only, the flag and the temp-file factory are replaced by
per-association switches: for an association of a registered AE, the factory returns that AE's
:class:`~dicom_node.storage.spool.StagedFile` (a hidden file in the spool's ``incoming/`` folder that
enforces the size limit while it is written and records a write error instead of raising); every other
association keeps pynetdicom's default. The C-STORE handler then finds its staged file through the
public ``event.dataset_path``.

This relies on the code of pynetdicom :data:`PYNETDICOM_VERSION` (pinned exactly in pyproject.toml):
``DIMSEMessage.decode_msg`` reads ``_config.STORE_RECV_CHUNKED_DATASET`` and calls
``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`` from the module's globals, writes the
fragments with ``write`` and ``file.flush``; ``StorageServiceClass.SCP`` closes the file and unlinks its
name after the handler (a spool file has been renamed by then, so the unlink finds nothing). Before the
first use, :func:`ensure_installed` checks the version and those code paths and then runs a C-STORE over
loopback through the switch (:func:`self_test`); on any other pynetdicom it raises
:class:`ChunkedReceiveUnavailable` and the node refuses to start (``chunked_receive: false`` receives in
memory through the public API only, on any pynetdicom 3).
"""

from __future__ import annotations

import inspect
import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynetdicom
import pynetdicom.dimse as _dimse
import pynetdicom.dimse_messages as _dimse_messages
import pynetdicom.service_class as _service_class

from dicom_node.storage.spool import StagedFile

logger = logging.getLogger(__name__)

#: the pynetdicom this module was written for and checked against (pyproject.toml pins it exactly)
PYNETDICOM_VERSION = "3.0.4"

#: code that must read exactly like this in the pinned pynetdicom (``what it does`` -> source fragments)
EXPECTED_SOURCE: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "decode_msg writes a C-STORE data set to NamedTemporaryFile when the flag is set": (
        _dimse_messages.DIMSEMessage.decode_msg,
        (
            "if _config.STORE_RECV_CHUNKED_DATASET and isinstance(",
            'NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")',
            "self._data_set_path = Path(self._data_set_file.name)",
            "self._data_set_file.write(data[1:])",
            "self._data_set_file.file.flush()",
        ),
    ),
    "the C-STORE SCP closes and unlinks the file after the handler": (
        _service_class.StorageServiceClass.SCP,
        ("req._dataset_file.close()", "os.unlink(req._dataset_file.name)"),
    ),
    "the DIMSE provider forgets the file once the message is complete": (
        _dimse.DIMSEServiceProvider.receive_primitive,
        ("self.message._data_set_file = None",),
    ),
}


class ChunkedReceiveUnavailable(RuntimeError):
    """This pynetdicom is not the one the chunked-receive switch was written for (or its self-test failed)."""


#: staging factory of each registered AE, by ``id()`` of the AE
_FACTORIES: dict[int, Callable[[], StagedFile]] = {}
_LOCK = threading.Lock()
_INSTALL_LOCK = threading.Lock()  # held while checking, installing and self-testing
_installed = False
_stock_ntf: Callable[..., Any] | None = None


def current_association() -> Any:
    """The association whose DUL thread is running (pynetdicom decodes P-DATA in ``DULServiceProvider``,
    whose ``assoc`` is the association), else the current thread."""
    thread = threading.current_thread()
    return getattr(thread, "assoc", None) or thread


def _factory_for_current_thread() -> Callable[[], StagedFile] | None:
    if not _FACTORIES:
        return None
    ae = getattr(current_association(), "ae", None)
    return None if ae is None else _FACTORIES.get(id(ae))


class _ConfigSwitch:
    """Stands in for ``pynetdicom._config`` inside ``pynetdicom.dimse_messages`` only:
    ``STORE_RECV_CHUNKED_DATASET`` is true for a registered AE's associations (or when set globally)."""

    def __init__(self, real: Any) -> None:
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)

    @property
    def STORE_RECV_CHUNKED_DATASET(self) -> bool:  # noqa: N802 - pynetdicom's name
        return bool(self._real.STORE_RECV_CHUNKED_DATASET) or _factory_for_current_thread() is not None


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    factory = _factory_for_current_thread()
    if factory is None:
        assert _stock_ntf is not None
        return _stock_ntf(*args, **kwargs)
    return factory()


def check_pynetdicom() -> None:
    """Raise :class:`ChunkedReceiveUnavailable` unless pynetdicom is :data:`PYNETDICOM_VERSION` with the
    code paths the switch relies on (static checks; :func:`self_test` runs one transfer)."""
    version = str(getattr(pynetdicom, "__version__", "unknown"))
    if version != PYNETDICOM_VERSION:
        raise ChunkedReceiveUnavailable(
            f"pynetdicom {version} is installed; chunked receive is written for pynetdicom {PYNETDICOM_VERSION} "
            "(pin it, or set chunked_receive: false)"
        )
    if _dimse_messages.NamedTemporaryFile is not tempfile.NamedTemporaryFile and not _installed:
        raise ChunkedReceiveUnavailable("pynetdicom.dimse_messages.NamedTemporaryFile is not tempfile's")
    if not isinstance(getattr(_dimse_messages._config, "STORE_RECV_CHUNKED_DATASET", None), bool) and not _installed:
        raise ChunkedReceiveUnavailable("pynetdicom._config.STORE_RECV_CHUNKED_DATASET is missing")
    for what, (func, fragments) in EXPECTED_SOURCE.items():
        try:
            source = inspect.getsource(func)
        except (OSError, TypeError) as exc:
            raise ChunkedReceiveUnavailable(f"cannot read pynetdicom's source ({what}): {exc}") from exc
        missing = [f for f in fragments if f not in source]
        if missing:
            raise ChunkedReceiveUnavailable(f"pynetdicom's code differs ({what}): {missing[0]!r} not found")


def _install() -> None:
    global _installed, _stock_ntf
    _stock_ntf = _dimse_messages.NamedTemporaryFile
    _dimse_messages._config = _ConfigSwitch(_dimse_messages._config)  # type: ignore[assignment]
    _dimse_messages.NamedTemporaryFile = _named_temporary_file  # type: ignore[assignment]
    _installed = True


def register(ae: Any, factory: Callable[[], StagedFile]) -> None:
    """Receive every C-STORE data set of ``ae``'s associations into ``factory()`` (after :func:`ensure_installed`)."""
    if not _installed:
        raise RuntimeError("chunked receive is not installed: call ensure_installed() first")
    with _LOCK:
        _FACTORIES[id(ae)] = factory


def unregister(ae: Any) -> None:
    """``ae``'s associations go back to pynetdicom's default (in-memory) receive."""
    with _LOCK:
        _FACTORIES.pop(id(ae), None)


def dataset_path_of(event: Any) -> str | None:
    """Where a C-STORE event's data set was received to (public ``event.dataset_path``); None: in memory."""
    try:
        path = event.dataset_path
    except AttributeError:  # received in memory
        return None
    return None if path is None else str(path)


def self_test() -> None:
    """One C-STORE over loopback into a registered AE: the data set must arrive, byte for byte, in the
    factory's staged file, be visible to the handler through ``event.dataset_path``, and the file's
    name must be unlinked by pynetdicom after the handler. Raises :class:`ChunkedReceiveUnavailable`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    from pynetdicom import AE, evt

    from dicom_node.transport.reactor_checkpoint import install_checkpoint, pause_reactor

    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "SELFTEST"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cxr-chunked-selftest-") as folder:
        made: list[StagedFile] = []

        def factory() -> StagedFile:
            made.append(StagedFile(Path(folder), max_bytes=1 << 20))
            return made[-1]

        def on_store(event: Any) -> int:
            name = dataset_path_of(event)
            staged = next((m for m in made if m.name == name), None)
            seen["staged"] = staged
            if staged is not None:
                staged.finish_writing()
                seen["bytes"] = Path(staged.name).read_bytes()
            return 0x0000

        scp = AE(ae_title="SELFTEST")
        scp.add_supported_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        scu = AE(ae_title="SELFTEST")
        scu.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 10
        register(scp, factory)
        server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SELFTEST")
            if not assoc.is_established:
                raise ChunkedReceiveUnavailable("self-test: loopback association not established")
            install_checkpoint(assoc)
            try:
                pause_reactor(assoc)  # pynetdicom's own pause can let the reactor take the response
                status = assoc.send_c_store(ds)
            finally:
                assoc.release()
        finally:
            unregister(scp)
            scp.shutdown()
        if status is None or int(getattr(status, "Status", -1)) != 0:
            raise ChunkedReceiveUnavailable(f"self-test: C-STORE answered {status!r}")
        if len(made) != 1 or seen.get("staged") is not made[0]:
            raise ChunkedReceiveUnavailable("self-test: the data set did not arrive in the node's staged file")
        from pydicom import dcmread
        from pydicom.filebase import DicomBytesIO

        received = dcmread(DicomBytesIO(seen["bytes"]))
        if received.SOPInstanceUID != ds.SOPInstanceUID or received.PatientID != "SELFTEST":
            raise ChunkedReceiveUnavailable("self-test: the staged file does not hold the data set sent")
        if Path(made[0].name).exists():
            raise ChunkedReceiveUnavailable("self-test: pynetdicom did not unlink the file after the handler")


def ensure_installed() -> None:
    """Check pynetdicom, install the switch and run :func:`self_test` (once per process; thread-safe).

    Raises :class:`ChunkedReceiveUnavailable` on an unknown pynetdicom; the switch is then left out."""
    global _installed
    with _INSTALL_LOCK:
        if _installed:
            return
        check_pynetdicom()
        _install()
        try:
            self_test()
        except Exception as exc:
            _dimse_messages._config = _dimse_messages._config._real  # type: ignore[attr-defined]
            _dimse_messages.NamedTemporaryFile = _stock_ntf  # type: ignore[assignment]
            _installed = False
            if isinstance(exc, ChunkedReceiveUnavailable):
                raise
            raise ChunkedReceiveUnavailable(f"self-test failed: {type(exc).__name__}: {exc}") from exc
    logger.info("chunked receive installed", extra={"event": "chunked_receive_ready", "pynetdicom": PYNETDICOM_VERSION})
