"""``cxr-node train classification|detection``: train a bundle on RSNA-layout data."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        vals = tuple(int(p) for p in parts if p.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"image size must be S or HxW, got {text!r}") from exc
    if len(vals) == 1:
        vals = (vals[0], vals[0])
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"image size must be S or HxW, got {text!r}")
    return vals  # type: ignore[return-value]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` arguments (no heavy imports)."""
    parser.add_argument("task", choices=("classification", "detection"), help="which bundle to train")
    parser.add_argument("--data", action="append", type=Path, metavar="DIR", default=[],
                        help="RSNA-layout folder (stage_2_train_labels.csv, ...); repeat to pool several. "
                             "A classifier trained on RSNA data gets the three-class RSNA head")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=_size, default=None, metavar="S|HxW",
                        help="model input size (default: the bundle's image_size)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    parser.add_argument("--out", type=Path, default=None, metavar="BUNDLE_DIR",
                        help="bundle folder to write (default: the shipped bundle under monai_bundles/)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint (see --checkpoint)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint file (default: BUNDLE_DIR/models/checkpoint.pt)")
    parser.add_argument("--init-weights", type=Path, default=None, metavar="MODEL_PT",
                        help="start from these weights (fine-tuning) instead of a random initialisation")
    parser.add_argument("--seed", type=int, default=0, help="split/sampling/augmentation seed")
    parser.add_argument("--max-images", type=int, default=None, help="use at most N patients")
    parser.add_argument("--samples-per-epoch", type=int, default=None,
                        help="images drawn per epoch by the balanced sampler (default: training-split size)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tensorboard", type=Path, default=None, metavar="DIR")
    parser.add_argument("--pneumoniamnist", "--extra-npz", dest="extra_npz", type=Path, default=None,
                        metavar="NPZ",
                        help="classification only: a PneumoniaMNIST-layout .npz; its train split is trained on, "
                             "its val split selects the checkpoint and the decision threshold, its test split is "
                             "never read. Without --data it is the only data (the shipped Normal / Pneumonia head)")
    parser.add_argument("--workers", type=int, default=2, help="processes decoding DICOMs for the cache")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-cache", action="store_true", help="do not read/write the prepared-image cache")
    parser.add_argument("--half-weights", action="store_true", help="store model.pt in fp16 (half the size)")
    parser.add_argument("--data-description", default=None,
                        help="text for metadata cxr_node.training_data (default: generated)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def main(args: argparse.Namespace) -> int:
    """Run the training; returns the process exit status."""
    from models.training import TrainConfig, train
    from models.training.bundle_io import shipped_bundle_dir

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out if args.out is not None else shipped_bundle_dir(args.task)
    if not args.data and args.extra_npz is None:
        print("cxr-node train: give --data DIR (RSNA layout) and/or --pneumoniamnist NPZ (classification)",
              file=sys.stderr)
        return 2
    try:
        cfg = TrainConfig(
            task=args.task, data_dirs=tuple(args.data), out_dir=out, epochs=args.epochs,
            batch_size=args.batch_size, image_size=args.image_size, device=args.device, resume=args.resume,
            checkpoint=args.checkpoint, init_weights=args.init_weights, seed=args.seed, max_images=args.max_images,
            samples_per_epoch=args.samples_per_epoch, tensorboard=args.tensorboard, extra_npz=args.extra_npz,
            lr=args.lr, workers=args.workers, num_threads=args.threads, use_cache=not args.no_cache,
            half_weights=args.half_weights, data_description=args.data_description,
            command="cxr-node train " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        print(f"cxr-node train: {exc}", file=sys.stderr)
        return 2
    summary = train(cfg)
    print(f"best epoch {summary['best_epoch']}: {summary['val_metrics']}")
    print(f"bundle written to {out}")
    return 0
