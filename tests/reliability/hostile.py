"""Deterministic generator of malformed / hostile DICOM files for the bad-input scenario.

Every file has a valid Part-10 file meta header (so an SCU can frame it: SOP Class, SOP Instance
and Transfer Syntax UIDs) followed by a data set that is broken in one of the ways listed in
``CATEGORIES``. The data set bytes are sent *as they are* (pynetdicom
``STORE_SEND_CHUNKED_DATASET``): no client-side decode or repair.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def base_dataset(rng: random.Random, rows: int = 32, columns: int = 32) -> Dataset:
    """A small, valid CR chest image (routed for analysis)."""
    ds = Dataset()
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = "20260101"
    ds.Modality = "CR"
    ds.Manufacturer = "hostile-test"
    ds.PatientName = "Hostile^Test"
    ds.PatientID = "HOSTILE"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    arr = np.random.default_rng(rng.randrange(2**31)).integers(0, 4096, (rows, columns), dtype=np.uint16)
    ds.PixelData = arr.tobytes()
    return ds


def encode(ds: Dataset, implicit: bool = False) -> bytes:
    """Encode a data set (no meta) in explicit (or implicit) VR little endian."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def part10(sop_uid: str, body: bytes, ts: str = EXPLICIT_LE, sop_class: str = CR_STORAGE) -> bytes:
    """Preamble + valid file meta + ``body`` (whatever it is)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue() + body


def _elem(group: int, elem: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"UC", b"UR"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, n) + value
    return struct.pack("<HH2sH", group, elem, vr, n & 0xFFFF) + value


def _split(ds: Dataset, before_group: int) -> tuple[Dataset, Dataset]:
    a, b = Dataset(), Dataset()
    for el in ds:
        (a if el.tag.group < before_group else b).add(el)
    return a, b


# ---------------------------------------------------------------------------------- categories
def truncated(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    body = encode(ds)
    return ds.SOPInstanceUID, body[: rng.randrange(0, len(body))], EXPLICIT_LE


def wrong_vr(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    body = bytearray(encode(ds))
    # corrupt the VR of 1-4 elements among the first ones (header attributes)
    offsets, pos = [], 0
    while pos + 8 <= len(body) and len(offsets) < 20:
        offsets.append(pos)
        vr = bytes(body[pos + 4 : pos + 6])
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
            break
        pos += 8 + struct.unpack("<H", body[pos + 6 : pos + 8])[0]
    for off in rng.sample(offsets, k=min(len(offsets), rng.randint(1, 4))):
        body[off + 4 : off + 6] = rng.choice([b"US", b"UL", b"FD", b"SQ", b"XX", b"\x00\x00", b"AT", b"OB"])
    return ds.SOPInstanceUID, bytes(body), EXPLICIT_LE


def missing_pixels(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    del ds.PixelData
    return ds.SOPInstanceUID, encode(ds), EXPLICIT_LE


def short_pixels(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    data = ds.PixelData
    ds.PixelData = data[: rng.randrange(0, len(data) // 2) & ~1]
    return ds.SOPInstanceUID, encode(ds), EXPLICIT_LE


def size_mismatch(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    ds.Rows, ds.Columns = rng.choice([(33, 32), (32, 64), (1, 1), (0, 32), (32, 0), (4096, 4096)])
    return ds.SOPInstanceUID, encode(ds), EXPLICIT_LE


def claimed_huge(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    ds.Rows, ds.Columns = 65535, 65535
    if rng.random() < 0.3:
        ds.NumberOfFrames = rng.choice([1, 65535, 2**31 - 1])
    return ds.SOPInstanceUID, encode(ds), EXPLICIT_LE


def bad_photometric(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    ds.PhotometricInterpretation = rng.choice(
        ["PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "RGB", "HSV", "ARGB", "CMYK", "FOO", "", "MONOCHROME3"]
    )
    if rng.random() < 0.5:
        ds.SamplesPerPixel = rng.choice([0, 2, 3, 4])
    return ds.SOPInstanceUID, encode(ds), EXPLICIT_LE


def bad_bits(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    choice = rng.randrange(5)
    if choice == 0:
        ds.BitsAllocated = rng.choice([0, 1, 7, 12, 24, 64])
    elif choice == 1:
        ds.BitsStored = rng.choice([0, 17, 32, 255])
    elif choice == 2:
        ds.PixelRepresentation = rng.choice([2, 255])
    elif choice == 3:
        ds.NumberOfFrames = rng.choice([0, 2, 100000])
    else:
        ds.HighBit = rng.choice([0, 15, 40])
        ds.BitsStored = rng.choice([1, 16])
    return ds.SOPInstanceUID, encode(ds), EXPLICIT_LE


def _encapsulated(frames: list[bytes]) -> bytes:
    out = bytearray(struct.pack("<HHI", 0xFFFE, 0xE000, 0))  # empty basic offset table
    for f in frames:
        if len(f) % 2:
            f = f + b"\x00"
        out += struct.pack("<HHI", 0xFFFE, 0xE000, len(f)) + f
    out += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return bytes(out)


def jpeg_claiming(rows: int, columns: int, claimed: tuple[int, int]) -> bytes:
    """A real ``rows`` x ``columns`` 8-bit JPEG whose SOF0 says ``claimed`` (rows, columns): a
    decompression bomb for a decoder that trusts the frame header (3 GB for 60000 x 60000)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((rows, columns), 128, dtype=np.uint8)).save(buf, format="JPEG")
    stream = bytearray(buf.getvalue())
    sof = stream.find(b"\xff\xc0")
    stream[sof + 5 : sof + 9] = claimed[0].to_bytes(2, "big") + claimed[1].to_bytes(2, "big")
    return bytes(stream)


def broken_codestream(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    del ds.PixelData
    ts = rng.choice([JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless, RLELossless])
    if ts == JPEGBaseline8Bit:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    kind = rng.randrange(4)
    if kind == 0:
        frame = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    elif kind == 1:  # plausible markers, garbage in between
        frame = b"\xff\xd8\xff\xdb" + bytes(rng.randrange(256) for _ in range(200)) + b"\xff\xd9"
    elif kind == 2:  # JPEG 2000 SOC/SIZ then garbage
        frame = b"\xff\x4f\xff\x51" + bytes(rng.randrange(256) for _ in range(200)) + b"\xff\xd9"
    else:  # RLE header claiming 15 segments at wild offsets
        frame = struct.pack("<16I", 15, *[rng.randrange(0, 2**32) for _ in range(15)]) + b"\x00" * 8
    head, tail = _split(ds, 0x7FE0)
    body = encode(head) + _elem(0x7FE0, 0x0010, b"OB", _encapsulated([frame]), length=0xFFFFFFFF)
    return ds.SOPInstanceUID, body, str(ts)


def codestream_bomb(rng: random.Random) -> tuple[str, bytes, str]:
    """JPEG Baseline whose frame header claims far more pixels than Rows x Columns (decompression bomb)."""
    ds = base_dataset(rng)
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    claimed = rng.choice([(60000, 60000), (65535, 4096), (9000, 9000), (int(ds.Rows) + 1, int(ds.Columns))])
    frame = jpeg_claiming(int(ds.Rows), int(ds.Columns), claimed)
    head, _tail = _split(ds, 0x7FE0)
    body = encode(head) + _elem(0x7FE0, 0x0010, b"OB", _encapsulated([frame]), length=0xFFFFFFFF)
    return ds.SOPInstanceUID, body, str(JPEGBaseline8Bit)


def deep_sequence(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    depth = rng.randint(50, 3000)
    seq = b""
    for _ in range(depth):  # undefined-length SQ with one undefined-length item, nested
        seq = (struct.pack("<HH2sHI", 0x0009, 0x1001, b"SQ", 0, 0xFFFFFFFF)
               + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + seq
               + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))  # fmt: skip
    head, tail = _split(ds, 0x0009)
    creator = _elem(0x0009, 0x0010, b"LO", b"HOSTILE ")
    return ds.SOPInstanceUID, encode(head) + creator + seq + encode(tail), EXPLICIT_LE


def huge_private(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    head, tail = _split(ds, 0x0011)
    creator = _elem(0x0011, 0x0010, b"LO", b"HOSTILE ")
    if rng.random() < 0.15:  # really big (2-8 MiB) - kept rare to bound the run time
        size = rng.randint(2, 8) * 2**20
        value = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, size, dtype=np.uint8).tobytes()
        private = _elem(0x0011, 0x1001, b"OB", value)
    else:  # a length that lies: claims up to 4 GiB, the data set ends long before
        private = _elem(0x0011, 0x1001, b"OB", b"\x00" * 64, length=rng.choice([2**31, 0xFFFFFFF0, 10**9]))
    return ds.SOPInstanceUID, encode(head) + creator + private + encode(tail), EXPLICIT_LE


def garbage(rng: random.Random) -> tuple[str, bytes, str]:
    n = rng.choice([0, 1, 7, 8, 100, 1000, 4096])
    return generate_uid(), bytes(rng.randrange(256) for _ in range(n)), rng.choice([EXPLICIT_LE, IMPLICIT_LE])


def ts_mismatch(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    if rng.random() < 0.5:  # meta says implicit, body is explicit (or the other way round)
        return ds.SOPInstanceUID, encode(ds), IMPLICIT_LE
    if rng.random() < 0.5:
        return ds.SOPInstanceUID, encode(ds, implicit=True), EXPLICIT_LE
    return ds.SOPInstanceUID, encode(ds), str(JPEGBaseline8Bit)  # native pixels under a JPEG syntax


def bad_lengths(rng: random.Random) -> tuple[str, bytes, str]:
    ds = base_dataset(rng)
    head, tail = _split(ds, 0x0010)
    bad = rng.choice([
        _elem(0x0010, 0x0010, b"PN", b"X", length=0xFFFF),  # longer than the data set
        struct.pack("<HH2sHI", 0x0010, 0x0010, b"UT", 0, 0xFFFFFFFF) + b"ABC",  # undefined length text
        _elem(0x0010, 0x0010, b"PN", b"ODD"),  # odd length
        struct.pack("<HH", 0x0010, 0x0010),  # element cut after the tag
    ])  # fmt: skip
    return ds.SOPInstanceUID, encode(head) + bad + encode(tail), EXPLICIT_LE


def non_cxr(rng: random.Random) -> tuple[str, bytes, str]:
    """Well-formed but not for analysis (control group: must be skipped cleanly)."""
    ds = base_dataset(rng)
    ds.Modality = rng.choice(["CT", "MR", "", "US"])  # (OT with CHEST is analysed: docs/ROUTING.md rule 7)
    return ds.SOPInstanceUID, encode(ds), EXPLICIT_LE


CATEGORIES: dict[str, Callable[[random.Random], tuple[str, bytes, str]]] = {
    "truncated": truncated,
    "wrong_vr": wrong_vr,
    "missing_pixels": missing_pixels,
    "short_pixels": short_pixels,
    "size_mismatch": size_mismatch,
    "claimed_65535x65535": claimed_huge,
    "bad_photometric": bad_photometric,
    "bad_bits": bad_bits,
    "broken_codestream": broken_codestream,
    "codestream_bomb": codestream_bomb,
    "deep_sequence": deep_sequence,
    "huge_private": huge_private,
    "garbage": garbage,
    "ts_mismatch": ts_mismatch,
    "bad_lengths": bad_lengths,
    "non_cxr": non_cxr,
}


def generate(out: Path, n: int, seed: int) -> list[tuple[Path, str, str]]:
    """Write ``n`` hostile files round-robin over the categories; returns (path, SOP UID, category)."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    names = list(CATEGORIES)
    files = []
    for i in range(n):
        cat = names[i % len(names)]
        uid, body, ts = CATEGORIES[cat](rng)
        path = out / f"{i:05d}-{cat}.dcm"
        path.write_bytes(part10(uid, body, ts))
        files.append((path, uid, cat))
    return files


def meta_sop_uid(path: Path) -> str:
    """The SOP Instance UID in the file meta (the generator's contract: meta is always valid)."""
    return str(pydicom.filereader.read_file_meta_info(path).MediaStorageSOPInstanceUID)
