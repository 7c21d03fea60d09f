"""Durable files of the node: received instances (``incoming/``) and results (``outbox/``).

Every write is crash-safe: the bytes go to a temporary file in the target folder, which is
flushed and fsync'ed, then atomically renamed over the final name, and the folder itself is
fsync'ed so the rename survives a power loss.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

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


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: tmp file + fsync + ``os.replace`` + fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


class Spool:
    """The spool folder: ``incoming/`` (as received) and ``outbox/<job id>/`` (results)."""

    def __init__(self, root: Path, *, reserve_bytes: int = 0) -> None:
        if reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {reserve_bytes!r}")
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.outbox = self.root / "outbox"
        self.reserve_bytes = int(reserve_bytes)
        for d in (self.root, self.incoming, self.outbox):
            d.mkdir(parents=True, exist_ok=True)
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

    def store_incoming(self, sop_instance_uid: str, data: bytes) -> Path:
        """Durably store a received instance (encoded as received); returns its path.

        Every receive gets its own file, so duplicates of one SOP Instance UID never clash.
        """
        self.check_space(len(data))
        name = f"{_SAFE.sub('_', sop_instance_uid)[:64]}_{uuid.uuid4().hex[:12]}.dcm"
        path = self.incoming / name
        write_atomic(path, data)
        return path

    def store_result(self, job_id: int, ds: Dataset) -> Path:
        """Durably store one result dataset of job ``job_id`` (name from its SOP Instance UID)."""
        data = dataset_bytes(ds)
        self.check_space(len(data))
        path = self.outbox / str(int(job_id)) / f"{_SAFE.sub('_', str(ds.SOPInstanceUID))}.dcm"
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
