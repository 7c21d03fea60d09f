"""Decode and prepare with and without the node's memory reuse (``dicom_node/memory_reuse.py``), side by side.

Each run is a fresh process (the allocator's state is per process) that decodes ``--n`` RSNA-style 1024²
JPEG phantoms (``load_source_image``) and prepares both model inputs (64² and 256²), all ``--n`` images
held at once as ``profile_stages.py`` and a busy engine hold them, ``--repeats`` times after a warm-up; it
reports CPU ms and minor page faults per image of each stage. The two settings alternate run by run
(``--rounds`` pairs), and the medians over the runs are printed last.

    PYTHONPATH=$PWD python bench/memory_reuse_ab.py --rounds 4 --scratch /tmp/cxr-bench
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, hardware, rsna_phantoms  # noqa: E402

sys.path.insert(0, str(REPO))


def one_run(keep_mib: int, n: int, repeats: int, scratch: Path) -> dict[str, float]:
    """In this process: (CPU ms, faults) per image of decode and of prepare, medians of ``repeats``."""
    from dicom_node.memory_reuse import keep_freed_memory

    keep_freed_memory(keep_mib)
    import gc

    import pydicom

    from models.imaging import dicom_image, preprocess

    dss = [pydicom.dcmread(f) for f in rsna_phantoms(scratch / "phantoms", n, seed=11, size=1024)]
    held: list = []

    def decode() -> None:
        held.clear()
        held.extend(dicom_image.load_source_image(d) for d in dss)

    def prepare() -> None:
        for image in held:
            for size in ((64, 64), (256, 256)):
                preprocess.prepare(image, size)

    decode()  # warm-up: imports, the heaps' first growth
    prepare()
    gc.collect()
    gc.freeze()
    out: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, fn in (("decode", decode), ("prepare", prepare)):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c0 = time.process_time()
            fn()
            out.setdefault(f"{name}_ms", []).append((time.process_time() - c0) * 1000 / n)
            out.setdefault(f"{name}_faults", []).append(
                (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n
            )
    return {k: statistics.median(v) for k, v in out.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--keep-mib", type=int, default=256, help="the setting compared with 0 (the C library's defaults)"
    )
    p.add_argument("--scratch", type=Path, default=Path("/tmp/cxr-bench"))
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(one_run(args.child, args.n, args.repeats, args.scratch)))
        return 0
    hw = hardware()
    print(
        f"{hw['cpu']}, {hw['cores']} cores, load {hw['load_1m']:.1f}; {args.n} images held at once, median of {args.repeats}"
    )
    runs: dict[int, list[dict[str, float]]] = {args.keep_mib: [], 0: []}
    for r in range(args.rounds):
        for keep in (args.keep_mib, 0):
            cmd = [sys.executable, __file__, "--child", str(keep), "--n", str(args.n), "--repeats", str(args.repeats),
                   "--scratch", str(args.scratch)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
            res = json.loads(done.stdout.strip().splitlines()[-1])
            runs[keep].append(res)
            print(f"round {r + 1} keep {keep:>4} MiB: decode {res['decode_ms']:.2f} ms ({res['decode_faults']:.0f} faults), "
                  f"prepare {res['prepare_ms']:.2f} ms ({res['prepare_faults']:.0f} faults) per image")  # fmt: skip
    print(f"\n| per image (median of the runs) | keep {args.keep_mib} MiB | defaults (0) |\n|---|---:|---:|")
    for key, label in (("decode_ms", "decode, CPU ms"), ("decode_faults", "decode, minor page faults"),
                       ("prepare_ms", "prepare, CPU ms"), ("prepare_faults", "prepare, minor page faults")):  # fmt: skip
        a = statistics.median(x[key] for x in runs[args.keep_mib])
        b = statistics.median(x[key] for x in runs[0])
        print(f"| {label} | {a:.2f} | {b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
