"""models.imaging.size_guard: decompression bombs found by fuzz/fuzz_decode.py are refused before any
decoder allocates (each made the node's decode path allocate 0.5-9 GB from a few hundred bytes)."""

from __future__ import annotations

import io
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.processing import _expand_segmented_lut
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from models.errors import UNKNOWN_UID, ImageDecodeError, sop_uid_of
from models.imaging import dicom_image, size_guard
from models.imaging.dicom_image import codestream_frame_size, load_source_image

try:  # tests/ is on sys.path under pytest's default "prepend" import mode (no tests/__init__.py)
    from dicom_factory import make_dataset
except ImportError:  # pragma: no cover
    from tests.dicom_factory import make_dataset

REPO = Path(__file__).resolve().parents[1]


def _encapsulated(ds: Dataset, frame: bytes, ts: str, bits: int = 8) -> Dataset:
    ds.file_meta.TransferSyntaxUID = ts
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


def _jpeg_segments(rows: int, columns: int) -> list[bytes]:
    """The marker segments of a real 8-bit grey JPEG (SOI first, the scan and EOI last)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((rows, columns), 128, dtype=np.uint8)).save(buf, format="JPEG")
    s = buf.getvalue()
    segments, pos = [s[:2]], 2
    while s[pos + 1] != 0xDA:
        length = struct.unpack(">H", s[pos + 2 : pos + 4])[0]
        segments.append(s[pos : pos + 2 + length])
        pos += 2 + length
    return [*segments, s[pos:]]


def _sof0(rows: int, columns: int, components: int) -> bytes:
    body = struct.pack(">BHHB", 8, rows, columns, components)
    body += b"".join(struct.pack(">BBB", i + 1, 0x11, 0) for i in range(components))
    return b"\xff\xc0" + struct.pack(">H", len(body) + 2) + body


def fuzzer_oom_input() -> Dataset:
    """The fuzzer's out-of-memory input, reduced: a 32 x 32 JPEG Baseline whose SOF0 declares
    60000 x 60000, behind an invalid marker (FF 0B) whose "length" runs past it. The length-following
    walk of ``codestream_frame_size`` (libjpeg-turbo's) skips the SOF0 and finds no frame header, so
    the size check was skipped; pylibjpeg-libjpeg resynchronises on the bad marker, reads the SOF0 and
    allocated 3.4 GB (RSS 3588 MB in the failing CI run, 3581 MB replayed; this reduction: 7.6 GB, then
    libjpeg ran out at an 8 GB address-space cap) before failing."""
    segments = _jpeg_segments(32, 32)
    stream = b"".join(
        seg if seg[1] != 0xC0 else b"\xff\xff\xff\x0b\x0b\x0c" + _sof0(60000, 60000, 1) for seg in segments
    )
    return _encapsulated(make_dataset(np.zeros((32, 32), np.uint8)), stream, JPEGBaseline8Bit)


def jpeg_with_components(components: int, size: int = 4096) -> Dataset:
    """A 4096 x 4096 grey JPEG (Rows x Columns agree) whose SOF0 declares ``components`` components:
    255 made pylibjpeg-libjpeg allocate 4.1 GB from 1.3 KB."""
    stream = b"".join(
        seg if seg[1] != 0xC0 else _sof0(size, size, components) for seg in _jpeg_segments(8, 8)
    )
    ds = make_dataset(np.zeros((8, 8), np.uint8))
    ds.Rows = ds.Columns = size
    return _encapsulated(ds, stream, JPEGBaseline8Bit)


def j2k(
    size: int = 4096, tile: int | None = None, components: int = 1, precinct_exp: int | None = None
) -> Dataset:
    """A JPEG 2000 codestream of a 64 x 64 image whose SIZ says ``size`` x ``size`` (Rows x Columns
    agree), with ``tile`` x ``tile`` tiles, ``components`` components and, if given, user-defined
    precincts of 2^precinct_exp at every resolution."""
    from openjpeg.utils import encode_array

    cs = bytearray(encode_array(np.full((64, 64), 100, np.uint16), bits_stored=16))
    lsiz = struct.unpack(">H", cs[4:6])[0]
    siz = bytearray(cs[6:40])
    struct.pack_into(">8I", siz, 2, size, size, 0, 0, tile or size, tile or size, 0, 0)
    siz += struct.pack(">H", components) + bytes(cs[42:45]) * components
    rest = bytes(cs[4 + lsiz :])
    if precinct_exp is not None:
        i = rest.find(b"\xff\x52")
        length = struct.unpack(">H", rest[i + 2 : i + 4])[0]
        cod = bytearray(rest[i + 4 : i + 2 + length])
        cod[0] |= 1
        cod = cod[:10] + bytes([precinct_exp | precinct_exp << 4]) * (cod[5] + 1)
        rest = rest[:i] + b"\xff\x52" + struct.pack(">H", len(cod) + 2) + bytes(cod) + rest[i + 2 + length :]
    stream = b"\xff\x4f\xff\x51" + struct.pack(">H", len(siz) + 2) + bytes(siz) + rest
    ds = make_dataset(np.zeros((8, 8), np.uint16))
    ds.Rows = ds.Columns = size
    return _encapsulated(ds, stream, JPEG2000Lossless, bits=16)


def palette_with_segments(words: list[int]) -> Dataset:
    """A 16 x 16 PALETTE COLOR image whose three Segmented LUTs are ``words`` (16-bit)."""
    ds = make_dataset(np.arange(256, dtype=np.uint8).reshape(16, 16), photometric="PALETTE COLOR")
    data = struct.pack(f"<{len(words)}H", *words)
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"Segmented{colour}PaletteColorLookupTableData", data)
    return ds


#: 400 linear segments of 65535 entries each (2.4 KB): pydicom expanded them into a 26-million-entry list.
LINEAR_BOMB = [0, 1, 0] + [1, 65535, 65535, 1, 65535, 0] * 200
#: indirect segment k repeats the k segments before it: 2^(k-1) entries, exponential (2^59 from 0.5 KB).
INDIRECT_BOMB = [0, 1, 7] + [w for k in range(1, 61) for w in (2, k, 0, 0)]

BOMBS = {
    "fuzzer_oom_input": fuzzer_oom_input,
    "jpeg_255_components": lambda: jpeg_with_components(255),
    "j2k_40_components": lambda: j2k(tile=17, components=40),
    "j2k_58081_tiles": lambda: j2k(tile=17),
    "j2k_2x2_precincts": lambda: j2k(precinct_exp=1),
    "segmented_lut_linear": lambda: palette_with_segments(LINEAR_BOMB),
    "segmented_lut_indirect": lambda: palette_with_segments(INDIRECT_BOMB),
    "jp2_decoy": lambda: jp2_with_a_decoy(),  # defined below
}


def test_fuzzer_oom_input_hides_its_frame_header_from_the_frame_size_walk() -> None:
    """Why the existing check did not stop it: the walk finds no frame header (so it checked nothing)."""
    from pydicom.encaps import get_frame

    frame = get_frame(fuzzer_oom_input().PixelData, 0, number_of_frames=1)
    assert codestream_frame_size(JPEGBaseline8Bit, frame) is None
    assert _sof0(60000, 60000, 1) in frame


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("fuzzer_oom_input", "60000 x 60000 x 1 components"),
        ("jpeg_255_components", "4096 x 4096 x 255 components"),
        ("j2k_40_components", "declares 40 components but SamplesPerPixel is 1"),
        ("j2k_58081_tiles", "58081 tiles of 17 x 17"),
        ("j2k_2x2_precincts", "precincts of [(2, 2)"),
        ("segmented_lut_linear", "expands to more than 262144 entries"),
        ("segmented_lut_indirect", "expands to more than 262144 entries"),
    ],
)
def test_bomb_is_refused_before_any_decoder(name: str, words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[object] = []
    monkeypatch.setattr(dicom_image, "_decode_frame0", lambda ds: decoded.append(ds))
    ds = BOMBS[name]()
    with pytest.raises(ImageDecodeError, match=r"^cannot decode SOP Instance [0-9.]+: ") as info:
        load_source_image(ds, max_pixels=4096 * 4096)
    assert words in str(info.value)
    assert decoded == []


def test_bombs_stay_small_in_memory(tmp_path: Path) -> None:
    """Each bomb decoded in a fresh process (the real decoders, no monkeypatch): the peak RSS grows by
    less than 150 MB (before the guard, in this order: > 7.6, 4.1, 6.8, 0.65, 9.2, 2.1, unbounded, > 5.7 GB)."""
    for name, make in BOMBS.items():
        make().save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    script = (
        "import resource, sys, pydicom\n"
        "from models.errors import ImageDecodeError\n"
        "from models.imaging.dicom_image import load_source_image\n"
        "for path in sys.argv[1:]:\n"
        "    ds = pydicom.dcmread(path)\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    try:\n"
        "        load_source_image(ds, max_pixels=4096 * 4096)\n"
        "    except ImageDecodeError:\n"
        "        pass\n"
        "    print(path, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    # an address-space cap as a backstop: a regression fails fast with MemoryError instead of swapping
    cap = 4 << 30

    def limit() -> None:  # pragma: no cover - runs in the child
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    res = subprocess.run(
        [sys.executable, "-c", script, *sorted(str(p) for p in tmp_path.glob("*.dcm"))],
        capture_output=True, text=True, timeout=120, cwd=REPO, preexec_fn=limit,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    growth = {Path(line.split()[0]).stem: int(line.split()[1]) for line in res.stdout.splitlines()}
    assert set(growth) == set(BOMBS), res.stdout
    assert all(mb < 150 for mb in growth.values()), growth


@pytest.mark.parametrize("name", ["spring", "summer", "fall", "winter"])
def test_segmented_lut_length_is_pydicoms(name: str) -> None:
    """The count without expanding is the length pydicom's expansion has (pydicom's own segmented palettes)."""
    from pydicom.data import get_palette_files

    ds = pydicom.dcmread(get_palette_files(f"{name}.dcm")[0])
    size = ds.RedPaletteColorLookupTableDescriptor[2] // 8
    for colour in ("Red", "Green", "Blue"):
        raw = ds[f"Segmented{colour}PaletteColorLookupTableData"].value
        fmt = f"<{len(raw) // size}{'B' if size == 1 else 'H'}"
        values = struct.unpack(fmt, raw)
        expanded = _expand_segmented_lut(values, fmt)
        assert len(expanded) > 200
        assert size_guard.segmented_lut_length(values, size == 1, True) == len(expanded)


def test_segmented_lut_length_with_indirect_segments_is_pydicoms() -> None:
    # discrete (3 entries), linear (100), indirect (the first 2 segments again: 103), linear (20)
    words = (0, 3, 10, 20, 30, 1, 100, 500, 2, 2, 0, 0, 1, 20, 7)
    expanded = _expand_segmented_lut(words, f"<{len(words)}H")
    assert len(expanded) == 226
    assert size_guard.segmented_lut_length(words, False, True) == 226


def test_valid_segmented_palette_image_decodes_as_its_expanded_lut() -> None:
    """A small valid segmented LUT passes the guard and gives the same image as the same LUT unsegmented."""
    words = [0, 1, 0, 1, 255, 65535]  # 0, then a ramp to 65535 over 255 entries: 256 entries
    segmented = load_source_image(palette_with_segments(words))
    lut = np.array(_expand_segmented_lut(tuple(words), "<6H"), dtype="<u2")
    assert lut.size == 256
    ds = palette_with_segments(words)
    for colour in ("Red", "Green", "Blue"):
        del ds[f"Segmented{colour}PaletteColorLookupTableData"]
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.tobytes())
    assert np.array_equal(segmented.pixels, load_source_image(ds).pixels)


@pytest.mark.parametrize(("tile", "precinct_exp"), [(None, None), (1024, None), (None, 7)])
def test_usual_j2k_codings_pass_the_guard(tile: int | None, precinct_exp: int | None) -> None:
    ds = j2k(tile=tile, precinct_exp=precinct_exp)
    size_guard.check_declared_sizes(
        ds, "1.2.3", rows=4096, columns=4096, samples=1, bits_allocated=16, frames=1,
        transfer_syntax=JPEG2000Lossless,
    )  # fmt: skip


def test_jpeg_with_its_own_sizes_passes_the_guard() -> None:
    ds = jpeg_with_components(1, size=512)
    size_guard.check_declared_sizes(
        ds, "1.2.3", rows=512, columns=512, samples=1, bits_allocated=8, frames=1, transfer_syntax=JPEGBaseline8Bit
    )  # fmt: skip


def test_sop_uid_of_survives_an_element_that_cannot_be_printed() -> None:
    """Found by the fuzzer too: a mangled SOP Instance UID whose str() raised NotImplementedError
    (unknown VR inside) escaped load_source_image as a bare exception."""

    class Unprintable:
        def __str__(self) -> str:
            raise NotImplementedError("Unknown Value Representation 'QU'")

    class Broken:
        def get(self, keyword: str, default: object = None) -> object:
            return Unprintable()

    assert sop_uid_of(Broken()) == UNKNOWN_UID


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def jp2_with_a_decoy() -> Dataset:
    """A 64 x 64 instance whose frame is a JP2 file: an XML box holding a 64 x 64 codestream (the
    decoy a search for the first SOC + SIZ finds), then the Contiguous Codestream box openjpeg
    decodes: 4096 x 4096 in 2 x 2 precincts (9.2 GB)."""
    from openjpeg.utils import encode_array
    from pydicom.encaps import get_frame

    decoy = encode_array(np.full((64, 64), 100, np.uint16), bits_stored=16)
    jp2 = encode_array(np.full((64, 64), 100, np.uint16), bits_stored=16, codec_format=1)
    head = bytearray(jp2[: jp2.index(b"jp2c") - 4])  # signature, ftyp, jp2h (its ihdr: 4096 x 4096)
    ihdr = head.index(b"ihdr") + 4
    head[ihdr : ihdr + 8] = struct.pack(">II", 4096, 4096)
    bomb = get_frame(j2k(precinct_exp=1).PixelData, 0, number_of_frames=1)
    ds = make_dataset(np.zeros((64, 64), np.uint16))
    return _encapsulated(
        ds, bytes(head) + _box(b"xml ", decoy) + _box(b"jp2c", bomb), JPEG2000Lossless, bits=16
    )


def test_jp2_codestream_is_found_box_by_box(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.encaps import get_frame

    ds = jp2_with_a_decoy()
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    # the codestream openjpeg decodes, not the decoy a search for the first SOC + SIZ finds (64 x 64)
    assert codestream_frame_size(JPEG2000Lossless, frame) == (4096, 4096)
    decoded: list[object] = []
    monkeypatch.setattr(dicom_image, "_decode_frame0", lambda ds: decoded.append(ds))
    with pytest.raises(ImageDecodeError, match="declares a 4096 x 4096 frame but Columns x Rows is 64 x 64"):
        load_source_image(ds)
    assert decoded == []
