"""pynetdicom's narrating event handlers are bound only when its logger prints them
(dicom_node.transport.event_logging)."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pynetdicom._handlers
import pytest
from pynetdicom import _config, evt
from pynetdicom._handlers import standard_dimse_recv_handler, standard_pdu_recv_handler
from service_helpers import running_receiver, verification_association

from dicom_node.logging_setup import quiet_pynetdicom
from dicom_node.transport.event_logging import sync_standard_handlers


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    logger = logging.getLogger("pynetdicom")
    level, switch = logger.level, _config.LOG_HANDLER_LEVEL
    yield
    logger.setLevel(level)
    _config.LOG_HANDLER_LEVEL = switch


def _echo_through_receiver(tmp_path: Path) -> tuple[list, list]:
    """C-ECHO to a fresh Receiver; (the server's PDU handlers, the association's DIMSE handlers)."""
    with (
        running_receiver(tmp_path / "spool") as (receiver, settings),
        verification_association(receiver, settings) as assoc,
    ):
        assert assoc.send_c_echo().Status == 0
        server = receiver.ae._servers[0]
        dimse = [h for a in server.active_associations for h in a.get_handlers(evt.EVT_DIMSE_RECV)]
        return list(server.get_handlers(evt.EVT_PDU_RECV)), dimse


def test_above_info_the_handlers_are_not_bound(tmp_path: Path) -> None:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    pdu, dimse = _echo_through_receiver(tmp_path)
    assert _config.LOG_HANDLER_LEVEL == "none"
    assert standard_pdu_recv_handler not in [h[0] if isinstance(h, tuple) else h for h in pdu]
    assert standard_dimse_recv_handler not in [h[0] if isinstance(h, tuple) else h for h in dimse]


def test_at_info_they_are_bound_and_narrate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("pynetdicom").setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger="pynetdicom"):
        pdu, _ = _echo_through_receiver(tmp_path)
    assert _config.LOG_HANDLER_LEVEL == "standard"
    assert standard_pdu_recv_handler in [h[0] if isinstance(h, tuple) else h for h in pdu]
    assert any("Received Echo Request" in r.getMessage() for r in caplog.records)


def test_quiet_pynetdicom_sets_the_switch() -> None:
    quiet_pynetdicom("WARNING")
    assert _config.LOG_HANDLER_LEVEL == "none"
    quiet_pynetdicom("DEBUG")
    assert _config.LOG_HANDLER_LEVEL == "standard"
    quiet_pynetdicom("INFO")
    assert sync_standard_handlers() == "standard"


def test_the_handlers_write_nothing_above_info() -> None:
    """Why leaving them out above INFO changes no log line: pynetdicom's handlers module (pinned
    version) logs at INFO and DEBUG only."""
    source = inspect.getsource(pynetdicom._handlers)
    calls = set(re.findall(r"LOGGER\.(\w+)\(", source))
    assert calls and calls <= {"info", "debug"}, calls
