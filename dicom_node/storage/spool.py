"""Durable files of the node: received instances (``incoming/``) and results (``outbox/``).

Every write is crash-safe: the bytes go to a temporary file in the target folder, which is
flushed and fsync'ed, then atomically renamed over the final name, and the folder itself is
fsync'ed so the rename survives a power loss.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.storage.fast_write import encode_file

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^0-9A-Za-z.\-]")
#: errno values that mean "no space left" (ENOSPC, EDQUOT).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class SpoolFullError(OSError):
    """Free space in the spool is (or would fall) below the configured reserve."""

    def __init__(self, free_bytes: int, needed_bytes: int, reserve_bytes: int, root: Path) -> None:
        super().__init__(
            errno.ENOSPC,
            f"spool {str(root)!r}: {free_bytes} bytes free, {needed_bytes} needed plus a reserve of {reserve_bytes}",
        )
        self.free_bytes = free_bytes
        self.needed_bytes = needed_bytes
        self.reserve_bytes = reserve_bytes


class InstanceTooLargeError(OSError):
    """A received data set is larger than the configured maximum (``max_instance_mb``)."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(errno.EFBIG, f"the data set is larger than max_instance_mb ({limit_bytes // 2**20} MiB)")
        self.limit_bytes = limit_bytes


def is_out_of_space(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT ``OSError``s, ``SpoolFullError`` and SQLite's "disk is full"."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    return "disk is full" in str(exc).lower() or "database or disk is full" in str(exc).lower()


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames/creations inside it are durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class StagedFile:
    """A file being written straight into a spool folder while it is received (hidden ``.*.tmp``
    name until :func:`write_atomic` commits it), for pynetdicom's chunked C-STORE receive.

    It has the file-object surface pynetdicom uses (``name``, ``write``, ``file.flush``,
    ``close``). A write error (e.g. ENOSPC) does not raise into pynetdicom: it is recorded in
    ``error``, the partial file is deleted at once and further data is discarded, so that the
    C-STORE handler can answer 0xA7xx. A staged file created with ``error`` set never touches
    the disk (used when free space is already below the reserve).
    """

    def __init__(
        self, folder: Path, *, error: OSError | None = None, buffer_size: int = 1 << 20, max_bytes: int | None = None
    ) -> None:
        if buffer_size <= 0:
            raise ValueError(f"buffer_size must be > 0, got {buffer_size!r}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0 or None, got {max_bytes!r}")
        #: beyond this many bytes the file is deleted and the rest discarded (``InstanceTooLargeError``)
        self.max_bytes = max_bytes
        self.path = Path(folder) / f".rcv-{uuid.uuid4().hex}.tmp"
        self.name = str(self.path)
        self.error: OSError | None = error
        self.size = 0
        self.owner: Any = None  # the association that writes it (set by the receiver)
        self._fh: BinaryIO | None = None
        if error is None:
            try:
                self._fh = open(self.path, "xb", buffering=buffer_size)  # noqa: SIM115 - closed in close()
            except OSError as exc:
                self._fail(exc)

    @property
    def file(self) -> StagedFile:
        """pynetdicom calls ``.file.flush()`` after each fragment; see :meth:`flush`."""
        return self

    @property
    def failed(self) -> bool:
        return self.error is not None

    def _fail(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc
        self.discard()

    def write(self, data: bytes) -> int:
        """Append ``data``; never raises (a failure is kept in ``error``)."""
        n = len(data)
        if self.error is None and self.max_bytes is not None and self.size + n > self.max_bytes:
            self._fail(InstanceTooLargeError(self.max_bytes))  # never spooled whole: the file goes now
        if self.error is None and self._fh is not None:
            try:
                self._fh.write(data)
                self.size += n
            except OSError as exc:
                self._fail(exc)
        return n

    def flush(self) -> None:
        """No-op: the data is flushed and synced once, by :meth:`sync` (fewer syscalls per fragment)."""

    def finish_writing(self) -> None:
        """Push buffered data to the OS so the file can be read back; a failure goes to ``error``."""
        if self.error is None and self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._fail(exc)

    def sync(self) -> None:
        """Flush, fsync and close; raises ``error`` if a write had failed."""
        if self.error is not None:
            raise self.error
        if self._fh is None:
            raise OSError(errno.EBADF, f"staged file {self.name!r} is closed")
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._fail(exc)
            raise
        self.close()

    def close(self) -> None:
        """Close the file (idempotent; never raises, a close error is kept in ``error``)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError as exc:
                if self.error is None:
                    self.error = exc

    def discard(self) -> None:
        """Close and delete the file (idempotent)."""
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError:  # pragma: no cover - best effort; Spool() removes .*.tmp on start
            logger.warning(
                "could not remove staged file", extra={"event": "spool_cleanup", "path": self.name}
            )


def write_atomic(path: Path, data: bytes | StagedFile) -> None:
    """Make ``data`` durable at ``path``: tmp file + fsync + ``os.replace`` + fsync of the folder.

    ``data`` is bytes, or a :class:`StagedFile` already written in ``path``'s folder (it is synced
    and renamed; on failure it is deleted).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, StagedFile):
        if data.path.parent != path.parent:
            raise ValueError(f"staged file {data.name!r} is not in the folder of {str(path)!r}")
        try:
            data.sync()
            os.replace(data.path, path)
        except BaseException:
            data.discard()
            raise
        fsync_dir(path.parent)
        return
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def dataset_bytes(ds: Dataset) -> bytes:
    """Encode ``ds`` in the DICOM file format (preamble + file meta) as bytes."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return encode_file(ds)  # the bytes of dcmwrite(..., enforce_file_format=True), written faster


class Spool:
    """The spool folder: ``incoming/`` (as received) and ``outbox/<job id>/`` (results)."""

    def __init__(self, root: Path, *, reserve_bytes: int = 0, clean_tmp: bool = True) -> None:
        """``clean_tmp``: remove temporary files a crash left behind (only the node itself, at start:
        a tool working next to a running node, e.g. ``cxr-node purge``, must not)."""
        if reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {reserve_bytes!r}")
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.outbox = self.root / "outbox"
        self.reserve_bytes = int(reserve_bytes)
        for d in (self.root, self.incoming, self.outbox):
            d.mkdir(parents=True, exist_ok=True)
        if clean_tmp:
            self._clean_tmp()

    def _clean_tmp(self) -> None:
        """Remove temporary files left by a crash mid-write (never acknowledged)."""
        for d in (self.incoming, self.outbox):
            for tmp in d.rglob(".*.tmp"):
                try:
                    tmp.unlink()
                    logger.info(
                        "removed partial spool file", extra={"event": "spool_cleanup", "path": str(tmp)}
                    )
                except OSError:  # pragma: no cover
                    pass

    def free_bytes(self) -> int:
        """Free bytes on the spool's file system (for the current user)."""
        return shutil.disk_usage(self.root).free

    def check_space(self, needed_bytes: int) -> None:
        """Raise ``SpoolFullError`` if writing ``needed_bytes`` would cut into the reserve."""
        free = self.free_bytes()
        if free - needed_bytes < self.reserve_bytes:
            raise SpoolFullError(free, needed_bytes, self.reserve_bytes, self.root)

    def stage_incoming(self, max_bytes: int | None = None) -> StagedFile:
        """A :class:`StagedFile` in ``incoming/`` to receive one instance into (at most ``max_bytes``).
        If free space is already below the reserve it is returned failed (``SpoolFullError``), without a file."""
        try:
            self.check_space(0)
        except SpoolFullError as exc:
            return StagedFile(self.incoming, error=exc)
        return StagedFile(self.incoming, max_bytes=max_bytes)

    def store_incoming(self, sop_instance_uid: str, data: bytes | StagedFile) -> Path:
        """Durably store a received instance (encoded as received); returns its path.

        ``data`` is the encoded bytes or a :class:`StagedFile` from :meth:`stage_incoming` (then
        the space check counts the bytes already written: free space must still cover the reserve).
        Every receive gets its own file, so duplicates of one SOP Instance UID never clash.
        """
        if isinstance(data, StagedFile):
            if data.error is not None:
                raise data.error
            try:
                self.check_space(0)
            except SpoolFullError:
                data.discard()
                raise
        else:
            self.check_space(len(data))
        name = f"{_SAFE.sub('_', sop_instance_uid)[:64]}_{uuid.uuid4().hex[:12]}.dcm"
        path = self.incoming / name
        write_atomic(path, data)
        return path

    def store_result(self, job_id: int, ds: Dataset) -> Path:
        """Durably store one result dataset of job ``job_id`` (name from its SOP Instance UID)."""
        return self.store_result_bytes(job_id, str(ds.SOPInstanceUID), dataset_bytes(ds))

    def store_result_bytes(self, job_id: int, sop_instance_uid: str, data: bytes) -> Path:
        """Durably store one already-encoded result of job ``job_id`` (Part 10 bytes)."""
        self.check_space(len(data))
        path = self.outbox / str(int(job_id)) / f"{_SAFE.sub('_', sop_instance_uid)}.dcm"
        write_atomic(path, data)
        return path

    def remove_orphans(self, known_paths: set[str]) -> int:
        """Delete ``incoming/`` files no journal row refers to (written, never acknowledged); returns how many."""
        removed = 0
        known_names = {Path(p).name for p in known_paths}
        for f in self.incoming.glob("*.dcm"):
            if f.name not in known_names:
                self.remove(f)
                removed += 1
        return removed

    def remove(self, path: str | Path) -> None:
        """Delete a spool file (and its job folder in the outbox once empty); missing files are fine."""
        p = Path(path)
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        parent = p.parent
        if parent.parent == self.outbox:
            try:
                parent.rmdir()
            except OSError:
                pass
