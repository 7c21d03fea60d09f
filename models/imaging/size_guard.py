"""What a decoder will allocate, bounded from the declared sizes before any decoder runs.

``dicom_image._check_header`` bounds Rows x Columns and checks the Pixel Data length; this module
bounds what the header does not say, each a decompression bomb found by ``fuzz/fuzz_decode.py``:

* JPEG family (JPEG, JPEG lossless, JPEG-LS): the decoders size their output from the codestream's
  frame header. ``codestream_frame_size`` follows the segments as libjpeg-turbo does, but
  pylibjpeg-libjpeg resynchronises differently on a bad marker and can reach another frame header:
  a 1.9 KB instance of 32 x 32 whose SOF0, hidden behind a run of 0xFF bytes, declares 60000 x 60000
  made it allocate 3.4 GB. The components (Nf, up to 255) are not compared at all: a 1.3 KB 4096 x
  4096 JPEG declaring 255 components took 4.1 GB. Every frame header pattern anywhere in the stream
  is therefore checked (entropy-coded data cannot contain one: byte stuffing).
* JPEG 2000: the components (Csiz, up to 16384) and the tiles of the SIZ marker; openjpeg allocates
  per tile and per component: a 500-byte 4096 x 4096 codestream of 17 x 17 tiles and 40 components
  took 6.8 GB.
* Segmented Palette Color LUTs: pydicom expands them into a Python list with no bound (one 6-byte
  linear segment adds up to 65535 entries, an indirect segment repeats earlier ones): 2.3 KB of
  segments took 575 MB.

Each refusal is an :class:`~models.errors.ImageDecodeError` naming the offending values.
"""

from __future__ import annotations

import re
import struct

import pydicom
from pydicom.encaps import get_frame
from pydicom.uid import UID, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from models.errors import ImageDecodeError

#: Frame header markers: SOF0-SOF15 (not DHT C4, JPG C8, DAC CC), DHP (DE, hierarchical) and SOF55
#: (F7, JPEG-LS); each is followed by Lf(2) P(1) Y(2) X(2) Nf(1).
_FRAME_HEADER = re.compile(rb"\xff[\xc0-\xc3\xc5-\xc7\xc9-\xcb\xcd-\xcf\xde\xf7]")
_JPEG_FAMILY = frozenset(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes)
_J2K_FAMILY = frozenset(JPEG2000TransferSyntaxes)
#: the first box of a JP2 file (a JPEG 2000 codestream wrapped in boxes)
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
#: Most tiles a JPEG 2000 frame may have: openjpeg keeps ~11 KB per tile and component
#: (58081 tiles of 17 x 17: 650 MB). A single tile is usual; 4096 tiles is 64 x 64 tiles of 4096 x 4096.
MAX_J2K_TILES = 4096
#: Most precincts and code-blocks (all tiles and components) a JPEG 2000 frame may be coded in:
#: openjpeg keeps ~0.5 KB per code-block and ~1.5 KB per precinct, and a 157-byte codestream of
#: 4096 x 4096 with 2 x 2 precincts (so 1 x 1 code-blocks) took 9.2 GB. Usual coding: 64 x 64
#: code-blocks, one precinct per resolution or 128 x 128 to 256 x 256 precincts (a few thousand).
MAX_J2K_PRECINCTS = 1 << 17
MAX_J2K_CODEBLOCKS = 1 << 19
#: Most entries an expanded Segmented Palette Color LUT may have (a LUT has at most 2^16 entries;
#: four times that as slack for writers that overshoot), and most segments read while expanding it.
MAX_SEGMENTED_LUT_ENTRIES = 4 * 65536
MAX_SEGMENTED_LUT_STEPS = 1_000_000


def check_declared_sizes(
    ds: pydicom.Dataset,
    uid: str,
    *,
    rows: int,
    columns: int,
    samples: int,
    bits_allocated: int,
    frames: int,
    transfer_syntax: UID,
) -> None:
    """Refuse ``ds`` before decoding when a decoder would allocate from sizes beyond its header's
    (``dicom_image`` has checked those: Rows x Columns, the Pixel Data length)."""
    frame = None
    if transfer_syntax in _JPEG_FAMILY or transfer_syntax in _J2K_FAMILY:
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    if frame is not None and transfer_syntax in _JPEG_FAMILY:
        _check_jpeg_frame_headers(uid, transfer_syntax, frame, rows, columns, samples, bits_allocated)
    elif frame is not None and transfer_syntax in _J2K_FAMILY:
        _check_j2k_siz(uid, transfer_syntax, frame, rows, columns, samples, bits_allocated)
    palette = str(ds.get("PhotometricInterpretation", "") or "").strip().upper() == "PALETTE COLOR"
    if palette and "SegmentedRedPaletteColorLookupTableData" in ds:  # expanded only for PALETTE COLOR
        _check_segmented_palette(ds, uid)


def _check_jpeg_frame_headers(
    uid: str, ts: UID, frame: bytes, rows: int, columns: int, samples: int, bits_allocated: int
) -> None:
    """Every frame header pattern in the stream may declare at most the bytes Rows x Columns x
    SamplesPerPixel take (at 2 bytes a sample at least: 12-bit data in 8 bits allocated is the
    decoder's error to report, not a bomb). A height of 0 (set later by a DNL marker) counts as 65535."""
    body = bytes(frame)
    allowed = rows * columns * samples * max(2, (bits_allocated + 7) // 8)
    for match in _FRAME_HEADER.finditer(body):
        head = body[match.start() + 4 : match.start() + 10]
        if len(head) < 6:
            break
        precision, height, width, components = head[0], int.from_bytes(head[1:3], "big"), int.from_bytes(head[3:5], "big"), head[5]  # fmt: skip
        declared = (height or 65535) * width * components * max(1, (precision + 7) // 8)
        if declared > allowed:
            raise ImageDecodeError(
                uid,
                f"{ts.name}: a frame header at byte {match.start()} declares {width} x {height} x {components} "
                f"components of {precision} bits ({declared} bytes), more than Columns x Rows x SamplesPerPixel "
                f"= {columns} x {rows} x {samples} allow ({allowed} bytes)",
            )


def j2k_codestream(frame: bytes) -> bytes | None:
    """The JPEG 2000 codestream of ``frame``: ``frame`` itself, or for a JP2 file the contents of
    its Contiguous Codestream box found by walking the top-level boxes as openjpeg does (None when
    there is none)."""
    body = bytes(frame)
    if not body.startswith(JP2_SIGNATURE):
        return body
    pos = 0
    while pos + 8 <= len(body):
        length, kind = struct.unpack(">I4s", body[pos : pos + 8])
        header = 8
        if length == 1:  # XLBox
            if pos + 16 > len(body):
                return None
            length, header = struct.unpack(">Q", body[pos + 8 : pos + 16])[0], 16
        elif length == 0:  # to the end of the file
            length = len(body) - pos
        if kind == b"jp2c":
            return body[pos + header : pos + length]
        if length < header:
            return None
        pos += length
    return None


def _check_j2k_siz(
    uid: str, ts: UID, frame: bytes, rows: int, columns: int, samples: int, bits_allocated: int
) -> None:
    """The SIZ marker (which must follow SOC) against the header: size, components, precision, tiles."""
    stream = j2k_codestream(frame)
    if stream is None or stream[:4] != b"\xff\x4f\xff\x51" or len(stream) < 42:
        raise ImageDecodeError(
            uid, f"{ts.name}: frame 0 has no JPEG 2000 codestream starting with SOC and SIZ"
        )
    x_siz, y_siz, x_off, y_off, xt_siz, yt_siz, xt_off, yt_off = struct.unpack(">8I", stream[8:40])
    (components,) = struct.unpack(">H", stream[40:42])
    if (y_siz - y_off, x_siz - x_off) != (rows, columns):
        raise ImageDecodeError(
            uid,
            f"{ts.name}: the codestream declares a {x_siz - x_off} x {y_siz - y_off} frame "
            f"but Columns x Rows is {columns} x {rows}",
        )
    if components != samples:
        raise ImageDecodeError(
            uid,
            f"{ts.name}: the codestream declares {components} components but SamplesPerPixel is {samples}",
        )
    depths = stream[42 : 42 + 3 * components : 3]
    if len(depths) != components:
        raise ImageDecodeError(uid, f"{ts.name}: the SIZ marker is truncated ({components} components)")
    precision = max((d & 0x7F) + 1 for d in depths)
    if precision > max(bits_allocated, 16):
        raise ImageDecodeError(
            uid,
            f"{ts.name}: the codestream declares {precision}-bit samples but BitsAllocated is {bits_allocated}",
        )
    if xt_siz == 0 or yt_siz == 0 or xt_off > x_off or yt_off > y_off:
        return  # invalid tiling: openjpeg refuses it before allocating tiles
    tiles = -(-(x_siz - xt_off) // xt_siz) * -(-(y_siz - yt_off) // yt_siz)
    if tiles > MAX_J2K_TILES:
        raise ImageDecodeError(
            uid,
            f"{ts.name}: the codestream declares {tiles} tiles of {xt_siz} x {yt_siz} "
            f"(more than {MAX_J2K_TILES})",
        )
    tile_w, tile_h = min(xt_siz, x_siz - x_off), min(yt_siz, y_siz - y_off)
    for style in _j2k_coding_styles(stream, components):
        precincts, blocks = _j2k_partition(tile_w, tile_h, *style)
        precincts, blocks = precincts * tiles * components, blocks * tiles * components
        if precincts > MAX_J2K_PRECINCTS or blocks > MAX_J2K_CODEBLOCKS:
            levels, cb_w, cb_h, sizes = style
            raise ImageDecodeError(
                uid,
                f"{ts.name}: the coding style ({levels} decomposition levels, code-blocks of {cb_w} x {cb_h}, "
                f"precincts of {sizes or 'the default size'}) makes {precincts} precincts and {blocks} "
                f"code-blocks (more than {MAX_J2K_PRECINCTS} / {MAX_J2K_CODEBLOCKS})",
            )


#: COD / COC coding style: (decomposition levels, code-block width and height, precinct sizes
#: (width, height) per resolution from the lowest, or None for the default 2^15 x 2^15).
_CodingStyle = tuple[int, int, int, "list[tuple[int, int]] | None"]


def _j2k_coding_styles(stream: bytes, components: int) -> list[_CodingStyle]:
    """Every COD and COC of the main header and of the tile-part headers (hopping from SOT to SOT
    by Psot, as openjpeg does)."""
    styles: list[_CodingStyle] = []
    pos, end = 2, len(stream)  # after SOC
    while pos + 4 <= end:
        marker, length = struct.unpack(">HH", stream[pos : pos + 4])
        if marker == 0xFF90:  # SOT: its tile-part header, then the next tile-part Psot bytes on
            psot = int.from_bytes(stream[pos + 6 : pos + 10], "big") if pos + 10 <= end else 0
            part_end = pos + psot if psot >= 14 else end
            header_end = stream.find(b"\xff\x93", pos, part_end)  # SOD
            styles += _coding_styles_in(
                stream[pos + 2 + length : part_end if header_end < 0 else header_end], components
            )
            if psot < 14:  # 0: the last tile-part runs to EOC
                break
            pos += psot
            continue
        if marker in (0xFF52, 0xFF53):
            styles += _coding_styles_in(stream[pos : pos + 2 + length], components)
        if marker == 0xFFD9 or length < 2:
            break
        pos += 2 + length
    return styles


def _coding_styles_in(segments: bytes, components: int) -> list[_CodingStyle]:
    """The COD and COC marker segments among ``segments`` (consecutive marker segments)."""
    styles: list[_CodingStyle] = []
    pos = 0
    while pos + 4 <= len(segments):
        marker, length = struct.unpack(">HH", segments[pos : pos + 4])
        body = segments[pos + 4 : pos + 2 + length]
        if marker == 0xFF52 and len(body) >= 10:  # COD: Scod, SGcod (4), SPcod
            styles.append(_spcod(body[0], body[5:]))
        elif marker == 0xFF53:  # COC: Ccoc (1 or 2 bytes), Scoc, SPcoc
            skip = 1 if components < 257 else 2
            if len(body) >= skip + 6:
                styles.append(_spcod(body[skip], body[skip + 1 :]))
        if length < 2:
            break
        pos += 2 + length
    return styles


def _spcod(scod: int, sp: bytes) -> _CodingStyle:
    levels, xcb, ycb = sp[0], sp[1], sp[2]
    sizes = None
    if scod & 1:  # user-defined precincts, one byte per resolution: PPx low nibble, PPy high
        sizes = [(1 << (b & 0x0F), 1 << (b >> 4)) for b in sp[5 : 5 + levels + 1]]
    return levels, 1 << min(xcb + 2, 15), 1 << min(ycb + 2, 15), sizes


def _j2k_partition(
    width: int, height: int, levels: int, cb_w: int, cb_h: int, sizes: list[tuple[int, int]] | None
) -> tuple[int, int]:
    """(precincts, code-blocks) of one tile-component of ``width`` x ``height`` (an estimate that
    is never below openjpeg's count by much: code-blocks are counted per band, at least one per
    precinct and band)."""
    precincts = blocks = 0
    for r in range(min(levels, 32) + 1):
        scale = 1 << (levels - r)
        rw, rh = -(-width // scale), -(-height // scale)
        pw, ph = sizes[r] if sizes and r < len(sizes) else (1 << 15, 1 << 15)
        n_prec = -(-rw // pw) * -(-rh // ph)
        bands, bw, bh = (1, rw, rh) if r == 0 else (3, -(-rw // 2), -(-rh // 2))
        # code-blocks never straddle a precinct: in a band they are at most half the precinct (r > 0)
        cw, ch = min(cb_w, pw if r == 0 else max(pw // 2, 1)), min(cb_h, ph if r == 0 else max(ph // 2, 1))
        precincts += n_prec
        blocks += bands * max(n_prec, -(-bw // cw) * -(-bh // ch))
    return precincts, blocks


def _check_segmented_palette(ds: pydicom.Dataset, uid: str) -> None:
    """Each Segmented Palette Color LUT must expand to at most MAX_SEGMENTED_LUT_ENTRIES entries."""
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor", None)
    try:
        depth = int(descriptor[2])
        little = (
            bool(ds.file_meta._tsyntax_encoding[1])
            if hasattr(ds, "file_meta")
            else bool(ds.original_encoding[1])
        )
    except Exception:  # noqa: BLE001 - a broken descriptor: pydicom refuses it before expanding anything
        return
    fmt = "B" if depth // 8 == 1 else "H"
    for colour in ("Red", "Green", "Blue", "Alpha"):
        data = ds.get(f"Segmented{colour}PaletteColorLookupTableData", None)
        if not data:
            continue
        raw = bytes(data)
        size = 1 if fmt == "B" else 2
        values = struct.unpack(
            f"{'<' if little else '>'}{len(raw) // size}{fmt}", raw[: len(raw) // size * size]
        )
        try:
            entries = segmented_lut_length(values, fmt == "B", little)
        except _TooLarge as exc:
            raise ImageDecodeError(
                uid, f"Segmented{colour}PaletteColorLookupTableData ({len(raw)} bytes) {exc}"
            ) from None
        if entries > MAX_SEGMENTED_LUT_ENTRIES:  # pragma: no cover - _TooLarge is raised first
            raise ImageDecodeError(
                uid, f"Segmented{colour}PaletteColorLookupTableData expands to {entries} entries"
            )


class _TooLarge(Exception):
    pass


def segmented_lut_length(data: tuple[int, ...], eight_bit: bool, little: bool) -> int:
    """How many entries pydicom's ``_expand_segmented_lut`` makes of ``data`` (at least: never
    fewer), without expanding it. Raises ``_TooLarge`` beyond MAX_SEGMENTED_LUT_ENTRIES entries or
    MAX_SEGMENTED_LUT_STEPS segments read (nested indirect segments grow exponentially)."""
    steps = [0]
    indirect = [3, 2, 1, 0] if little else [2, 3, 0, 1]

    def walk(start: int, nr_segments: int | None, total: int) -> int:
        count, offset, read = 0, start, 0
        while offset + 1 < len(data):
            steps[0] += 1
            if steps[0] > MAX_SEGMENTED_LUT_STEPS:
                raise _TooLarge(f"needs more than {MAX_SEGMENTED_LUT_STEPS} segments to be read")
            opcode, length = data[offset], data[offset + 1]
            offset += 2
            if opcode == 0:  # discrete
                count += len(data[offset : offset + length])
                offset += length
            elif opcode == 1:  # linear
                count += length
                offset += 1
            elif opcode == 2:  # indirect: `length` segments from an earlier offset, expanded again
                try:
                    if eight_bit:
                        b = [data[offset + v] for v in indirect]
                        target = (b[0] << 8 | b[1]) << 16 | (b[2] << 8 | b[3])
                        offset += 4
                    else:
                        target = data[offset + 1] << 16 | data[offset]
                        offset += 2
                except IndexError:
                    return count  # pydicom raises here too
                count += walk(target, length, total + count)
            else:
                return count  # unknown segment type: pydicom raises
            if total + count > MAX_SEGMENTED_LUT_ENTRIES:
                raise _TooLarge(f"expands to more than {MAX_SEGMENTED_LUT_ENTRIES} entries")
            read += 1
            if read == nr_segments:
                break
        return count

    try:
        return walk(0, None, 0)
    except RecursionError:
        raise _TooLarge("nests indirect segments too deeply") from None
