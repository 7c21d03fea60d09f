"""``cxr-node`` command line: one sub-command per module.

Each command module exposes ``configure(parser)`` (adds its arguments, imports nothing
heavy) and ``main(args) -> int``. Heavy imports (torch, monai) happen inside ``main``
so that ``cxr-node --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

#: sub-command -> (module path, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("dicom_node.cli.serve", "run the DICOM node (SCP + analysis + delivery)"),
    "purge": ("dicom_node.cli.purge", "delete finished jobs older than the retention period (files and journal rows)"),
    "synth": ("dicom_node.cli.synth", "write synthetic CXR phantoms in RSNA layout"),
    "infer": ("dicom_node.cli.infer", "run the inference engine offline on DICOM files"),
    "train": ("dicom_node.cli.train", "train a bundle (classification|detection) on RSNA-format data"),
    "evaluate": ("dicom_node.cli.evaluate", "evaluate the bundles on RSNA-format data and write a report"),
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command."""
    from dicom_node import __version__

    parser = argparse.ArgumentParser(prog="cxr-node", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cxr-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_path, help_text) in COMMANDS.items():
        module = importlib.import_module(module_path)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cxr-node`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args._module.main(args) or 0)

