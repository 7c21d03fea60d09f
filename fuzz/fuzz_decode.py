"""Byte-level fuzzing (atheris, libFuzzer) of the node's decode path.

Each input is a would-be DICOM file: ``pydicom.dcmread(force=True)`` then
``models.imaging.dicom_image.load_source_image``. The contract checked:

* ``dcmread`` may refuse the bytes with any exception: the SCP catches every parse error and
  answers 0xC000, the analysis worker turns every read error into a ``failed`` job;
* ``load_source_image`` may only raise ``models.errors.ImageDecodeError`` (or a subclass) -
  anything else (and any hang past ``-timeout``, or memory past ``-rss_limit_mb``) is a finding;
* a returned ``SourceImage`` has finite float32 pixels in [0, 1] of the stated shape.

Seeds (valid small images in several transfer syntaxes plus hostile variants) are written to the
corpus folder when it is empty. Bounded run (what the test and RELIABILITY.md use):

    .venv/bin/python fuzz/fuzz_decode.py -runs=20000 -max_len=131072 -timeout=20 -rss_limit_mb=3072 /tmp/fuzz-corpus

Replay one input (a finding's file, e.g. ``oom-…`` or one base64-decoded from test_fuzz_decode's failure):

    .venv/bin/python fuzz/fuzz_decode.py -rss_limit_mb=3072 FILE

libFuzzer samples the RSS once a second, so a short-lived allocation past the limit is caught only
sometimes; the run's path also depends on PYTHONHASHSEED (pytest leaves it random), so a CI finding
need not recur on the same ``-seed``: loop over PYTHONHASHSEED=1..N to reproduce one.
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "tests" / "reliability"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

with atheris.instrument_imports(include=["pydicom", "models"]):
    import numpy as np
    import pydicom

    from models.errors import ImageDecodeError
    from models.imaging.dicom_image import load_source_image

import warnings  # noqa: E402

warnings.simplefilter("ignore")  # pydicom warns on every malformed element


def check(data: bytes) -> None:
    """One input: raise only on a contract violation."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:
        return  # refused by the parser: handled by the SCP / worker (see module docstring)
    try:
        img = load_source_image(ds, max_pixels=4096 * 4096)
    except ImageDecodeError:
        return
    px = img.pixels
    if px.dtype != np.float32 or px.shape != (img.rows, img.columns):
        raise AssertionError(
            f"bad SourceImage: dtype {px.dtype}, shape {px.shape} vs {img.rows}x{img.columns}"
        )
    if not np.isfinite(px).all() or px.min() < 0.0 or px.max() > 1.0:
        raise AssertionError(f"pixels outside [0, 1]: {px.min()}..{px.max()}")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    check(data)


def write_seeds(corpus: Path) -> int:
    """Valid and hostile seed files (small) into ``corpus``; returns how many."""
    from hostile import CATEGORIES, base_dataset, encode, part10
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

    corpus.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    n = 0
    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds = base_dataset(rng, 16, 16)
        (corpus / f"valid-{n}.dcm").write_bytes(
            part10(ds.SOPInstanceUID, encode(ds, ts == ImplicitVRLittleEndian), ts)
        )
        n += 1
    ds = base_dataset(rng, 16, 16)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(RLELossless, encoding_plugin="pydicom")
    buf = io.BytesIO()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(buf, enforce_file_format=True)
    (corpus / "valid-rle.dcm").write_bytes(buf.getvalue())
    n += 1
    try:  # an 8-bit JPEG baseline phantom from models.phantoms.synth (small: 3.3 KB)
        from models.phantoms.synth import write_rsna_dataset

        tmp = corpus.parent / (corpus.name + "-synth")
        write_rsna_dataset(tmp, n=1, seed=1, size=64)  # synth draws at least 64 x 64
        for f in (tmp / "stage_2_train_images").glob("*.dcm"):
            (corpus / "valid-jpeg.dcm").write_bytes(f.read_bytes())
            n += 1
    except Exception as exc:  # pragma: no cover - seeds are a convenience
        print(f"no JPEG seed: {exc!r}", file=sys.stderr)
    for name, make in CATEGORIES.items():
        if name in ("huge_private", "deep_sequence"):
            continue  # large seeds slow every mutation down
        uid, body, ts = make(rng)
        data = part10(uid, body, ts)
        if len(data) < 65536:
            (corpus / f"hostile-{name}.dcm").write_bytes(data)
            n += 1
    return n


def main() -> None:
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and not Path(corpus[0]).is_file() and not any(Path(corpus[0]).glob("*")):  # a file: replay it
        print(f"wrote {write_seeds(Path(corpus[0]))} seeds to {corpus[0]}", file=sys.stderr)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
