"""What a full garbage collection costs in the node's processes, with and without ``gc.freeze()``.

Each case runs in a fresh interpreter: a result process (imports ``dicom_node.results.build``) and the
node process (also builds the ``InferenceEngine`` with the shipped bundles). Reported: objects
tracked by the collector, the median wall ms of ``gc.collect()`` over ``--repeats``, and the same
after ``dicom_node.gc_freeze.freeze_long_lived()``.

    python bench/gc_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, hardware  # noqa: E402

CASE = r"""
import gc, json, statistics, sys, time
sys.path.insert(0, {repo!r})
import dicom_node.results.build
if {engine!r}:
    from models.inference.engine import InferenceEngine
    eng = InferenceEngine({bundles!r}, device="cpu", warmup=True, decode_workers=1)
def collect_ms():
    out = []
    for _ in range({repeats}):
        t = time.perf_counter(); gc.collect(); out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)
tracked = len(gc.get_objects())
before = collect_ms()
from dicom_node.gc_freeze import freeze_long_lived
frozen = freeze_long_lived()
after = collect_ms()
print(json.dumps({{"tracked": tracked, "collect_ms": before, "frozen": frozen, "collect_ms_frozen": after}}))
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    hw = hardware()
    print(
        f"{hw['cpu']}, {hw['cores']} cores, load {hw['load_1m']:.1f}; median of {args.repeats} collections\n"
    )
    print(
        "| process | objects tracked | full gc.collect() ms | after freeze_long_lived() ms |\n|---|---:|---:|---:|"
    )
    for name, engine in (
        ("result process (dicom_node.results.build)", False),
        ("node (+ InferenceEngine, shipped bundles)", True),
    ):
        code = CASE.format(
            repo=str(REPO), engine=engine, bundles=str(REPO / "monai_bundles"), repeats=args.repeats
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {name} | {r['tracked']} | {r['collect_ms']:.1f} | {r['collect_ms_frozen']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
