"""``cxr-node purge``: delete finished jobs (delivered, skipped, failed) older than the retention period.

Removes each such job's received instance, result files, outbox rows and journal row
(``dicom_node.storage.retention``); prints what it removed as one JSON line. Safe while the node runs.
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``purge`` arguments (imports nothing heavy)."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML settings file (default: $CXR_NODE_CONFIG); CXR_NODE_* override it")  # fmt: skip
    parser.add_argument("--older-than-hours", type=float, default=None, metavar="H",
                        help="purge jobs finished more than H hours ago (default: the retention_hours setting)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="only count what would be removed")


def main(args: argparse.Namespace) -> int:
    """Run one purge on the configured spool. Returns 0, or 2 on invalid settings / arguments."""
    from pydantic import ValidationError

    from dicom_node.cli.serve import settings_error_text
    from dicom_node.settings import load_settings
    from dicom_node.storage.journal import Journal
    from dicom_node.storage.retention import purge
    from dicom_node.storage.spool import Spool

    try:
        settings = load_settings(args.config)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        print(f"cxr-node purge: invalid settings: {settings_error_text(exc)}", file=sys.stderr)
        return 2
    hours = settings.retention_hours if args.older_than_hours is None else args.older_than_hours
    if hours < 0 or (args.older_than_hours is None and hours == 0):
        print(f"cxr-node purge: nothing to do (retention_hours={hours!r}; give --older-than-hours)", file=sys.stderr)
        return 2 if hours < 0 else 0
    if not settings.journal_path.is_file():
        print(f"cxr-node purge: no journal at {str(settings.journal_path)!r}", file=sys.stderr)
        return 2
    journal = Journal(settings.journal_path)
    try:
        result = purge(journal, Spool(settings.spool_dir, clean_tmp=False), hours * 3600, dry_run=args.dry_run)
    finally:
        journal.close()
    print(json.dumps({"older_than_hours": hours, **result.as_dict()}))
    return 0
