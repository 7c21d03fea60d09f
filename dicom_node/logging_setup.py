"""Structured logging for the node: text or JSON lines, never patient name or ID, never a secret.

Every message, exception text and string field goes through ``dicom_node.redact.scrub``: URL
credentials and quoted values (what third-party messages quote from a data set header) are redacted.

Log records carry their structured fields through ``extra={...}`` (``event``,
``sop_instance_uid``, ``sop_class_uid``, ``calling_aet``, ``ms``, ...). The formatters
append every such field to the line. A filter drops any field whose name looks like a
patient identifier, and pynetdicom's logger (which dumps datasets at DEBUG) is kept at
WARNING unless asked otherwise.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from typing import Any, TextIO

from dicom_node.redact import redact_secrets, scrub

#: Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
#: Structured fields that must never reach a log line.
FORBIDDEN_FIELDS = frozenset({"patient_name", "patientname", "patient_id", "patientid", "patient_birth_date"})
_HANDLER_MARK = "_cxr_node_handler"


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _STANDARD_ATTRS and not k.startswith("_") and k.lower() not in FORBIDDEN_FIELDS
    }


def _jsonable(value: Any, key: str = "") -> Any:
    if isinstance(value, float) and (key == "ms" or key.endswith("_ms")):
        return round(value, 2)
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for k, v in _extra_fields(record).items():
            out.setdefault(k, _jsonable(v, k))
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = scrub(record.exc_text)
        # ASCII-only: U+2028/U+0085 and friends in a logged value must not split a JSON line
        return json.dumps(out, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.000Z INFO logger: message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[
            :-3
        ]
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in _extra_fields(record).items())
        line = f"{ts}Z {record.levelname} {record.name}: {scrub(record.getMessage())}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            line += "\n" + scrub(record.exc_text)
        return line


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    text = scrub(value) if isinstance(value, str) else redact_secrets(str(value))
    return json.dumps(text) if (" " in text or not text) else text


def make_formatter(fmt: str) -> logging.Formatter:
    """``TextFormatter`` for "text", ``JsonFormatter`` for "json"; ``ValueError`` otherwise."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")


def configure_logging(
    level: str = "INFO",
    fmt: str = "text",
    *,
    stream: TextIO | None = None,
    pynetdicom_level: str = "WARNING",
) -> logging.Handler:
    """Install one handler on the root logger (replacing a previous one of ours) and return it."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet_pynetdicom(pynetdicom_level)
    quiet_highdicom()
    # pydicom's warnings go through this handler (structured, one line) instead of raw stderr
    logging.captureWarnings(True)
    return handler


def quiet_pynetdicom(level: str = "WARNING") -> None:
    """Keep pynetdicom's logger (DEBUG dumps dataset contents, incl. patient data) at ``level``; above
    INFO, pynetdicom's narrating event handlers are not bound (``dicom_node.transport.event_logging``)."""
    from dicom_node.transport.event_logging import PYNETDICOM_LOGGER, sync_standard_handlers

    logging.getLogger(PYNETDICOM_LOGGER).setLevel(level.upper())
    sync_standard_handlers()


def quiet_highdicom() -> None:
    """Keep highdicom's logger at INFO or above: at DEBUG it writes about 100 lines per result
    object ("copied attribute ...", "skipped attribute ..."), which the node's result processes
    ship back to the node and the node then writes, for every image."""
    logging.getLogger("highdicom").setLevel(logging.INFO)
