"""A/B switch for bench/end_to_end.py: puts back a pre-fix code path in the node subprocess.

Only active when this folder is first on ``PYTHONPATH`` *and* ``CXR_BENCH_PATCH`` names one or
more patches (comma-separated):

* ``old_worker``: the analysis worker's loop before the refill-per-result fix (it drained every
  finished job, building its SR + SC, before fetching new jobs for the engine). Written for the
  worker of commit f8dfc9a and earlier: it does not know the result process pool (ef0a3c4), so it
  only runs with ``CXR_NODE_RESULT_WORKERS=0``.
* ``pylibjpeg_first``: JPEG Baseline decoded in pydicom's default plug-in order (pylibjpeg-libjpeg,
  which holds the GIL) instead of Pillow first.
* ``nagle_on``: the node's SCP and SCU sockets keep Nagle's algorithm (no ``TCP_NODELAY``).
"""

from __future__ import annotations

import os

_PATCHES = {p.strip() for p in os.environ.get("CXR_BENCH_PATCH", "").split(",") if p.strip()}

if "pylibjpeg_first" in _PATCHES:
    import models.imaging.dicom_image as _dicom_image

    _dicom_image.PREFERRED_DECODER.clear()

if "nagle_on" in _PATCHES:
    import dicom_node.transport.tcp_options as _tcp_options

    _tcp_options.NODELAY_HANDLERS.clear()  # receive/deliver read this list when they connect

if "old_worker" in _PATCHES:
    import logging
    import queue
    import time

    import dicom_node.pipeline.analyse as _analyse

    _log = logging.getLogger("dicom_node.pipeline.analyse")

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
