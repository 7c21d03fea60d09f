"""Decode one DICOM chest X-ray into a display-ready greyscale :class:`SourceImage`.

The pipeline is the DICOM grayscale display pipeline, done once and the same way for
training and inference:

1. sanity checks *before* any decoding (size, bit depth, Pixel Data length) so that a
   hostile or broken header cannot make us allocate gigabytes;
2. decode frame 0 (pydicom 3 + pylibjpeg / pyjpegls plug-ins; every transfer syntax a
   PACS sends for CXR);
3. Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence);
4. VOI: VOI LUT Sequence, else the first Window Center/Width (VOI LUT Function LINEAR,
   LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2), else a robust percentile window;
5. MONOCHROME1 inverted, so the output is always "bone bright" (MONOCHROME2 convention);
   RGB / YBR / PALETTE COLOR turned into luminance.

The result is float32 in [0, 1]. Every failure is an :class:`~models.errors.ImageDecodeError`
naming the SOP Instance UID.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pydicom
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import UID, JPEGBaseline8Bit

from models.errors import ImageDecodeError, UnsupportedImageError, sop_uid_of
from models.findings import checked_spacing
from models.imaging.levels import StoredLevels, content_region, percentile_limits, statistics_sample
from models.imaging.size_guard import JP2_SIGNATURE, check_declared_sizes, j2k_codestream
from models.imaging.spacing import pixel_spacing

logger = logging.getLogger(__name__)

#: Default limit on Rows x Columns (two 4096 x 4096 images' worth).
DEFAULT_MAX_PIXELS = 4096 * 4096 * 2

#: Percentiles of the fallback window when the instance carries no VOI.
PERCENTILE_WINDOW = (0.5, 99.5)

_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")
_SUPPORTED_PI = _GREY + _COLOUR + ("PALETTE COLOR",)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
_PERCENTILE_SAMPLE = 1_000_000  # pixels used to estimate the percentile window


@dataclass(frozen=True)
class SourceImage:
    """A decoded, display-ready greyscale image (0 = black, 1 = white, bone bright)."""

    pixels: np.ndarray
    rows: int
    columns: int
    sop_instance_uid: str
    #: (row spacing, column spacing) in mm, i.e. DICOM PixelSpacing order.
    pixel_spacing_mm: tuple[float, float] | None = None
    #: "PixelSpacing" | "ImagerPixelSpacing" | None
    spacing_source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, np.ndarray):
            raise TypeError(f"SourceImage.pixels must be a numpy array, got {type(self.pixels).__name__}")
        if self.pixels.dtype != np.float32:
            raise ValueError(f"SourceImage.pixels must be float32, got {self.pixels.dtype}")
        if self.pixels.shape != (self.rows, self.columns):
            raise ValueError(
                f"SourceImage.pixels shape {self.pixels.shape} does not match rows x columns "
                f"({self.rows}, {self.columns})"
            )
        if self.rows <= 0 or self.columns <= 0:
            raise ValueError(f"SourceImage rows/columns must be > 0, got {self.rows!r} x {self.columns!r}")
        if not self.sop_instance_uid:
            raise ValueError("SourceImage needs a sop_instance_uid")
        checked_spacing(self.pixel_spacing_mm, self.spacing_source)


def load_source_image(ds: pydicom.Dataset, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> SourceImage:
    """Decode frame 0 of ``ds`` into a :class:`SourceImage` (float32 in [0, 1], bone bright).

    Raises :class:`~models.errors.ImageDecodeError` (or its subclass
    :class:`~models.errors.UnsupportedImageError`) naming the SOP Instance UID for anything
    that cannot be decoded; never a bare pydicom/numpy exception. ``ds`` is not modified.
    """
    uid = sop_uid_of(ds)
    try:
        return _load(ds, uid, max_pixels)
    except ImageDecodeError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # pydicom, pylibjpeg, numpy ... -> one error type
        # BaseException, not Exception: a panic in a Rust decoder (e.g. pylibjpeg-rle on a
        # crafted RLE frame) surfaces as pyo3's PanicException, which derives from BaseException
        # and would otherwise escape every ``except Exception`` up to the engine's decode pool.
        raise ImageDecodeError(uid, f"{type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- checks


def _int_attr(ds: pydicom.Dataset, uid: str, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, None)
    if value is None or value == "":
        if default is None:
            raise ImageDecodeError(uid, f"missing required attribute {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(uid, f"{keyword} is not an integer: {value!r}") from exc


@dataclass(frozen=True)
class _Header:
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    samples_per_pixel: int
    pixel_representation: int
    photometric: str
    frames: int
    transfer_syntax: UID


def _check_header(ds: pydicom.Dataset, uid: str, max_pixels: int) -> _Header:
    """Validate everything needed to decode, before decoding anything."""
    if not isinstance(ds, pydicom.Dataset):
        raise ImageDecodeError(uid, f"expected a pydicom Dataset, got {type(ds).__name__}")
    rows = _int_attr(ds, uid, "Rows")
    columns = _int_attr(ds, uid, "Columns")
    if not (1 <= rows <= 65535 and 1 <= columns <= 65535):
        raise ImageDecodeError(uid, f"invalid image size Rows={rows} Columns={columns}")
    if rows * columns > max_pixels:
        raise UnsupportedImageError(
            uid,
            f"image of {rows} x {columns} = {rows * columns} pixels exceeds the limit of {max_pixels} pixels",
        )
    bits_allocated = _int_attr(ds, uid, "BitsAllocated")
    if bits_allocated == 1:
        raise UnsupportedImageError(uid, "1-bit (bitmap) pixel data is not a radiograph")
    if bits_allocated not in (8, 16, 32):
        raise ImageDecodeError(uid, f"unsupported BitsAllocated={bits_allocated}")
    bits_stored = _int_attr(ds, uid, "BitsStored", default=bits_allocated)
    if not 1 <= bits_stored <= bits_allocated:
        raise ImageDecodeError(uid, f"BitsStored={bits_stored} is not in 1..BitsAllocated={bits_allocated}")
    samples = _int_attr(ds, uid, "SamplesPerPixel")
    if samples not in (1, 3):
        raise ImageDecodeError(uid, f"unsupported SamplesPerPixel={samples}")
    pixel_representation = _int_attr(ds, uid, "PixelRepresentation", default=0)
    if pixel_representation not in (0, 1):
        raise ImageDecodeError(uid, f"invalid PixelRepresentation={pixel_representation}")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if not photometric:
        raise ImageDecodeError(uid, "missing required attribute PhotometricInterpretation")
    if photometric not in _SUPPORTED_PI:
        raise UnsupportedImageError(uid, f"unsupported Photometric Interpretation {photometric!r}")
    expected_samples = 1 if photometric in _GREY or photometric == "PALETTE COLOR" else 3
    if samples != expected_samples:
        raise ImageDecodeError(
            uid, f"SamplesPerPixel={samples} does not fit Photometric Interpretation {photometric}"
        )
    frames = _int_attr(ds, uid, "NumberOfFrames", default=1)
    if frames < 1:
        raise ImageDecodeError(uid, f"invalid NumberOfFrames={frames}")
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise UnsupportedImageError(uid, "float pixel data is not supported")
    if "PixelData" not in ds:
        raise ImageDecodeError(uid, "no Pixel Data (7FE0,0010)")
    file_meta = getattr(ds, "file_meta", None)
    ts_value = file_meta.get("TransferSyntaxUID", None) if file_meta is not None else None
    if not ts_value:
        raise ImageDecodeError(uid, "no Transfer Syntax UID (0002,0010) in the file meta information")
    ts = UID(str(ts_value))
    if not ts.is_transfer_syntax:
        raise UnsupportedImageError(uid, f"unknown transfer syntax {ts}")
    header = _Header(
        rows, columns, bits_allocated, bits_stored, samples, pixel_representation, photometric, frames, ts
    )
    _check_pixel_data_length(ds, uid, header)
    return header


def _check_pixel_data_length(ds: pydicom.Dataset, uid: str, h: _Header) -> None:
    data = ds.PixelData
    if data is None or len(data) == 0:
        raise ImageDecodeError(uid, "Pixel Data is empty")
    if h.transfer_syntax.is_encapsulated:
        if bytes(data[:4]) != b"\xfe\xff\x00\xe0":
            raise ImageDecodeError(
                uid,
                f"compressed transfer syntax {h.transfer_syntax.name} but Pixel Data "
                "is not encapsulated (no Basic Offset Table item)",
            )
        frame = get_frame(data, 0, number_of_frames=h.frames)
        _check_codestream(uid, h.transfer_syntax, frame)
        _check_codestream_size(uid, h, frame)
        return
    bytes_per_sample = h.bits_allocated // 8
    # YBR_FULL_422 native data holds two luminance and two chrominance samples per two pixels.
    samples = 2 if h.photometric == "YBR_FULL_422" else h.samples_per_pixel
    expected = h.rows * h.columns * samples * bytes_per_sample * h.frames
    actual = len(data)
    if actual != expected and not (expected % 2 == 1 and actual == expected + 1):
        raise ImageDecodeError(
            uid,
            f"Pixel Data has {actual} bytes, expected Rows x Columns x SamplesPerPixel x BitsAllocated/8 x frames "
            f"= {h.rows} x {h.columns} x {samples} x {bytes_per_sample} x {h.frames} = {expected}",
        )


_JPEG_FAMILY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
    }
)
_J2K_FAMILY = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)
#: EOI/EOC must lie within this many bytes of the end (some encoders append junk after it).
#: 0xFFD9 cannot occur inside JPEG, JPEG-LS or JPEG 2000 entropy-coded data (byte stuffing).
_END_MARKER_TAIL = 64


def _check_codestream(uid: str, ts: UID, frame: bytes) -> None:
    """Cheap structural check of frame 0: start marker and end-of-image marker present.

    The decoders fill a truncated stream with grey instead of failing, which would let a
    half-transferred image be analysed; a missing EOI/EOC marker catches that.
    """
    body = bytes(frame)
    tail = body[-_END_MARKER_TAIL:]
    if ts in _JPEG_FAMILY:
        if not body.startswith(b"\xff\xd8"):
            raise ImageDecodeError(uid, f"{ts.name}: frame 0 does not start with a JPEG SOI marker")
        if b"\xff\xd9" not in tail:
            raise ImageDecodeError(uid, f"{ts.name}: frame 0 has no JPEG EOI marker (truncated stream?)")
    elif ts in _J2K_FAMILY:
        if body.startswith(JP2_SIGNATURE):
            return  # JP2 file format: box structure, leave it to the decoder
        if not body.startswith(b"\xff\x4f\xff\x51"):
            raise ImageDecodeError(uid, f"{ts.name}: frame 0 does not start with a JPEG 2000 SOC/SIZ marker")
        if b"\xff\xd9" not in tail:
            raise ImageDecodeError(uid, f"{ts.name}: frame 0 has no JPEG 2000 EOC marker (truncated stream?)")


#: JPEG markers that start a frame header (SOF0-SOF15 without DHT, JPG and DAC; SOF55 = JPEG-LS).
_JPEG_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}) | {0xF7}
#: Markers without a length field (RSTn, SOI, EOI, TEM).
_JPEG_STANDALONE = frozenset({*range(0xD0, 0xDA), 0x01})
#: How far into the stream the frame header is looked for (tables and APPn segments come first).
_SOF_SEARCH_BYTES = 1 << 20


def codestream_frame_size(ts: UID, frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) the JPEG / JPEG-LS / JPEG 2000 codestream of ``frame`` declares (for a JP2
    file, that of the codestream it wraps), or None when the transfer syntax is not one of those
    or no frame header is found (the decoder then reports the broken stream)."""
    body = bytes(frame[:_SOF_SEARCH_BYTES])
    if ts in _JPEG_FAMILY:
        # Walk the segments as libjpeg does (its next_marker): bytes that are not a marker are
        # skipped, so junk between segments cannot hide a frame header the decoder will use.
        pos = 2  # after SOI
        while True:
            pos = body.find(b"\xff", pos)
            while 0 <= pos < len(body) - 1 and body[pos + 1] == 0xFF:  # fill bytes
                pos += 1
            if pos < 0 or pos + 4 > len(body):
                return None
            marker = body[pos + 1]
            if marker == 0x00 or marker in _JPEG_STANDALONE:  # stuffed zero / no length field
                pos += 2
                continue
            length = int.from_bytes(body[pos + 2 : pos + 4], "big")
            if marker in _JPEG_SOF_MARKERS:
                if pos + 9 > len(body):
                    return None
                return int.from_bytes(body[pos + 5 : pos + 7], "big"), int.from_bytes(body[pos + 7 : pos + 9], "big")
            if marker == 0xDA:  # scan data before any frame header: nothing to size the output by
                return None
            pos += 2 + max(length, 2)
    if ts in _J2K_FAMILY:
        # a JP2 file wraps the codestream in boxes: the one openjpeg decodes, found box by box (the
        # first SOC + SIZ in the file may be a decoy inside another box)
        stream = j2k_codestream(body)
        if stream is None or stream[:4] != b"\xff\x4f\xff\x51" or len(stream) < 24:
            return None
        x_siz, y_siz, x_off, y_off = (int.from_bytes(stream[i : i + 4], "big") for i in (8, 12, 16, 20))
        return y_siz - y_off, x_siz - x_off
    return None


def _check_codestream_size(uid: str, h: _Header, frame: bytes) -> None:
    """Refuse a codestream whose own frame header disagrees with Rows x Columns, before decoding.

    The decoders size their output from the codestream, not from the DICOM header: a 1 KB
    instance whose JPEG claims 60000 x 60000 made pylibjpeg allocate ~3 GB and work for 14 s
    before failing. (A JPEG height of 0, defined later by a DNL marker, is refused too.)
    """
    size = codestream_frame_size(h.transfer_syntax, frame)
    if size is None:
        return
    rows, columns = size
    if (rows, columns) != (h.rows, h.columns):
        raise ImageDecodeError(
            uid,
            f"{h.transfer_syntax.name}: the codestream declares a {columns} x {rows} frame "
            f"but Columns x Rows is {h.columns} x {h.rows}",
        )


# --------------------------------------------------------------------------- decoding

#: Decoder tried first per transfer syntax. Pillow (libjpeg-turbo) decodes an 8-bit baseline JPEG
#: about 4x faster than pylibjpeg-libjpeg and releases the GIL while it does, so the engine's
#: decode threads run in parallel with each other and with the rest of the node (pylibjpeg holds
#: the GIL for the whole decode: BENCHMARKS.md, "Decode: pylibjpeg vs Pillow"). Any failure of the
#: preferred plug-in falls back to pydicom's own order, so a stream only one decoder accepts is
#: still read.
PREFERRED_DECODER: dict[str, str] = {JPEGBaseline8Bit: "pillow"}


def _is_decompression_bomb(exc: BaseException) -> bool:
    """Pillow's refusal of an image too large to decode (pydicom may wrap it in another error)."""
    from PIL import Image

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Image.DecompressionBombError) or "exceeds limit of" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _direct_pillow_grey8(ds: pydicom.Dataset, h: _Header) -> np.ndarray | None:
    """Frame 0 of a single-frame 8-bit greyscale JPEG Baseline instance (the RSNA challenge format,
    many CR exports) decoded by Pillow directly: the array pydicom's Pillow plug-in gives, without
    its generic pixel pipeline (~1.3 ms of CPU per 1024 x 1024 image). None for anything else, or
    when Pillow refuses the stream or gives another mode or size: the caller then takes pydicom's
    path, which reports the error exactly as before. Taken only while Pillow is the
    :data:`PREFERRED_DECODER` of JPEG Baseline."""
    if not (
        h.transfer_syntax == JPEGBaseline8Bit
        and PREFERRED_DECODER.get(JPEGBaseline8Bit) == "pillow"
        and h.frames == 1
        and h.samples_per_pixel == 1
        and h.bits_allocated == 8
        and h.bits_stored == 8
        and h.pixel_representation == 0
        and h.photometric in _GREY
        and "ExtendedOffsetTable" not in ds
    ):
        return None
    from PIL import Image

    try:
        # the same call as pydicom's Pillow decoder (pydicom.pixels.decoders.pillow)
        frame = BytesIO(get_frame(ds.PixelData, 0, number_of_frames=1))
        with Image.open(frame, formats=("JPEG", "JPEG2000")) as image:
            if image.mode != "L" or image.size != (h.columns, h.rows):
                return None
            data = image.tobytes()
    except Exception:  # noqa: BLE001 - pydicom's path decodes it again and reports the error as before
        return None
    if len(data) != h.rows * h.columns:
        return None
    # read-only (no copy of the megabytes): the grey pipeline never writes into the stored image
    return np.frombuffer(data, dtype=np.uint8).reshape(h.rows, h.columns)


def _decode_frame0(ds: pydicom.Dataset) -> np.ndarray:
    """Frame 0 as pydicom decodes it (YBR -> RGB), with the preferred plug-in first."""
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    plugin = PREFERRED_DECODER.get(ts)
    if plugin is not None:
        try:
            return pixel_array(ds, index=0, decoding_plugin=plugin)
        except Exception as exc:  # the plug-in is missing or refuses this stream: default order
            if _is_decompression_bomb(exc):  # never hand a bomb Pillow caught to a decoder that would not
                raise
            logger.debug(
                "preferred decoder failed, using the default order",
                extra={"decoder": plugin, "error": f"{type(exc).__name__}: {exc}"},
            )
    return pixel_array(ds, index=0)


def _load(ds: pydicom.Dataset, uid: str, max_pixels: int) -> SourceImage:
    h = _check_header(ds, uid, max_pixels)
    if h.frames > 1:
        logger.info(
            "multi-frame instance: using frame 0",
            extra={"sop_instance_uid": uid, "number_of_frames": h.frames},
        )
    arr = _direct_pillow_grey8(ds, h)
    if arr is None:
        # what pydicom's decoders (and the Palette LUT expansion) would allocate, bounded first
        check_declared_sizes(
            ds, uid, rows=h.rows, columns=h.columns, samples=h.samples_per_pixel,
            bits_allocated=h.bits_allocated, frames=h.frames, transfer_syntax=h.transfer_syntax,
        )  # fmt: skip
        arr = _decode_frame0(ds)
    expected_shape = (h.rows, h.columns) if h.samples_per_pixel == 1 else (h.rows, h.columns, 3)
    if arr.shape != expected_shape:
        raise ImageDecodeError(uid, f"decoded frame has shape {arr.shape}, expected {expected_shape}")

    if h.photometric in _GREY:
        padding = _padding_mask(arr, ds, uid)
        grey = _grey_to_unit(arr, ds, uid, padding)
        if _display_inverted(ds, h.photometric, uid):
            np.subtract(1.0, grey, out=grey)
        if padding is not None:
            grey[padding] = 0.0  # padding shows black, like the letterbox
    elif h.photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        grey = _luminance(rgb, float(2 ** (16 if bits > 8 else 8) - 1))
    else:
        grey = _luminance(arr, float(2**h.bits_stored - 1))
    if h.photometric not in _GREY:  # the grey pipeline's every VOI step already ends in [0, 1]
        grey = np.clip(grey, 0.0, 1.0, out=grey)
    # after the clip, only NaN can be non-finite: one pass, no mask; max propagates NaN as the sum
    # did (every value is in [0, 1] or NaN) and is ~2.5x cheaper than the pairwise sum
    if np.isnan(grey.max()):
        raise ImageDecodeError(uid, "decoded image contains non-finite values")
    spacing, source = pixel_spacing(ds)  # the one rule: models.imaging.spacing
    return SourceImage(
        pixels=np.ascontiguousarray(grey, dtype=np.float32),
        rows=h.rows,
        columns=h.columns,
        sop_instance_uid=uid,
        pixel_spacing_mm=spacing,
        spacing_source=source,
    )


def _luminance(rgb: np.ndarray, full_scale: float) -> np.ndarray:
    grey = rgb.astype(np.float32) @ _LUMA
    grey /= np.float32(full_scale)
    return grey


def _display_inverted(ds: pydicom.Dataset, photometric: str, uid: str) -> bool:
    """MONOCHROME1 is shown inverted; so is MONOCHROME2 with Presentation LUT Shape INVERSE.
    (MONOCHROME1 + INVERSE, as the DX IOD requires, is one inversion, not two.)"""
    if photometric == "MONOCHROME1":
        return True
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if shape == "INVERSE":
        logger.info(
            "MONOCHROME2 with Presentation LUT Shape INVERSE: inverting", extra={"sop_instance_uid": uid}
        )
        return True
    return False


def _padding_mask(arr: np.ndarray, ds: pydicom.Dataset, uid: str) -> np.ndarray | None:
    """Stored pixels equal to Pixel Padding Value (or within its Range Limit), or None."""
    value = ds.get("PixelPaddingValue", None)
    if value is None or value == "":
        return None
    try:
        lo = int(value)
        limit = ds.get("PixelPaddingRangeLimit", None)
        hi = lo if limit is None or limit == "" else int(limit)
    except (TypeError, ValueError):
        logger.warning("ignoring invalid Pixel Padding Value", extra={"sop_instance_uid": uid})
        return None
    lo, hi = min(lo, hi), max(lo, hi)
    mask = (arr == lo) if lo == hi else ((arr >= lo) & (arr <= hi))
    if not mask.any() or mask.all():
        return None
    return mask


def _grey_to_unit(
    arr: np.ndarray, ds: pydicom.Dataset, uid: str, padding: np.ndarray | None = None
) -> np.ndarray:
    """Modality LUT then VOI (LUT sequence, window, or percentile), mapped to [0, 1].
    ``padding`` pixels (Pixel Padding Value) are left out of the percentile window's statistics."""
    modality_seq = ds.get("ModalityLUTSequence", None)
    if modality_seq:
        values: np.ndarray = _lut_lookup(arr, modality_seq[0], ds)
    else:
        values = apply_modality_lut(arr, ds)  # Rescale Slope/Intercept (when both present)
    voi_seq = ds.get("VOILUTSequence", None)
    if voi_seq:
        return _apply_voi_lut_sequence(values, voi_seq[0], ds)
    window = _first_window(ds, uid)
    if window is not None:
        center, width, function = window
        x = values.astype(np.float32, copy=False)
        return _window(x, center, width, function, in_place=x is not values and x is not arr)
    limits = _stored_percentile_limits(arr, ds, padding)
    x = values.astype(np.float32, copy=False)
    if limits is not None and x is not values and x is not arr:  # a new array of ours: map it in place
        return _linear_unit(x, *limits, out=x)
    return percentile_window(x, exclude=padding, limits=limits)


def _stored_percentile_limits(
    arr: np.ndarray, ds: pydicom.Dataset, padding: np.ndarray | None
) -> tuple[float, float] | None:
    """The percentile window's limits from a histogram of the stored integers (models.imaging.levels),
    or None (float or 32-bit data, a Modality LUT that is not monotonic, a flat image)."""
    stored = StoredLevels.of(arr)
    if stored is None:
        return None
    modality_seq = ds.get("ModalityLUTSequence", None)
    levels = stored.values
    # the Modality LUT of every stored level, computed as it is for the image (then float32, as there)
    table = _lut_lookup(levels, modality_seq[0], ds) if modality_seq else apply_modality_lut(levels, ds)
    return percentile_limits(
        stored, np.asarray(table).astype(np.float32, copy=False), PERCENTILE_WINDOW, _PERCENTILE_SAMPLE, padding
    )


def _lut_entries(item: pydicom.Dataset, ds: pydicom.Dataset) -> tuple[np.ndarray, int]:
    """(LUT entries as int64, first mapped value) of a Modality or VOI LUT item (US or OW data)."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    if len(descriptor) != 3:
        raise ValueError(f"LUT Descriptor must have 3 values, got {descriptor!r}")
    n_entries = descriptor[0] or 65536
    first = descriptor[1]
    if first >= 2**15 and ds.get("PixelRepresentation", 0) == 1:
        first -= 2**16  # US-encoded negative first mapped value (PS3.3 C.11.1.1)
    element = item["LUTData"]
    data = element.value
    if isinstance(data, (bytes, bytearray)):
        little = UID(str(ds.file_meta.TransferSyntaxUID)).is_little_endian
        lut = np.frombuffer(data, dtype="<u2" if little else ">u2")
    else:
        lut = np.asarray(list(data) if not np.isscalar(data) else [data])
    lut = lut.astype(np.int64)
    if lut.size < n_entries:
        raise ValueError(f"LUT Data has {lut.size} entries, LUT Descriptor says {n_entries}")
    return lut[:n_entries], first


def _lut_lookup(values: np.ndarray, item: pydicom.Dataset, ds: pydicom.Dataset) -> np.ndarray:
    """Apply a LUT: values below the first mapped value take entry 0, above the last the last entry."""
    lut, first = _lut_entries(item, ds)
    idx = np.clip(np.rint(values).astype(np.int64) - first, 0, lut.size - 1)
    return lut[idx]


def _apply_voi_lut_sequence(values: np.ndarray, item: pydicom.Dataset, ds: pydicom.Dataset) -> np.ndarray:
    lut, _ = _lut_entries(item, ds)
    # Normalise by the LUT's own output range (robust to descriptors that overstate the bit depth).
    lo, hi = int(lut.min()), int(lut.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = _lut_lookup(values, item, ds).astype(np.float32)
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    return out


def _first_window(ds: pydicom.Dataset, uid: str) -> tuple[float, float, str] | None:
    center, width = ds.get("WindowCenter", None), ds.get("WindowWidth", None)
    if center is None or width is None or center == "" or width == "":
        return None
    c = float(center[0] if isinstance(center, MultiValue) else center)
    w = float(width[0] if isinstance(width, MultiValue) else width)
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        logger.warning(
            "unknown VOI LUT Function; using LINEAR",
            extra={"sop_instance_uid": uid, "voi_lut_function": function},
        )
        function = "LINEAR"
    min_width = 1.0 if function == "LINEAR" else 0.0
    if not (math.isfinite(c) and math.isfinite(w)) or w < min_width or (w == 0.0):
        logger.warning(
            "invalid window; using the percentile window",
            extra={
                "sop_instance_uid": uid,
                "window_center": c,
                "window_width": w,
                "voi_lut_function": function,
            },
        )
        return None
    return c, w, function


def _window(x: np.ndarray, center: float, width: float, function: str, *, in_place: bool = False) -> np.ndarray:
    """VOI window of PS3.3 C.11.2.1.2 / C.11.2.1.3, output in [0, 1] instead of [ymin, ymax].
    ``in_place``: ``x`` (float32) is the caller's to overwrite; the linear windows are then computed
    in it with the same operations in the same order (the same values, no 4 MB temporaries)."""
    if function == "SIGMOID":
        z = np.clip(-4.0 * (x - np.float32(center)) / np.float32(width), -80.0, 80.0)
        return (1.0 / (1.0 + np.exp(z))).astype(np.float32, copy=False)
    if in_place and x.dtype == np.float32 and not (function == "LINEAR" and width == 1.0):
        offset, scale = (center, width) if function == "LINEAR_EXACT" else (center - 0.5, width - 1.0)
        np.subtract(x, np.float32(offset), out=x)
        np.divide(x, np.float32(scale), out=x)
        np.add(x, np.float32(0.5), out=x)
        return np.clip(x, 0.0, 1.0, out=x)
    if function == "LINEAR_EXACT":
        out = (x - np.float32(center)) / np.float32(width) + np.float32(0.5)
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
    # LINEAR
    if width == 1.0:  # degenerate window: a threshold at c - 0.5
        return (x > np.float32(center - 0.5)).astype(np.float32)
    out = (x - np.float32(center - 0.5)) / np.float32(width - 1.0) + np.float32(0.5)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _content_region(x: np.ndarray) -> tuple[slice, slice]:
    """Slices of ``x`` without a constant border (padding) in its extreme value."""
    v = x[0, 0]
    if not (v == x.min() or v == x.max()):
        return slice(None), slice(None)
    return content_region(x == v)


def percentile_window(
    x: np.ndarray,
    percentiles: tuple[float, float] = PERCENTILE_WINDOW,
    *,
    exclude: np.ndarray | None = None,
    limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """Map ``x`` linearly to [0, 1] between its low/high percentiles (clipped), ignoring a constant
    border (zero padding) and the ``exclude`` mask. Estimated on at most ~1 M pixels, so it is fast
    on 4096 x 4096. ``limits``: those percentiles when already known (from the stored integers:
    :func:`models.imaging.levels.percentile_limits`)."""
    x = np.asarray(x, dtype=np.float32)
    if limits is not None:
        return _linear_unit(x, *limits)
    content, sample, keep = statistics_sample(x, _content_region(x), exclude, _PERCENTILE_SAMPLE)
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:  # (almost) flat image: fall back to the full range
        valid = content if keep is None else content[keep]
        lo, hi = float(valid.min()), float(valid.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return _linear_unit(x, lo, hi)


def _linear_unit(x: np.ndarray, lo: float, hi: float, out: np.ndarray | None = None) -> np.ndarray:
    """``(x - lo) / (hi - lo)`` clipped to [0, 1], in float32 (a new array, or ``out``: ``x`` itself
    when float32, the same operations in the same order, so the same values)."""
    out = np.subtract(x, np.float32(lo), out=out)
    np.divide(out, np.float32(hi - lo), out=out)
    return np.clip(out, 0.0, 1.0, out=out)
