"""CPU cost of the classifier's Grad-CAM heatmap per positive image (issue 16: target <= 30 ms on CPU).

Runs the shipped bundles' ``InferenceEngine`` on the same decoded images twice - heatmaps off, and
heatmaps on with every image forced positive (decision threshold ~0) - and reports the process CPU
time (all threads, ``getrusage``) and the wall time per image of the whole engine call, and their
difference: what a heatmap costs. Sharp phantoms at 1024 px; batch sizes 1 and 8.

    python bench/heatmap_cost.py --n 32 [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, hardware, rsna_phantoms  # noqa: E402


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _run(engine: Any, images: list[Any]) -> tuple[float, float, int]:
    """(CPU ms per image, wall ms per image, images with a heatmap)."""
    c0, t0 = _cpu_s(), time.perf_counter()
    results = [f.result() for f in [engine.submit_array(im) for im in images]]
    cpu, wall = _cpu_s() - c0, time.perf_counter() - t0
    return cpu * 1000 / len(images), wall * 1000 / len(images), sum(r.heatmap is not None for r in results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bundles", type=Path, default=REPO / "monai_bundles")
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    args = p.parse_args(argv)

    import pydicom

    from models.imaging.dicom_image import load_source_image
    from models.inference.engine import InferenceEngine

    files = rsna_phantoms(args.scratch / "phantoms", args.n, seed=11, size=1024)
    images = [load_source_image(pydicom.dcmread(f)) for f in files]
    rows = []
    for batch in (1, 8):
        measured: dict[str, list[tuple[float, float, int]]] = {}
        for label, heatmaps in (("off", False), ("on", True)):
            eng = InferenceEngine(args.bundles, device=args.device, max_batch_size=batch, decode_workers=1,
                                  num_threads=args.threads, warmup=True, heatmaps=heatmaps,
                                  decision_threshold=1e-6)  # fmt: skip
            try:
                _run(eng, images[: min(4, len(images))])  # warm caches
                measured[label] = [_run(eng, images) for _ in range(args.repeats)]
            finally:
                eng.close()
        off_cpu = statistics.median(m[0] for m in measured["off"])
        on_cpu = statistics.median(m[0] for m in measured["on"])
        off_wall = statistics.median(m[1] for m in measured["off"])
        on_wall = statistics.median(m[1] for m in measured["on"])
        assert all(m[2] == len(images) for m in measured["on"]), "every forced-positive image needs a heatmap"
        rows.append((batch, off_cpu, on_cpu, off_wall, on_wall))
    hw = hardware()
    print(f"{hw['cpu']}, {hw['cores']} cores, load {hw['load_1m']:.1f}; device {args.device}; {args.threads} threads; "
          f"{args.n} phantoms at 1024 px, every one positive; median of {args.repeats}")
    print("\n| batch | CPU ms/image, heatmaps off | on | heatmap CPU ms | wall ms/image off | on |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch, off_cpu, on_cpu, off_wall, on_wall in rows:
        print(f"| {batch} | {off_cpu:.1f} | {on_cpu:.1f} | {on_cpu - off_cpu:.1f} | {off_wall:.1f} | {on_wall:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
