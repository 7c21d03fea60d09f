"""The decoded image handed to a result process through shared memory instead of the pool's pipe.

The SC is built in a result process from the image the engine decoded (4 MiB of float32 for a 1024²
CXR, 29 MiB for a 3000 x 2500 DX). Sent as a job argument, it is pickled, written through a 64 KiB
pipe a piece at a time, read back and unpickled: ~8-11 ms of CPU (node + result process) per 1024²
image on this project's 2-core machine and ~105-125 ms per 3000 x 2500 DX (``bench/handoff_ab.py``;
BENCHMARKS.md section 1, "Seventh pass"). Here the node copies the pixels once into a POSIX
shared-memory segment and sends only its name (:class:`SharedImageRef`); the result process maps
the segment read-only and renders from it without a copy.

* **Segments are reused.** A fresh segment costs a page fault per 4 KiB page on the node's side;
  :class:`SharedImages` keeps released segments (up to ``keep_bytes``) for the next images.
* **Nothing leaks.** A segment goes back when its job's future is done, whatever the outcome (built,
  failed, a result process killed, the pool shut down); :meth:`SharedImages.close` unlinks the kept
  ones at stop; a node killed outright leaves them to ``multiprocessing``'s resource tracker, which
  unlinks every segment the node created and did not unlink.
* **A full /dev/shm is an ordinary error.** Each segment's pages are reserved (``posix_fallocate``)
  before they are written: without that, writing into a tmpfs that has run out of space kills the
  process with SIGBUS (a container's /dev/shm is 64 MiB unless configured). When the segment
  cannot be had, :meth:`SharedImages.share` returns None and the image goes through the pipe as before.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from multiprocessing import shared_memory

import numpy as np

from models.imaging.dicom_image import SourceImage

logger = logging.getLogger(__name__)

#: freed segments the node keeps for the next images (bytes, in all)
DEFAULT_KEEP_BYTES = 128 << 20
#: Linux's MAP_POPULATE (0 elsewhere)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
#: segment sizes are rounded up to this, so that images of similar sizes share segments
_GRANULE = 1 << 20


@dataclass(frozen=True)
class SharedImageRef:
    """What a result process needs to map a shared :class:`SourceImage`: the segment's name and the
    image's attributes other than its pixels (``rows`` x ``columns`` float32, C order, in the segment)."""

    name: str
    #: ``(field, value)`` of every :class:`SourceImage` field but ``pixels``
    attributes: tuple[tuple[str, object], ...]

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"shared memory name must be a non-empty name without '/', got {self.name!r}")
        rows, columns = self.shape
        if not (isinstance(rows, int) and isinstance(columns, int) and rows >= 1 and columns >= 1):
            raise ValueError(f"shared image must have rows and columns >= 1, got {rows!r} x {columns!r}")

    @classmethod
    def of(cls, name: str, image: SourceImage) -> SharedImageRef:
        """The reference to ``image``'s pixels in the segment ``name``."""
        return cls(
            name, tuple((f.name, getattr(image, f.name)) for f in fields(SourceImage) if f.name != "pixels")
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the pixel array."""
        values = dict(self.attributes)
        return values.get("rows"), values.get("columns")  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        """Size of the pixel array in bytes."""
        rows, columns = self.shape
        return rows * columns * 4


class SharedImageLease:
    """One image in one segment, until :meth:`release` (idempotent, thread-safe, never raises)."""

    def __init__(self, owner: SharedImages, segment: shared_memory.SharedMemory, ref: SharedImageRef) -> None:
        self._owner, self._segment, self.ref = owner, segment, ref
        self._lock = threading.Lock()

    def release(self) -> None:
        """Give the segment back (to be reused or unlinked); the result process is done with it."""
        with self._lock:
            segment, self._segment = self._segment, None
        if segment is not None:
            self._owner._give_back(segment)


class SharedImages:
    """The node's side: images put in shared memory for the result processes, segments reused."""

    def __init__(
        self, keep_bytes: int = DEFAULT_KEEP_BYTES, *, on_refused: Callable[[], None] | None = None
    ) -> None:
        """``on_refused``: called (outside any lock) for each image left to the pipe, e.g. a metrics counter."""
        if keep_bytes < 0:
            raise ValueError(f"keep_bytes must be >= 0, got {keep_bytes!r}")
        if on_refused is not None and not callable(on_refused):
            raise ValueError(f"on_refused must be callable, got {on_refused!r}")
        self.keep_bytes = keep_bytes
        self._on_refused = on_refused
        self._free: list[shared_memory.SharedMemory] = []
        self._lock = threading.Lock()
        self._closed = False
        #: images put in shared memory
        self.shared = 0
        #: images left to the pipe because no segment could be had
        self.refused = 0

    def share(self, image: SourceImage) -> SharedImageLease | None:
        """``image``'s pixels copied into a segment, or None where shared memory cannot be had."""
        pixels = image.pixels
        segment = self._take(pixels.nbytes)
        if segment is None:
            try:
                segment = _new_segment(pixels.nbytes)
            except (OSError, ValueError) as exc:
                with self._lock:
                    self.refused += 1
                    first = self.refused == 1
                if first:  # once: the cause is the same for every image (a small /dev/shm)
                    logger.warning(
                        "shared memory unavailable: decoded images go to the result processes through the pipe",
                        extra={
                            "event": "shared_image_unavailable",
                            "bytes": pixels.nbytes,
                            "error": str(exc),
                        },
                    )
                if self._on_refused is not None:
                    self._on_refused()
                return None
        view = np.ndarray(pixels.shape, dtype=np.float32, buffer=segment.buf)
        view[...] = pixels
        del view  # no export of the segment's buffer may outlive this call (close() refuses then)
        with self._lock:
            self.shared += 1
        return SharedImageLease(self, segment, SharedImageRef.of(segment.name, image))

    def close(self) -> None:
        """Unlink the kept segments; segments released later are unlinked at once."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for segment in free:
            _unlink(segment)

    def _take(self, nbytes: int) -> shared_memory.SharedMemory | None:
        """The smallest kept segment that holds ``nbytes`` (and is at most twice that), or None."""
        with self._lock:
            fits = [s for s in self._free if nbytes <= s.size <= 2 * max(nbytes, _GRANULE)]
            if not fits:
                return None
            best = min(fits, key=lambda s: s.size)
            self._free.remove(best)
            return best

    def _give_back(self, segment: shared_memory.SharedMemory) -> None:
        with self._lock:
            kept = sum(s.size for s in self._free)
            if not self._closed and kept + segment.size <= self.keep_bytes:
                self._free.append(segment)
                return
        _unlink(segment)


def _new_segment(nbytes: int) -> shared_memory.SharedMemory:
    size = -(-max(nbytes, 1) // _GRANULE) * _GRANULE
    segment = shared_memory.SharedMemory(create=True, size=size)
    fd = getattr(segment, "_fd", -1)  # CPython's POSIX SharedMemory keeps its descriptor open
    try:
        if fd < 0:
            raise OSError("no descriptor to reserve the segment's pages with")
        os.posix_fallocate(fd, 0, size)  # ENOSPC now, not SIGBUS at the first write
    except BaseException:
        _unlink(segment)
        raise
    return segment


def _unlink(segment: shared_memory.SharedMemory) -> None:
    try:
        segment.close()
    except BufferError:  # pragma: no cover - a view still exported: the mapping goes with it
        pass
    try:
        segment.unlink()
    except FileNotFoundError:  # pragma: no cover - unlinked already (by the resource tracker)
        pass


@contextmanager
def attached(ref: SharedImageRef) -> Iterator[SourceImage]:
    """The result process's side: the shared image as a :class:`SourceImage` whose pixels are a
    read-only view of the segment, for the duration of the ``with`` block (no copy)."""
    # the segment is mapped directly, not through SharedMemory: that would register it with the
    # resource tracker a second time, and the tracker would report it as leaked when the node unlinks it
    posixshmem = getattr(shared_memory, "_posixshmem", None)
    if posixshmem is None:  # pragma: no cover - not POSIX
        raise OSError("POSIX shared memory is not available")
    fd = posixshmem.shm_open("/" + ref.name, os.O_RDONLY, mode=0o600)
    try:
        # MAP_POPULATE: the page tables filled in one call, not a fault per few pages as the renderer reads
        mapping = mmap.mmap(fd, ref.nbytes, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    rows, columns = ref.shape
    pixels = np.frombuffer(mapping, dtype=np.float32, count=rows * columns).reshape(rows, columns)
    image = SourceImage(pixels=pixels, **dict(ref.attributes))  # type: ignore[arg-type]
    try:
        yield image
    finally:
        del image, pixels
        try:
            mapping.close()
        except BufferError:  # a caller kept a view: unmapped when the last one goes
            logger.debug("shared image still referenced after its build", extra={"name": ref.name})
