"""``cxr-node synth``: write synthetic CXR phantoms in the RSNA challenge layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from dicom_node.cli.arguments import three_fractions


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth`` arguments (imports nothing heavy)."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (RSNA layout)")
    parser.add_argument("-n", "--n", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, required=True, help="dataset seed (same seed -> same bytes)")
    parser.add_argument("--size", type=int, default=1024, help="rows = columns of each image (default 1024)")
    parser.add_argument("--start-index", type=int, default=0,
                        help="index of the first image (a disjoint range gives disjoint patients)")
    parser.add_argument("--class-fractions", type=three_fractions, default=(0.4, 0.3, 0.3),
                        help="Normal,NotNormal,LungOpacity fractions (default 0.4,0.3,0.3)")


def main(args: argparse.Namespace) -> int:
    """Write the dataset and print a one-line summary."""
    from models.phantoms.synth import write_rsna_dataset

    try:
        summary = write_rsna_dataset(args.out, args.n, args.seed, size=args.size,
                                     class_fractions=args.class_fractions, start_index=args.start_index)
    except ValueError as exc:
        print(f"cxr-node synth: error: {exc}")
        return 2
    counts = ", ".join(f"{k}: {v}" for k, v in summary.class_counts.items())
    print(f"wrote {summary.n} images ({counts}; {summary.n_boxes} boxes) at {summary.size}px "
          f"to {summary.out_dir}")
    return 0
