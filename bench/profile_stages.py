"""CPU time per image of each stage of the analysis pipeline, one stage at a time, in one process.

Stages (mean ms per image over ``--n`` RSNA-style 1024² JPEG phantoms): source decode
(``load_source_image``), ``prepare`` for each model input size, inference (``InferenceEngine``
batch, both models), SR build (``build_sr``), SC build (``build_sc`` with the engine's decoded
image, as the node calls it; also split into positive images with a heatmap and the others; the
overlay's text caches hold what a node that has run for a while holds: the texts of the overlays
differ only in 2-decimal probabilities and box counts, ~100 distinct lines per deployment, all kept by
``dicom_node.results.sc.text``'s caches; ``--cold-text`` clears them before each of these rows, so that
every image renders its text from scratch, as a fresh result process does), the heatmap's share of it
(``blend_heatmap`` alone), the engine without heatmaps (the Grad-CAM's share of the engine), and
encoding both results (``dataset_bytes``), and the DICOM I/O (``bench/stage_io.py``): receiving
(the node's SCP, spool file and journal row, fed by storescu) and delivering (SR + SC by the node's
``DicomSender``, one batch per image over the association it keeps, to storescp --ignore at the shipped
Orthanc's 128 KiB PDUs; ``CXR_BENCH_DELIVER_AS_BEFORE=1``: one association per image, 16 KiB PDUs). The receive
row shares one association among the ``--n`` images; the association row gives each image its own, as
Orthanc does when it forwards a study of one image (one association per study, proposing 127
presentation contexts whatever the study holds: ``bench/orthanc_like_scu.py``). The second-to-last
line sums what the node spends per image outside the model forward (and its Grad-CAM): decode +
prepare + SR build + SC build + encode SR + SC + receive + deliver (issue 15 point 1); the last line
the same with the association row in place of the receive row (a one-image study from Orthanc). Each row gives the wall time and the process CPU time
(``time.process_time``: all threads; the engine's threads are idle during the result stages),
medians of the repeats, and the least CPU time of the repeats (on a shared host, where other
processes inflate CPU time through cache and core contention, the least is the steadier figure).

    python bench/profile_stages.py --n 16 --batch 8 [--device cpu] [--no-gc-freeze] [--no-memory-reuse] [--cold] [--cold-text]

Before the timed repeats, every image's SR and SC is built and encoded once (``--cold``: not), as the
node's long-lived result processes have done after their first image: the one-time costs of a
process (lazy imports, lookups and caches filled on first use) are start-up, not per-image, cost.

Like the node (``dicom_node/gc_freeze.py``), it freezes its start-up objects (torch, the models)
for the garbage collector before timing; ``--no-gc-freeze`` measures the node as it was before.
Like the node (``dicom_node/memory_reuse.py``), it keeps freed image buffers for reuse (glibc's
mmap and trim thresholds, Pillow's block cache); ``--no-memory-reuse`` leaves the allocators' defaults.
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
from stage_io import as_before, association_ms, deliver_ms, receive_ms  # noqa: E402


def per_image_ms(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per image of ``fn()``, which handles ``n`` images."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - t0) * 1000.0 / max(1, n), (time.process_time() - c0) * 1000.0 / max(1, n)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-gc-freeze", action="store_true",
                   help="leave the start-up objects to the garbage collector (the node before dicom_node/gc_freeze.py)")  # fmt: skip
    p.add_argument("--no-memory-reuse", action="store_true",
                   help="the allocators' defaults (the node before dicom_node/memory_reuse.py)")
    p.add_argument("--cold", action="store_true",
                   help="no warm-up pass of the SR, SC and encode stages before the timed repeats")
    p.add_argument("--cold-text", action="store_true",
                   help="clear the overlay's text caches before each SC row (every image renders its text from scratch)")
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    args = p.parse_args(argv)

    if not args.no_memory_reuse:  # as the node and its result processes do at start-up
        from dicom_node.memory_reuse import DEFAULT_KEEP_MIB, keep_freed_memory

        keep_freed_memory(DEFAULT_KEEP_MIB)

    import numpy as np
    import pydicom

    from dicom_node.results.sc.build import build_sc
    from dicom_node.results.sc.heatmap import blend_heatmap

    try:  # the renderer's blend over a grey image (issue 15); older trees paste with Pillow
        from dicom_node.results.sc.heatmap import blend_heatmap_over_grey as blend_over_grey
    except ImportError:
        blend_over_grey = None
    from dicom_node.results.sc.render import grey_u8, output_shape
    from dicom_node.results.sc.text import clear_caches
    from dicom_node.results.sr.build import build_sr
    from dicom_node.storage.spool import dataset_bytes
    from models.imaging import dicom_image, preprocess
    from models.inference.engine import InferenceEngine, source_image_of

    files = rsna_phantoms(args.scratch / "phantoms", args.n, seed=11, size=1024)
    dss = [pydicom.dcmread(f) for f in files]
    eng = InferenceEngine(REPO / "monai_bundles", device=args.device, max_batch_size=args.batch,
                          decode_workers=1, num_threads=args.threads, warmup=True)  # fmt: skip
    plain = InferenceEngine(REPO / "monai_bundles", device=args.device, max_batch_size=args.batch,
                            decode_workers=1, num_threads=args.threads, warmup=True, heatmaps=False)  # fmt: skip
    sizes = [b.image_size for b in eng.bundles]
    if not args.no_gc_freeze:  # as the node and its result processes do after start-up
        import gc

        gc.collect()
        gc.freeze()
    try:
        futures = [eng.submit(d, keep_image=True) for d in dss]
        findings = [f.result() for f in futures]
        kept = [source_image_of(f) for f in futures]
        work = list(zip(dss, findings, kept, strict=True))
        with_map = [w for w in work if w[1].heatmap is not None]
        without_map = [w for w in work if w[1].heatmap is None]
        canvases = []
        for _d, f, im in with_map:
            r, c, scale = output_shape(f.rows, f.columns)
            canvases.append((grey_u8(im.pixels, r, c), f.heatmap, scale))

        def blend_all() -> None:  # as the renderer blends it (a tree without the table: Pillow's paste)
            for grey, hm, scale in canvases:
                region = (hm.x * scale, hm.y * scale, hm.width * scale, hm.height * scale)
                if blend_over_grey is None:
                    blend_heatmap(np.repeat(grey[:, :, None], 3, axis=2), hm.values, region)
                else:
                    rgbx = np.multiply(grey, np.uint32(0x010101), dtype=np.uint32)
                    blend_over_grey(rgbx, grey, hm.values, region)

        # Warm-up: the first SR and SC a process builds pay its one-time costs (highdicom's and pydicom's
        # lazy imports and lookups, the node's per-process caches of constant content items and
        # templates), which the node's long-lived result processes pay once, not per image; the
        # engine is warmed up likewise (warmup=True). First-pass figures: --cold.
        if not args.cold:
            for d, f, im in work:
                dataset_bytes(build_sr(d, f))
                dataset_bytes(build_sc(d, f, image=im))
        def clear_text() -> None:
            if args.cold_text:
                clear_caches()

        rows: dict[str, list[tuple[float, float]]] = {}
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
            rows.setdefault("engine without heatmaps (heatmaps=False)", []).append(
                per_image_ms(lambda: [f.result() for f in [plain.submit(d) for d in dss]], args.n)
            )
            srs: list[Any] = []
            scs: list[Any] = []
            rows.setdefault("SR build (highdicom TID 1500)", []).append(
                per_image_ms(lambda: srs.extend(build_sr(d, f) for d, f, _ in work), args.n)
            )
            clear_text()
            rows.setdefault("SC build (overlay, from the engine's decoded image)", []).append(
                per_image_ms(lambda: scs.extend(build_sc(d, f, image=im) for d, f, im in work), args.n)
            )
            clear_text()
            rows.setdefault(f"SC build, positive images with a heatmap ({len(with_map)} of {args.n})", []).append(
                per_image_ms(lambda: [build_sc(d, f, image=im) for d, f, im in with_map], len(with_map))
            )
            clear_text()
            rows.setdefault(f"SC build, the other images ({len(without_map)} of {args.n})", []).append(
                per_image_ms(lambda: [build_sc(d, f, image=im) for d, f, im in without_map], len(without_map))
            )
            rows.setdefault("heatmap alone (as the renderer blends it, positive images; grey to RGB included)", []).append(
                per_image_ms(blend_all, len(canvases))
            )
            rows.setdefault("encode SR + SC (dataset_bytes)", []).append(
                per_image_ms(lambda: [dataset_bytes(x) for x in srs + scs], args.n)
            )
            rows.setdefault("encode SR alone", []).append(per_image_ms(lambda: [dataset_bytes(x) for x in srs], args.n))
            rows.setdefault("encode SC alone", []).append(per_image_ms(lambda: [dataset_bytes(x) for x in scs], args.n))
            pairs = [(dataset_bytes(a), dataset_bytes(b)) for a, b in zip(srs, scs, strict=True)]
            rows.setdefault(RECEIVE, []).append(receive_ms(files, args.scratch))
            rows.setdefault(ASSOCIATION, []).append(association_ms(files[0], args.scratch, args.n))
            rows.setdefault(DELIVER, []).append(deliver_ms(pairs, args.scratch))
    finally:
        eng.close()
        plain.close()
    hw = hardware()
    print(f"{hw['cpu']}, {hw['cores']} cores, load {hw['load_1m']:.1f}; device {args.device}; "
          f"{args.n} images; median of {args.repeats}")  # fmt: skip
    print("\n| stage | wall ms per image | CPU ms per image | least CPU ms of the repeats |\n|---|---:|---:|---:|")
    for name, vals in rows.items():
        wall, cpu = statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {min(v[1] for v in vals):.1f} |")
    outside = [k for k in rows if k.startswith(OUTSIDE_THE_FORWARD)]
    med = sum(statistics.median(v[1] for v in rows[k]) for k in outside)
    least = sum(min(v[1] for v in rows[k]) for k in outside)
    print(f"| **outside the model forward** (sum of: {'; '.join(k.split(' (')[0] for k in outside)}) "
          f"| | **{med:.1f}** | **{least:.1f}** |")  # fmt: skip
    # a study of one image forwarded by Orthanc: its own association instead of one shared by many images
    one = [ASSOCIATION if k == RECEIVE else k for k in outside]
    med1 = sum(statistics.median(v[1] for v in rows[k]) for k in one)
    least1 = sum(min(v[1] for v in rows[k]) for k in one)
    print(f"| **outside the model forward, one-image studies forwarded by Orthanc** (the association row in "
          f"place of the receive row) | | **{med1:.1f}** | **{least1:.1f}** |")  # fmt: skip
    sc_sizes = [len(b) for _, b in pairs]
    print(f"\nSC as encoded: {statistics.mean(sc_sizes) / 1e3:.0f} KB per image (mean), "
          f"transfer syntax {scs[0].file_meta.TransferSyntaxUID}")  # fmt: skip
    return 0


RECEIVE = "receive: C-STORE into the node's SCP, spool file, journal row (storescu, one association)"
ASSOCIATION = ("receive as Orthanc forwards a one-image study: association with Orthanc's 127 contexts, "
               "C-STORE, spool file, journal row, release (per image)")
DELIVER = (
    "deliver: SR + SC C-STORE by DicomSender, one association per image (storescp --ignore, 16 KiB PDUs)"
    if as_before()
    else "deliver: SR + SC C-STORE by DicomSender, association kept between images (storescp --ignore, 128 KiB PDUs)"
)
#: the rows summed as "outside the model forward" (prefixes of the row names)
OUTSIDE_THE_FORWARD = ("decode (", "prepare (", "SR build (", "SC build (overlay", "encode SR + SC", RECEIVE, DELIVER)


if __name__ == "__main__":
    sys.exit(main())
