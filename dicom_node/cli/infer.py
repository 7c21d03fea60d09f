"""``cxr-node infer``: run the inference engine offline on DICOM files and folders.

Every file is submitted to one :class:`~models.inference.engine.InferenceEngine` (a bounded window of
them in flight, so batching happens), and one line per image is printed in input order:
``Findings.to_json()`` plus ``"file"`` with ``--json``, else a readable line. A file that
cannot be read or decoded prints an error line (file and SOP Instance UID) on stderr; the
other files are still processed and the exit code is 1 at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SOME_FAILED = 1
#: bad arguments, or the engine cannot start (bundles missing/broken, device not available)
EXIT_USAGE = 2


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``infer`` arguments (no heavy imports here)."""
    parser.add_argument(
        "paths", nargs="+", metavar="FILE_OR_DIR", help="DICOM files or folders (searched recursively)"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="also write one <SOPInstanceUID>.json per image here"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line of findings per image")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="max batch size (default 8)")
    parser.add_argument(
        "--bundles",
        type=Path,
        metavar="DIR",
        help="folder holding both bundles (default: $CXR_NODE_BUNDLES_DIR or the repo's monai_bundles/)",
    )
    parser.add_argument(
        "--decode-workers", type=int, default=2, metavar="N", help="decode threads (default 2)"
    )
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    parser.add_argument("--threshold", type=float, default=None, metavar="P",
                        help="image-level decision threshold (default: the classification bundle's; "
                             "the node's CXR_NODE_THRESHOLD)")
    parser.add_argument("--detection-threshold", type=float, default=None, metavar="S",
                        help="lowest reported box score (default: the detection bundle's)")
    parser.add_argument("--box-gating", choices=("positive-only", "all"), default="positive-only",
                        help="boxes only on positive images (default, as the node), or all")
    parser.add_argument("--no-heatmaps", action="store_true", help="do not compute Grad-CAM heatmaps")


def _is_dicom_file(path: Path) -> bool:
    """True for a file with the DICM preamble, or one pydicom can read without forcing."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    import pydicom

    try:
        pydicom.dcmread(path, stop_before_pixels=True)
        return True
    except Exception:
        return False


def iter_dicom_files(paths: Sequence[Path | str]) -> Iterator[tuple[Path, str | None]]:
    """Yield ``(path, error)``: DICOM files under the folders (sorted), and every file named explicitly.

    Files found in folders that are not DICOM are skipped silently; an explicitly named path
    that does not exist yields an error.
    """
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                if _is_dicom_file(f):
                    yield f, None
        elif p.is_file():
            yield p, None
        else:
            yield p, "no such file or folder"


def _print_error(path: Path, uid: str | None, message: str, as_json: bool, stream: TextIO) -> None:
    if as_json:
        stream.write(json.dumps({"file": str(path), "sop_instance_uid": uid, "error": message}) + "\n")
    else:
        stream.write(f"error: {path} (SOP Instance UID {uid or '<unknown>'}): {message}\n")
    stream.flush()


def _readable(path: Path, record: dict[str, Any]) -> str:
    if not record["analysed"]:
        return f"{path}: not analysed ({record['not_analysed_reason']})"
    probs = ", ".join(f"{k} {v:.3f}" for k, v in record["class_probabilities"].items())
    boxes = "; ".join(
        f"[x={b['x']:.0f} y={b['y']:.0f} w={b['width']:.0f} h={b['height']:.0f} score={b['score']:.2f}]"
        for b in record["boxes"]
    )
    return (
        f"{path}: {record['finding']['meaning']} {record['probability']:.3f} "
        f"({'positive' if record['positive'] else 'negative'} at {record['threshold']:.3f}) | {probs} | "
        f"{len(record['boxes'])} box(es) {boxes}".rstrip()
    )


def main(args: argparse.Namespace) -> int:
    """Run ``cxr-node infer``; returns 0 when every image was analysed (or gated), else 1."""
    import pydicom

    from models.errors import BundleError
    from models.inference.engine import InferenceEngine, default_bundles_dir

    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return EXIT_USAGE
    bundles = args.bundles or default_bundles_dir()
    out_dir: Path | None = args.out
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    stdout, stderr = sys.stdout, sys.stderr
    failures = 0
    done = 0

    def finish(path: Path, uid: str | None, future: Any) -> None:
        nonlocal failures, done
        try:
            findings = future.result()
        except Exception as exc:
            failures += 1
            _print_error(path, uid, str(exc), args.json, stderr)
            return
        record = {"file": str(path), **findings.to_json()}
        if args.json:
            stdout.write(json.dumps(record) + "\n")
        else:
            stdout.write(_readable(path, record) + "\n")
        stdout.flush()
        if out_dir is not None:
            target = out_dir / f"{findings.sop_instance_uid}.json"
            tmp = target.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, target)
        done += 1

    targets: list[Path] = []
    for path, error in iter_dicom_files(args.paths):
        if error is not None:
            failures += 1
            _print_error(path, None, error, args.json, stderr)
        else:
            targets.append(path)
    if not targets:
        print("error: no DICOM files found", file=stderr)
        return EXIT_SOME_FAILED

    window = max(4 * args.batch_size, 8)
    pending: collections.deque[tuple[Path, str | None, Any]] = collections.deque()
    try:
        engine = InferenceEngine(
            bundles,
            device=args.device,
            max_batch_size=args.batch_size,
            decode_workers=max(1, args.decode_workers),
            num_threads=args.threads,
            decision_threshold=args.threshold,
            detection_score_threshold=args.detection_threshold,
            box_gating=args.box_gating,
            heatmaps=not args.no_heatmaps,
        )
    except (BundleError, ValueError) as exc:
        print(f"error: cannot start the inference engine: {exc}", file=stderr)
        return EXIT_USAGE
    with engine:
        for path in targets:
            try:
                ds = pydicom.dcmread(path)
            except Exception as exc:
                failures += 1
                _print_error(
                    path, None, f"not readable as DICOM: {type(exc).__name__}: {exc}", args.json, stderr
                )
                continue
            uid = str(ds.get("SOPInstanceUID", "") or "") or None
            pending.append((path, uid, engine.submit(ds)))
            while len(pending) >= window:
                finish(*pending.popleft())
        while pending:
            finish(*pending.popleft())
    logger.info("infer finished", extra={"analysed": done, "failed": failures})
    return EXIT_SOME_FAILED if failures else EXIT_OK
