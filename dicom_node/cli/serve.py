"""``cxr-node serve``: run the DICOM node (SCP + analysis + delivery + health endpoint) in the foreground.

Runs with umask 077, so every spool file, result and journal file it creates is readable by its
own user only."""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger(__name__)

#: umask of ``cxr-node serve``: files 0600, folders 0700.
SERVE_UMASK = 0o077


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` arguments (imports nothing heavy)."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML settings file (default: $CXR_NODE_CONFIG); environment variables CXR_NODE_* override it",
    )


def settings_error_text(exc: BaseException) -> str:
    """A settings error as text without secrets: pydantic's own text repeats the input values (the whole
    settings input for a cross-field error, REST destination passwords included), so only each error's
    location and message are kept, with URL credentials redacted."""
    from pydantic import ValidationError

    from dicom_node.redact import redact_secrets

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            loc = ".".join(str(p) for p in err.get("loc", ())) or "settings"
            parts.append(f"{loc}: {err.get('msg', '')}")
        text = f"{len(parts)} error(s): " + "; ".join(parts)
    else:
        text = str(exc)
    return redact_secrets(text)


def main(args: argparse.Namespace) -> int:
    """Load settings, configure logging, run ``NodeService`` until SIGTERM/SIGINT. Returns the exit code."""
    from pydantic import ValidationError

    from dicom_node.logging_setup import configure_logging
    from dicom_node.settings import load_settings

    try:
        settings = load_settings(getattr(args, "config", None))
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        print(f"cxr-node serve: invalid settings: {settings_error_text(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, pynetdicom_level=settings.pynetdicom_log_level)

    from dicom_node.service import NodeService

    # everything the node writes (spool files, results, journal) is patient data: owner-only
    previous_umask = os.umask(SERVE_UMASK)
    logger.debug(
        "umask set",
        extra={"event": "umask", "umask": f"{SERVE_UMASK:04o}", "previous": f"{previous_umask:04o}"},
    )
    service = NodeService(settings)
    try:
        service.run_forever()
    except Exception:
        logger.exception("cxr-node serve failed", extra={"event": "fatal"})
        return 1
    return 0
