"""Render the SC overlay examples shown in docs/SC_OVERLAY.md with the shipped bundles and settings.

Generates phantoms (``models.phantoms.synth``, seed 2026, 1024 px), runs them through the real engine with the
node's defaults (bundle thresholds, boxes only on positive images, heatmaps on) and writes the SC of the
first phantom that comes back positive with boxes and of the first normal one that comes back negative,
at half size, to ``docs/img/sc_overlay_positive.png`` and ``docs/img/sc_overlay_negative.png``.

    .venv/bin/python scripts/render_sc_examples.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    p.add_argument("--max-phantoms", type=int, default=40)
    args = p.parse_args(argv)

    import pydicom
    from PIL import Image

    from dicom_node.results.sc.build import build_sc
    from models.datasets.rsna_layout import read_rsna_labels
    from models.inference.engine import InferenceEngine, source_image_of
    from models.phantoms.synth import write_rsna_dataset

    wanted: dict[str, Path] = {"positive": args.out / "sc_overlay_positive.png",
                               "negative": args.out / "sc_overlay_negative.png"}  # fmt: skip
    done: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="cxr-sc-examples-") as tmp:
        write_rsna_dataset(Path(tmp), n=args.max_phantoms, seed=2026, size=1024)
        labels = read_rsna_labels(Path(tmp))
        with InferenceEngine(REPO / "monai_bundles", device="cpu") as engine:
            for pid in sorted(labels):
                ds = pydicom.dcmread(str(labels[pid].image_path))
                future = engine.submit(ds, keep_image=True)
                findings = future.result(timeout=300)
                if findings.positive and findings.boxes and labels[pid].klass == "Lung Opacity":
                    kind = "positive"
                elif not findings.positive and labels[pid].klass == "Normal":
                    kind = "negative"
                else:
                    continue
                if kind in done:
                    continue
                sc = build_sc(ds, findings, image=source_image_of(future))
                image = Image.fromarray(sc.pixel_array)
                image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
                wanted[kind].parent.mkdir(parents=True, exist_ok=True)
                image.save(wanted[kind], optimize=True)
                print(f"{kind}: phantom {pid} ({labels[pid].klass}, p={findings.probability:.3f}) -> {wanted[kind]}")
                done.add(kind)
                if done == set(wanted):
                    return 0
    print(f"only found {sorted(done)} among {args.max_phantoms} phantoms", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
