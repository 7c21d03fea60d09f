"""The SC's decoded image handed to a result process: pickled through the pool's pipe, or in shared memory.

The node sends the SC's job to a result process through a ``ProcessPoolExecutor`` and gets the encoded
SR + SC back the same way. This script does exactly that hand-off, nothing else: jobs carrying the
decoded float32 image of each size, either as the image itself (pickled through the pipe: the node
before ``dicom_node/pipeline/shared_image.py``, and its fallback) or as a ``SharedImageRef`` the result
process maps (``attached``) as the node does now, segments reused (``SharedImages``); each job reads
the image as the renderer would and replies ``--reply-kb`` KB (an encoded SC of a 1024² image is
~300 KB). Reported: CPU time per job of the sending process and of the result process (``/proc``),
``--rounds`` alternating fresh pools of each, ``--jobs`` jobs per size and pool.

    PYTHONPATH=$PWD python bench/handoff_ab.py --rounds 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cpu_seconds, hardware  # noqa: E402

sys.path.insert(0, str(REPO))

from dicom_node.pipeline.shared_image import SharedImageRef, SharedImages, attached  # noqa: E402
from models.imaging.dicom_image import SourceImage  # noqa: E402

SIZES = ((1024, 1024), (3000, 2500))


def reply(image: SourceImage | SharedImageRef, reply_bytes: int) -> bytes:
    """The result process's side: touch every page of the image once (the renderer reads them all), answer
    ``reply_bytes``."""
    if isinstance(image, SharedImageRef):
        with attached(image) as mapped:
            total = float(mapped.pixels.reshape(-1)[::1024].sum())
    else:
        total = float(image.pixels.reshape(-1)[::1024].sum())
    return bytes(reply_bytes) if total >= 0.0 else b""


def one_pool(shared: bool, jobs: int, reply_bytes: int) -> dict[tuple[int, int], tuple[float, float]]:
    """(sender CPU ms, result process CPU ms) per job for each image size, in one fresh pool."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    images = SharedImages()
    try:
        pool.submit(int, 0).result()  # start the process
        (child,) = list(pool._processes)  # noqa: SLF001 - the one result process
        out = {}
        for shape in SIZES:
            pixels = np.random.default_rng(0).random(shape, dtype=np.float32)
            image = SourceImage(pixels=pixels, rows=shape[0], columns=shape[1], sop_instance_uid="1.2.3")

            def hand_off(image: SourceImage = image) -> None:
                lease = images.share(image) if shared else None
                if shared and lease is None:
                    raise SystemExit("no shared memory")
                try:
                    pool.submit(reply, lease.ref if lease else image, reply_bytes).result()
                finally:
                    if lease is not None:
                        lease.release()

            hand_off()  # warm-up (and the segment the next jobs reuse)
            c0, k0 = time.process_time(), cpu_seconds(child)
            for _ in range(jobs):
                hand_off()
            out[shape] = ((time.process_time() - c0) * 1e3 / jobs, (cpu_seconds(child) - k0) * 1e3 / jobs)
        return out
    finally:
        pool.shutdown()
        images.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=30)
    p.add_argument("--reply-kb", type=int, default=300)
    args = p.parse_args(argv)
    hw = hardware()
    print(f"{hw['cpu']}, {hw['cores']} cores, load {hw['load_1m']:.1f}; {args.jobs} jobs per size and pool, "
          f"reply {args.reply_kb} KB")  # fmt: skip
    runs: dict[bool, list[dict[tuple[int, int], tuple[float, float]]]] = {False: [], True: []}
    for r in range(args.rounds):
        for shared in (False, True):
            res = one_pool(shared, args.jobs, args.reply_kb * 1000)
            runs[shared].append(res)
            print(f"round {r + 1} {'shared' if shared else 'pipe'}: " + ", ".join(
                f"{h}x{w}: {s:.1f} + {c:.1f} ms" for (h, w), (s, c) in res.items()))  # fmt: skip
    print(
        "\n| CPU ms per job (median of the rounds): node + result process | pickled through the pipe | shared memory |"
    )
    print("|---|---:|---:|")
    for shape in SIZES:
        cells = []
        for shared in (False, True):
            s = statistics.median(x[shape][0] for x in runs[shared])
            c = statistics.median(x[shape][1] for x in runs[shared])
            cells.append(f"{s:.1f} + {c:.1f} = {s + c:.1f}")
        print(
            f"| float32 image {shape[0]} x {shape[1]} ({shape[0] * shape[1] * 4 / 2**20:.1f} MiB) | {cells[0]} | {cells[1]} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
