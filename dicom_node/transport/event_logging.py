"""pynetdicom's standard event handlers, bound only when pynetdicom's logger would print them.

With ``pynetdicom._config.LOG_HANDLER_LEVEL = "standard"`` (its default) every association and
association server binds handlers that narrate each PDU and DIMSE message at INFO and DEBUG: for an
association request they format a line per proposed presentation context (Orthanc proposes 127) and
per accepted one, for each P-DATA PDU and C-STORE a few more. The node keeps the ``pynetdicom`` logger
at WARNING (:func:`dicom_node.logging_setup.quiet_pynetdicom`: its DEBUG lines dump data sets), so
all of that text is built and dropped: ~3 ms of CPU per association from Orthanc. The handlers write
nothing above INFO (pynetdicom 3.0.4's ``_handlers`` has no warning or error), so leaving them out
then changes no log output. :func:`sync_standard_handlers` sets the switch from the logger's level;
associations and servers created afterwards follow it (pynetdicom reads it when it creates them).
"""

from __future__ import annotations

import logging

from pynetdicom import _config

#: the logger pynetdicom writes to
PYNETDICOM_LOGGER = "pynetdicom"


def sync_standard_handlers() -> str:
    """Set ``LOG_HANDLER_LEVEL`` to "standard" when the ``pynetdicom`` logger is enabled for INFO
    (its handlers' highest level), else "none"; returns the value set."""
    level = "standard" if logging.getLogger(PYNETDICOM_LOGGER).isEnabledFor(logging.INFO) else "none"
    _config.LOG_HANDLER_LEVEL = level
    return level
