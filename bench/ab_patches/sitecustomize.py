"""A/B switch for bench/end_to_end.py: puts back a pre-fix code path in the node subprocess.

Only active when this folder is first on ``PYTHONPATH`` *and* ``CXR_BENCH_PATCH`` names a patch:

* ``old_worker``: the analysis worker's loop before the refill-per-result fix (it drained every
  finished job, building its SR + SC, before fetching new jobs for the engine).
"""

from __future__ import annotations

import os

if os.environ.get("CXR_BENCH_PATCH") == "old_worker":
    import logging
    import queue
    import time

    import dicom_node.analyse as _analyse

    _log = logging.getLogger("dicom_node.analyse")

    def _old_run(self) -> None:  # type: ignore[no-untyped-def]
        while True:
            if self._stop.is_set() and (not self._inflight or time.monotonic() > self._drain_deadline):
                return
            if not self._stop.is_set():
                try:
                    self._fill()
                except Exception:
                    _log.exception("analysis worker could not fetch jobs")
            try:
                item = self._events.get(timeout=self.poll_interval_s)
            except queue.Empty:
                continue
            while item is not None or not self._events.empty():
                if item is not None:
                    try:
                        self._finish(item)
                    except Exception:
                        _log.exception("could not record the analysis result")
                try:
                    item = self._events.get_nowait()
                except queue.Empty:
                    break

    _analyse.AnalysisWorker._run = _old_run  # type: ignore[method-assign]
