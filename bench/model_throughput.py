"""Model micro-benchmark: images/s of the classifier and of the detector alone.

Each model runs on random inputs of its bundle's ``image_size`` at several batch sizes,
after warm-up, for a bounded number of timed iterations, on the current device (``auto``:
CUDA if available, with the engine's fp16 autocast; else CPU). Decoding/preprocessing is
not included (that is the engine's job and is measured elsewhere).

    python bench/model_throughput.py --iterations 5 [--batch-sizes 1 4 16] [--json]

Prints a markdown table (or JSON with ``--json``) plus the device name and torch version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable from a plain checkout, without installing the package
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from models.inference.bundle_loader import LoadedBundle, load_bundle  # noqa: E402
from models.inference.engine import (  # noqa: E402
    DEFAULT_CLASSIFICATION_BUNDLE,
    DEFAULT_DETECTION_BUNDLE,
    default_bundles_dir,
    resolve_device,
)

MAX_ITERATIONS = 200


def device_name(device: torch.device) -> str:
    """GPU name from torch, or the CPU model from /proc/cpuinfo (with the thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} (torch threads: {torch.get_num_threads()})"


def _loadavg() -> float | None:
    """1-minute load average of the host (other processes compete with a CPU benchmark)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(
    bundle: LoadedBundle,
    batch_size: int,
    *,
    iterations: int,
    warmup: int,
    device: torch.device,
    fp16: bool | None = None,
) -> dict[str, Any]:
    """Run ``bundle``'s model on a random batch; returns images/s and per-batch latency (ms).

    ``fp16``: None = the engine's choice (fp16 autocast on CUDA, fp32 on CPU); True/False forces it (CUDA)."""
    h, w = bundle.image_size
    model = bundle.detector if bundle.kind == "detection" else bundle.network
    assert model is not None
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 1, h, w, generator=gen)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    half = device.type == "cuda" if fp16 is None else fp16 and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.float16) if half else nullcontext()
    times: list[float] = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + iterations):
            _sync(device)
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    total = sum(times)
    return {
        "model": bundle.name,
        "kind": bundle.kind,
        "image_size": [h, w],
        "batch_size": batch_size,
        "iterations": iterations,
        "precision": "fp16 autocast" if half else "fp32",
        "images_per_s": batch_size * iterations / total,
        "batch_ms_median": statistics.median(times) * 1000.0,
    }


def run(
    bundles_dir: Path,
    batch_sizes: Sequence[int],
    *,
    iterations: int,
    warmup: int,
    device: str,
    threads: int | None,
) -> dict[str, Any]:
    """Benchmark both bundles at every batch size; returns a JSON-serialisable report."""
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be in [1, {MAX_ITERATIONS}], got {iterations!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)!r}")
    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    load_before = _loadavg()
    bundles = [
        load_bundle(bundles_dir / DEFAULT_CLASSIFICATION_BUNDLE, device=dev),
        load_bundle(bundles_dir / DEFAULT_DETECTION_BUNDLE, device=dev),
    ]
    rows = [
        time_model(b, bs, iterations=iterations, warmup=warmup, device=dev)
        for b in bundles
        for bs in batch_sizes
    ]
    return {
        "device": str(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "precision": "fp16 autocast" if dev.type == "cuda" else "fp32",
        "bundles": {b.name: b.version for b in bundles},
        "iterations": iterations,
        "warmup": warmup,
        "host_load_1m": [load_before, _loadavg()],
        "results": rows,
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table with a header line naming device and torch."""
    lines = [
        f"Device: {report['device']} — {report['device_name']}; torch {report['torch']}; "
        f"{report['precision']}; {report['iterations']} timed iterations after {report['warmup']} warm-up; "
        f"host 1-min load average before/after: {report['host_load_1m'][0]} / {report['host_load_1m'][1]}",
        "",
        "| model | input | batch | images/s | median batch latency (ms) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['model']} ({r['kind']}) | {r['image_size'][0]}×{r['image_size'][1]} | {r['batch_size']} "
            f"| {r['images_per_s']:.1f} | {r['batch_ms_median']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=Path, default=None, help="bundles folder (default: the repo's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--iterations", type=int, default=10, help=f"timed iterations (1..{MAX_ITERATIONS})")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    report = run(
        args.bundles or default_bundles_dir(),
        args.batch_sizes,
        iterations=args.iterations,
        warmup=args.warmup,
        device=args.device,
        threads=args.threads,
    )
    print(json.dumps(report, indent=2) if args.json else to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
