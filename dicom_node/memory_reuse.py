"""Keep freed image buffers for reuse instead of handing them back to the kernel after each image.

Every image the node handles allocates buffers of megabytes and frees them again: the decoded JPEG
(1 MB for a 1024² CXR), its float32 copy (4 MB), Pillow's copies for the resizes, the SC's canvas.
With the C library's and Pillow's defaults such buffers are often mapped fresh from the kernel
(above glibc's moving ``mmap`` threshold; Pillow frees its image blocks at once and allocates new
ones) or returned to it when the top of a heap is trimmed, so the next image pays a page fault per
4 KiB page, the kernel zero-filling every page: ~510 faults per 1024² image in the decode when images
are decoded in batches, and from 23 to 1,669 (median 580) per image in a node under load
(BENCHMARKS.md section 1, "Sixth pass"; at a steady low rate glibc's threshold settles by itself and
the node hardly faults).

:func:`keep_freed_memory` asks glibc (``mallopt``) to serve buffers up to 32 MiB (its largest
setting) from its heaps and to keep up to ``keep_mib`` of freed memory at the top of each heap, and
gives Pillow a cache of freed blocks of the same total. Both or neither: in a loaded node glibc's
thresholds alone left 415–575 faults per image, Pillow's cache alone ~1,700, the two together 23–84.
The process's resident memory then stays at its working set's high-water mark instead of breathing with
every batch (BENCHMARKS.md section 4 measures it over a soak: ~90 MiB more at the peak). Settings a
site made itself are left alone, and then nothing is set: glibc's environment variables
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES`` naming either) and
``PILLOW_BLOCKS_MAX``. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest accepted mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2)
MMAP_THRESHOLD_BYTES = 32 << 20
#: the node's default ``memory_keep_mib``
DEFAULT_KEEP_MIB = 256
#: glibc environment settings that take precedence over ours (with Pillow's PILLOW_BLOCKS_MAX)
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_GLIBC_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


@dataclass(frozen=True)
class MemoryReuse:
    """What :func:`keep_freed_memory` set: ``keep_mib``, the freed memory each glibc heap keeps, and
    ``pillow_blocks``, the freed blocks Pillow keeps (both 0 when it set nothing)."""

    keep_mib: int
    pillow_blocks: int

    @property
    def applied(self) -> bool:
        """Whether the allocators were told to keep freed memory."""
        return self.keep_mib > 0


def _site_set_allocators() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(os.environ.get(name) for name in (*_GLIBC_ENV, "PILLOW_BLOCKS_MAX")) or any(
        t in tunables for t in _GLIBC_TUNABLES
    )


def _set_glibc(keep_bytes: int) -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # the mmap threshold first (refused on 32-bit glibc: nothing changes then), then the trim threshold: a
    # fixed mmap threshold alone turns glibc's moving trim threshold off, and every freed heap top goes back
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, keep_bytes)
    )


def _set_pillow(keep_bytes: int) -> int:
    from PIL import Image

    blocks = max(1, keep_bytes // Image.core.get_block_size())
    Image.core.set_blocks_max(blocks)
    return blocks


def keep_freed_memory(keep_mib: int = DEFAULT_KEEP_MIB) -> MemoryReuse:
    """Let this process reuse up to ``keep_mib`` MiB of freed buffers per glibc heap and in Pillow's
    block cache (see the module docstring); ``keep_mib`` 0 changes nothing. Call once, at start-up."""
    if isinstance(keep_mib, bool) or not isinstance(keep_mib, int) or not 0 <= keep_mib <= 2047:
        raise ValueError(f"memory to keep must be an integer number of MiB in 0..2047, got {keep_mib!r}")
    if keep_mib == 0 or _site_set_allocators() or not _set_glibc(keep_mib << 20):
        return MemoryReuse(keep_mib=0, pillow_blocks=0)
    blocks = _set_pillow(keep_mib << 20)
    logger.debug(
        "freed buffers kept for reuse",
        extra={"event": "memory_reuse", "keep_mib": keep_mib, "pillow_blocks": blocks},
    )
    return MemoryReuse(keep_mib=keep_mib, pillow_blocks=blocks)
