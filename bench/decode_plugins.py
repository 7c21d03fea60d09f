"""JPEG Baseline decode: pydicom's plug-ins side by side, in one thread and in two.

Decodes the same RSNA-style phantoms (1024x1024 8-bit JPEG Baseline SC) with each plug-in,
first in one thread, then split over two threads. A decoder that holds the GIL gains nothing
from the second thread (and blocks every other Python thread of the node meanwhile); one that
releases it gets faster. The node's engine decodes in ``decode_workers`` threads, so this is
what decides whether decoding overlaps with inference, receiving and delivery.

    python bench/decode_plugins.py --n 32 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from common import add_output_arguments, emit_report, hardware, median, rsna_phantoms  # noqa: E402
from pydicom.pixels import pixel_array  # noqa: E402

PLUGINS = ("pylibjpeg", "pillow")


def ms_per_image(datasets: Sequence[pydicom.Dataset], plugin: str, threads: int) -> float:
    """Wall ms per image decoding ``datasets`` with ``plugin`` split over ``threads`` threads."""

    def work(part: Sequence[pydicom.Dataset]) -> None:
        for ds in part:
            pixel_array(ds, index=0, decoding_plugin=plugin)

    workers = [threading.Thread(target=work, args=(datasets[i::threads],)) for i in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return (time.perf_counter() - t0) * 1000 / len(datasets)


def run(args: argparse.Namespace) -> dict[str, Any]:
    files = rsna_phantoms(args.scratch / "phantoms", args.n, seed=21, size=1024)
    datasets = [pydicom.dcmread(f) for f in files]
    ref = pixel_array(datasets[0], index=0, decoding_plugin=PLUGINS[0]).astype(np.int16)
    max_diff = {p: int(np.abs(pixel_array(datasets[0], index=0, decoding_plugin=p) - ref).max()) for p in PLUGINS}
    for p in PLUGINS:  # warm-up (imports, first-call set-up)
        ms_per_image(datasets[:2], p, 1)
    runs: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for p in PLUGINS:
            for threads in (1, 2):
                runs.setdefault((p, threads), []).append(ms_per_image(datasets, p, threads))
    rows = [{"plugin": p, "threads": t, "ms_per_image": median(v), "runs": v, "max_abs_diff": max_diff[p]}
            for (p, t), v in runs.items()]  # fmt: skip
    return {"hardware": hardware(), "n": args.n, "repeats": args.repeats, "rows": rows}


def to_markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    lines = [
        f"Hardware: {hw['cpu']}, {hw['cores']} logical cores; {report['n']} RSNA-style 1024² JPEG Baseline SC; "
        f"median of {report['repeats']} runs. Max |difference| to pylibjpeg on image 0 in grey levels.",
        "",
        "| plug-in | threads | ms per image (wall) | images/s | max abs diff |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['plugin']} | {r['threads']} | {r['ms_per_image']:.1f} | {1000 / r['ms_per_image']:.0f} "
                     f"| {r['max_abs_diff']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    add_output_arguments(p)
    args = p.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    return emit_report(run(args), args.json, to_markdown)


if __name__ == "__main__":
    sys.exit(main())
