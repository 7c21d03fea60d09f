"""SR build and SR encode (``dataset_bytes``) alone: CPU ms per image, median and least of the repeats.

16 RSNA-style sources (every other one with 3 boxes) as ``tests/_results_data.py`` makes them; the
tree measured is the one on ``PYTHONPATH``. Compare two trees side by side, interleaved, e.g.::

    for i in 1 2; do for t in /tmp/base_c8f $PWD; do
      PYTHONPATH=$t .venv/bin/python bench/sr_build_encode.py --tree $t; done; done
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
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    sys.path.insert(0, str(args.tree / "tests"))
    from _results_data import findings_for, rsna_source, three_boxes

    from dicom_node.results.sr.build import build_sr
    from dicom_node.storage.spool import dataset_bytes

    sources = [rsna_source(args.size, seed=i) for i in range(args.n)]
    work = [
        (s, findings_for(s, three_boxes(args.size, args.size) if i % 2 else ()))
        for i, s in enumerate(sources)
    ]
    [dataset_bytes(build_sr(s, f)) for s, f in work]  # warm caches, as a running node has them
    gc.collect()
    gc.freeze()
    build, encode = [], []
    for _ in range(args.repeats):
        t = time.process_time()
        srs = [build_sr(s, f) for s, f in work]
        build.append((time.process_time() - t) * 1e3 / args.n)
        t = time.process_time()
        [dataset_bytes(x) for x in srs]
        encode.append((time.process_time() - t) * 1e3 / args.n)
    print(f"{args.tree}: SR build median {statistics.median(build):.1f} least {min(build):.1f} ms | "
          f"encode SR median {statistics.median(encode):.1f} least {min(encode):.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
