"""``cxr-node serve`` whose model load never finishes: fault injection for the replica tests.

Stands for a replica stuck loading its models (a hung model volume, a GPU that never answers): the
health endpoint answers (``/readyz`` 503, "models not loaded"), the SCP never starts. Nothing else
is changed. Run as ``python tests/reliability/stalled_node.py`` (settings from the environment, as
``cxr-node serve``); stop it with SIGKILL.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import dicom_node.service as service


def _never_loads(_settings: Any) -> Any:
    threading.Event().wait()  # forever
    raise AssertionError("unreachable")


service._build_engine = _never_loads  # NodeService picks its default factory when it is built

if __name__ == "__main__":
    from dicom_node.cli import main

    sys.exit(main(["serve"]))
