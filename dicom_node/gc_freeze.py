"""Keep the garbage collector off the long-lived start-up objects.

After start-up a node process holds hundreds of thousands of objects that live as long as it does:
torch, MONAI and the loaded networks in the node (about 550,000 tracked objects), pydicom and
highdicom in each result process (about 107,000). Every full (generation 2) collection walks all of
them: ~17 ms in a result process and ~220 ms in the node on the 2-core VM (``bench/gc_cost.py``,
BENCHMARKS.md), a stall with the GIL held that lands on whichever image is being built or received. ``gc.freeze()`` moves
them to the permanent generation, which collections skip; what is allocated afterwards is
collected as before. Garbage present at that point is collected first, so nothing is leaked.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_long_lived() -> int:
    """Collect, then freeze every object alive now (start-up done); returns how many are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug(
        "start-up objects frozen for the garbage collector", extra={"event": "gc_freeze", "frozen": frozen}
    )
    return frozen
