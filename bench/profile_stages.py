"""CPU time per image of each stage of the analysis pipeline, one stage at a time, in one process.

Stages (mean ms per image over ``--n`` RSNA-style 1024² JPEG phantoms): source decode
(``load_source_image``), ``prepare`` for each model input size, inference (``InferenceEngine``
batch, both models), SR build (``build_sr``), SC build (``build_sc``, which decodes the source
again), and encoding both results (``dataset_bytes``). The sum is what the node spends per image
besides receiving and delivering.

    python bench/profile_stages.py --n 16 --batch 8 [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# ruff: noqa: B023 - every lambda below runs at once, inside the iteration that defines it

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, hardware, rsna_phantoms  # noqa: E402

#: CPU ms per image of each stage (process CPU time: with the engine idle between stages, the stage's own)
CPU_MS: dict[str, list[float]] = {}


def per_image_ms(fn: Callable[[], Any], n: int, cpu_key: str | None = None) -> float:
    """Wall-clock ms per image of ``fn()``; with ``cpu_key``, its CPU ms per image goes to :data:`CPU_MS`."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    fn()
    wall = (time.perf_counter() - t0) * 1000.0 / n
    if cpu_key is not None:
        CPU_MS.setdefault(cpu_key, []).append((time.process_time() - c0) * 1000.0 / n)
    return wall


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    args = p.parse_args(argv)

    import pydicom

    from dicom_node.results_sc import build_sc
    from dicom_node.results_sr import build_sr
    from dicom_node.spool import dataset_bytes
    from models import dicom_image, preprocess
    from models.engine import InferenceEngine

    files = rsna_phantoms(args.scratch / "phantoms", args.n, seed=11, size=1024)
    dss = [pydicom.dcmread(f) for f in files]
    eng = InferenceEngine(REPO / "monai_bundles", device=args.device, max_batch_size=args.batch,
                          decode_workers=1, num_threads=args.threads, warmup=True)  # fmt: skip
    sizes = [b.image_size for b in eng.bundles]
    try:
        findings = [f.result() for f in [eng.submit(d) for d in dss]]
        rows: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            images: list[Any] = []
            rows.setdefault("decode (load_source_image)", []).append(
                per_image_ms(lambda: images.extend(dicom_image.load_source_image(d) for d in dss), args.n)
            )
            rows.setdefault(f"prepare ({' + '.join(f'{h}x{w}' for h, w in sizes)})", []).append(
                per_image_ms(lambda: [preprocess.prepare(im, s) for im in images for s in sizes], args.n)
            )
            rows.setdefault(f"engine: decode + prepare + both models (batch {args.batch})", []).append(
                per_image_ms(lambda: [f.result() for f in [eng.submit(d) for d in dss]], args.n)
            )
            srs: list[Any] = []
            scs: list[Any] = []
            rows.setdefault("SR build (highdicom TID 1500)", []).append(
                per_image_ms(
                    lambda: srs.extend(
                        build_sr(d, f) for d, f in zip(dss, findings, strict=True)
                    ),
                    args.n,
                    "SR build (highdicom TID 1500)",
                )
            )
            rows.setdefault("SC build (overlay; decodes the source again)", []).append(
                per_image_ms(
                    lambda: scs.extend(
                        build_sc(d, f) for d, f in zip(dss, findings, strict=True)
                    ),
                    args.n,
                    "SC build (overlay; decodes the source again)",
                )
            )
            rows.setdefault("encode SR + SC (dataset_bytes)", []).append(
                per_image_ms(lambda: [dataset_bytes(x) for x in srs + scs], args.n, "encode SR + SC (dataset_bytes)")
            )
    finally:
        eng.close()
    hw = hardware()
    print(f"{hw['cpu']}, {hw['cores']} cores, load {hw['load_1m']:.1f}; device {args.device}; "
          f"{args.n} images; median of {args.repeats}")  # fmt: skip
    print("\n| stage | ms per image | CPU ms per image |\n|---|---:|---:|")
    for name, vals in rows.items():
        cpu = CPU_MS.get(name)
        print(f"| {name} | {statistics.median(vals):.1f} | {statistics.median(cpu):.1f} |" if cpu
              else f"| {name} | {statistics.median(vals):.1f} | |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
