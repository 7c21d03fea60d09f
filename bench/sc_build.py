"""SC overlay build (``build_sc`` with the decoded image, as the node calls it) alone: CPU ms per image,
median and least of the repeats.

16 RSNA-style 1024² sources as ``tests/_results_data.py`` makes them, 12 of them positive with a 4 x 4
heatmap over the whole image (the shape of the shipped classifier's Grad-CAM) and every third one with
boxes; JPEG Baseline as stored by default. ``--cold`` clears the overlay's caches (text, bands, labels,
heatmap weights) before every repeat, so each image renders its own text as a fresh process would;
without it the caches are warm, as in a node that has seen these probabilities before. The tree
measured is the one on ``PYTHONPATH``. Compare two trees side by side, interleaved, e.g.::

    for i in 1 2 3; do for t in /tmp/base_e9a $PWD; do
      PYTHONPATH=$t .venv/bin/python bench/sc_build.py --tree $t --cold; done; done
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tree",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="repository whose tests/ to use",
    )
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--cold", action="store_true", help="clear the overlay's caches before every repeat")
    p.add_argument("--uncompressed", action="store_true", help="store the SC uncompressed (the fallback)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(args.tree / "tests"))
    import numpy as np
    from _results_data import findings_for, rsna_source, three_boxes

    from dicom_node.results.sc.build import build_sc
    from dicom_node.results.sc.encode import ScEncoding
    from dicom_node.results.sc.text import clear_caches
    from models.findings import Heatmap
    from models.imaging.dicom_image import load_source_image

    rng = np.random.default_rng(15)
    work = []
    for i in range(args.n):
        src = rsna_source(args.size, seed=i)
        positive = i % 4 != 3
        values = rng.random((4, 4)).astype(np.float32) if positive else None
        heatmap = (
            Heatmap(values / values.max(), 0.0, 0.0, float(args.size), float(args.size)) if positive else None
        )
        boxes = three_boxes(args.size, args.size)[: i % 3] if positive and i % 3 else ()
        p_value = round(0.5 + 0.45 * rng.random(), 3) if positive else round(0.45 * rng.random(), 3)
        findings = findings_for(src, boxes, p=p_value, heatmap=heatmap, two_class=True)
        work.append((src, findings, load_source_image(src)))
    encoding = ScEncoding("explicit-vr-little-endian") if args.uncompressed else ScEncoding()
    [build_sc(s, f, image=im, encoding=encoding) for s, f, im in work]  # fonts, template, warm caches
    gc.collect()
    gc.freeze()
    build = []
    for _ in range(args.repeats):
        if args.cold:
            clear_caches()
        t = time.process_time()
        [build_sc(s, f, image=im, encoding=encoding) for s, f, im in work]
        build.append((time.process_time() - t) * 1e3 / args.n)
    mode = "cold caches" if args.cold else "warm caches"
    print(f"{args.tree}: SC build ({mode}) median {statistics.median(build):.1f} least {min(build):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
