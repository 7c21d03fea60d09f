"""No secret and no quoted header value in log lines or settings errors (issue 13 point 6)."""

from __future__ import annotations

import io
import logging
import warnings

import pytest
from pydantic import ValidationError

from dicom_node.cli.serve import settings_error_text
from dicom_node.logging_setup import configure_logging
from dicom_node.redact import redact_secrets, scrub
from dicom_node.settings import NodeSettings


def test_redact_secrets_and_quoted_values() -> None:
    assert redact_secrets("http://u:pw@h:1/x and https://a:b%40c@h") == "http://u:***@h:1/x and https://a:***@h"
    assert redact_secrets("ORTHANC@host:4242") == "ORTHANC@host:4242"
    assert scrub("Invalid value for VR PN: 'Doe^John'.") == "Invalid value for VR PN: '<redacted>'."
    assert scrub('bad "Jane" in 1.2.3') == 'bad "<redacted>" in 1.2.3'
    assert scrub("UID '1.2.840.10008.1.2' and length '42'") == "UID '1.2.840.10008.1.2' and length '42'"


def test_settings_errors_never_show_the_rest_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_DESTINATIONS", "http://cxr:Pw-Secret-1@h:8042")
    for bad in ({"bind": "0.0.0.0"}, {"port": "not-a-port"}):
        with pytest.raises(ValidationError) as err:
            NodeSettings(**bad)
        assert "Pw-Secret-1" not in settings_error_text(err.value)
    monkeypatch.setenv("CXR_NODE_DESTINATIONS", "htp://cxr:Pw-Secret-1@h:8042")  # not a DICOM destination either
    with pytest.raises(ValidationError) as err:
        NodeSettings()
    assert "Pw-Secret-1" not in settings_error_text(err.value) and "***" in settings_error_text(err.value)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_lines_are_scrubbed(fmt: str) -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", fmt, stream=stream)
    try:
        log = logging.getLogger("test.redact")
        log.warning("value %r from http://u:Pw-Secret-2@h", "Doe^John", extra={"detail": "name 'Roe^Jane'"})
        try:
            raise ValueError("cannot parse 'Moe^Jim'")
        except ValueError:
            log.exception("failed")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("Invalid value for VR PN: 'Poe^Ann'", UserWarning, stacklevel=1)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.captureWarnings(False)
    out = stream.getvalue()
    for secret in ("Doe", "Roe", "Moe", "Poe", "Pw-Secret-2"):
        assert secret not in out, out
    assert out.count("<redacted>") >= 4
