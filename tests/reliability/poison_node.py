"""``cxr-node serve`` with a simulated native crash: fault injection for ``test_poison.py``.

Decoding a data set whose Image Comments equal ``$CXR_TEST_POISON_MARKER`` kills the process with
SIGKILL, as a segfault in a decoder or the OOM killer would. Nothing else is changed: the real node,
real models, real journal. Run as ``python tests/reliability/poison_node.py`` (same settings as
``cxr-node serve``, from the environment).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import models.imaging.dicom_image as dicom_image

MARKER = os.environ["CXR_TEST_POISON_MARKER"]
_real = dicom_image.load_source_image


def _load(ds: Any, *args: Any, **kwargs: Any) -> Any:
    if str(ds.get("ImageComments", "") or "") == MARKER:
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(ds, *args, **kwargs)


dicom_image.load_source_image = _load  # before the engine binds it

if __name__ == "__main__":
    from dicom_node.cli import main

    sys.exit(main(["serve"]))
