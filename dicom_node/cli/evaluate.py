"""``cxr-node evaluate``: evaluate both bundles through the inference engine and write a report.

RSNA-layout data (``--data DIR``): the chosen split (patient-level, as training split it:
``split_patients`` with ``--seed``/``--fractions``, or the ids of ``--split-file``) is run
through :class:`~models.inference.engine.InferenceEngine`; classification and detection figures,
``predictions.csv``, ``report.json``, ``report.md`` and PNG plots go to ``--out``.

PneumoniaMNIST (``--npz PATH --npz-split test``): classification only (label 1 = pneumonia),
the 28-px arrays are submitted with ``InferenceEngine.submit_array`` and upsampled by the
same ``preprocess.prepare`` as DICOM input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dicom_node.cli.arguments import three_fractions

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` arguments (no heavy imports here)."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, metavar="DIR", help="RSNA-layout data folder (labels CSV + images)")
    src.add_argument(
        "--npz", type=Path, metavar="PATH", help="PneumoniaMNIST-layout .npz (classification only)"
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "train", "all"),
        help="split of --data (default test)",
    )
    parser.add_argument(
        "--split-file", type=Path, metavar="FILE", help="split JSON written by training (write_split)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="split seed (default: the one recorded in the classification bundle's metadata, else 0)",
    )
    parser.add_argument(
        "--fractions",
        type=three_fractions,
        default=None,
        metavar="TR,VA,TE",
        help="split fractions (default 0.8,0.1,0.1)",
    )
    parser.add_argument(
        "--npz-split", default="test", choices=("train", "val", "test"), help="split of --npz"
    )
    parser.add_argument(
        "--bundles",
        type=Path,
        metavar="DIR",
        help="folder holding both bundles (default: $CXR_NODE_BUNDLES_DIR or the repo's monai_bundles/)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument("--out", type=Path, default=Path("evaluation_report"), metavar="REPORT_DIR")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate at most N images")
    parser.add_argument(
        "--box-floor",
        type=float,
        default=0.05,
        metavar="S",
        help="keep detector boxes scoring >= S for mAP (default 0.05); the RSNA metric uses the bundle's threshold",
    )
    parser.add_argument(
        "--n-boot", type=int, default=2000, metavar="N", help="bootstrap replicates (default 2000)"
    )
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="max batch size (default 8)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    parser.add_argument("--no-sample-images", action="store_true",
                        help="leave out the grid of sample images (for a report that is shared outside the site)")


def main(args: argparse.Namespace) -> int:
    """Run ``cxr-node evaluate``; 0 on success, 2 on bad arguments or unreadable inputs."""
    from models.errors import InferenceCoreError
    from models.evaluation.evaluate import EvaluationConfig, evaluate
    from models.inference.engine import default_bundles_dir

    try:
        config = EvaluationConfig(
            out_dir=args.out,
            bundles_dir=args.bundles or default_bundles_dir(),
            data_dir=args.data,
            split=args.split,
            split_file=args.split_file,
            seed=args.seed,
            fractions=args.fractions,
            npz=args.npz,
            npz_split=args.npz_split,
            device=args.device,
            max_images=args.max_images,
            box_floor=args.box_floor,
            n_boot=args.n_boot,
            num_threads=args.threads,
            max_batch_size=args.batch_size,
            sample_images=not args.no_sample_images,
        )
        report = evaluate(config)
    except (ValueError, FileNotFoundError, InferenceCoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    cls = report["classification"]
    det = report.get("detection") or {}
    summary = [f"images {report['n_images']} (analysed {report['n_analysed']})"]
    if cls.get("available"):
        lo, hi = cls["roc_auc_ci95"]
        summary.append(f"AUC {cls['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}]")
    if det and det.get("rsna_map") is not None:
        summary.append(f"RSNA mAP {det['rsna_map']:.3f}")
    if det and det.get("map_at_iou_0.5") is not None:
        summary.append(f"mAP@0.5 {det['map_at_iou_0.5']:.3f}")
    print(f"{'; '.join(summary)}; report in {config.out_dir}")
    return EXIT_OK
