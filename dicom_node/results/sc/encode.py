"""How the SC overlay's pixels are stored: JPEG Baseline (the default) or uncompressed.

The overlay is 1024 x 1268 RGB for a 1024² source: 3.9 MB uncompressed, ~0.35 MB as JPEG Baseline
at quality 90. JPEG is lossy, so the SC says so (Lossy Image Compression "01", its ratio and
method, appended to the source's own when the source was lossy already: PS3.3 C.7.6.1.1.5).

The JPEG is YCbCr with the colour (Cb, Cr) sampled at half the horizontal rate, 4:2:2: exactly
what Photometric Interpretation YBR_FULL_422 says (PS3.3 C.7.6.3.1.2), and the only YCbCr value
dciodvfy accepts in a Secondary Capture. Full colour resolution (4:4:4) would be YBR_FULL, which it
refuses; 4:2:0 (Pillow's and highdicom's default) also halves the vertical colour resolution while
still being labelled YBR_FULL_422. Luminance keeps every pixel, so text and outlines stay sharp;
thin coloured strokes lose some saturation (docs/SC_OVERLAY.md, "Compression"). Pillow
(libjpeg-turbo) encodes it; the stream is encapsulated with a Basic Offset Table, one fragment, as
pydicom's ``encapsulate`` writes it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

#: the setting's values and the transfer syntax each stores the SC in
SC_TRANSFER_SYNTAXES: dict[str, UID] = {
    "jpeg-baseline": JPEGBaseline8Bit,
    "explicit-vr-little-endian": ExplicitVRLittleEndian,
}
DEFAULT_SC_TRANSFER_SYNTAX = "jpeg-baseline"
DEFAULT_SC_JPEG_QUALITY = 90
#: Pillow's name of the chroma subsampling written (YBR_FULL_422: Cb, Cr at half the horizontal rate)
JPEG_SUBSAMPLING = "4:2:2"
#: Lossy Image Compression Method of JPEG Baseline (PS3.3 C.7.6.1.1.5.1)
JPEG_METHOD = "ISO_10918_1"


@dataclass(frozen=True)
class ScEncoding:
    """How the SC's pixels are stored: ``transfer_syntax`` (a key of :data:`SC_TRANSFER_SYNTAXES`)
    and, for JPEG Baseline, ``jpeg_quality`` (libjpeg's 1-100 scale)."""

    transfer_syntax: str = DEFAULT_SC_TRANSFER_SYNTAX
    jpeg_quality: int = DEFAULT_SC_JPEG_QUALITY

    def __post_init__(self) -> None:
        if self.transfer_syntax not in SC_TRANSFER_SYNTAXES:
            raise ValueError(
                f"SC transfer syntax must be one of {sorted(SC_TRANSFER_SYNTAXES)}, got {self.transfer_syntax!r}"
            )
        q = self.jpeg_quality
        if isinstance(q, bool) or not isinstance(q, int) or not 50 <= q <= 100:
            raise ValueError(f"SC JPEG quality must be an integer in 50..100, got {q!r}")

    @property
    def uid(self) -> UID:
        """The Transfer Syntax UID the SC is written in."""
        return SC_TRANSFER_SYNTAXES[self.transfer_syntax]


DEFAULT_SC_ENCODING = ScEncoding()


def jpeg_baseline(rgb: np.ndarray, quality: int, *, rgbx: np.ndarray | None = None) -> bytes:
    """``rgb`` ((rows, columns, 3) uint8) as a JPEG Baseline stream: YCbCr 4:2:2, ``quality``.

    ``rgbx``: the same pixels as (rows, columns) uint32 little-endian RGBX words, when the caller
    has them (``Overlay.rgbx``): Pillow then reads them in place instead of copying ``rgb``; the
    stream is the same.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be a (rows, columns, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if rgbx is not None and rgbx.shape == rgb.shape[:2] and rgbx.dtype == np.uint32 and rgbx.flags.c_contiguous:
        image = Image.frombuffer("RGBX", (rgb.shape[1], rgb.shape[0]), rgbx, "raw", "RGBX", 0, 1)
    else:
        image = Image.fromarray(np.ascontiguousarray(rgb))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
    return buf.getvalue()


def store_pixels(sc: Dataset, rgb: np.ndarray, encoding: ScEncoding, *, rgbx: np.ndarray | None = None) -> None:
    """Store ``rgb`` as the Pixel Data of ``sc`` (an RGB, 8-bit SC whose Rows and Columns match) in
    ``encoding``'s transfer syntax, with the attributes that go with it (uncompressed: RGB, as the SC
    was built). ``rgbx``: the same pixels as RGBX words (see :func:`jpeg_baseline`)."""
    if (int(sc.Rows), int(sc.Columns)) != rgb.shape[:2]:
        raise ValueError(f"pixels {rgb.shape[:2]} do not match the SC's Rows x Columns ({sc.Rows}, {sc.Columns})")
    sc.file_meta.TransferSyntaxUID = encoding.uid
    if encoding.uid == ExplicitVRLittleEndian:
        sc.PixelData = _packed_rgb(rgb, rgbx)
        sc["PixelData"].VR = "OB"
        return
    stream = jpeg_baseline(rgb, encoding.jpeg_quality, rgbx=rgbx)
    sc.PixelData = encapsulate([stream], has_bot=True)
    sc["PixelData"].VR = "OB"
    sc["PixelData"].is_undefined_length = True
    sc.PhotometricInterpretation = "YBR_FULL_422"  # JFIF YCbCr, full range, Cb and Cr at half the columns
    sc.PlanarConfiguration = 0
    _flag_lossy(sc, rgb.size / len(stream))


def _packed_rgb(rgb: np.ndarray, rgbx: np.ndarray | None) -> bytes:
    """R, G, B of every pixel, row by row (native colour-by-pixel Pixel Data): packed by Pillow from
    the RGBX words when given (numpy's strided copy of a 3-of-4-bytes view is several times slower)."""
    if rgbx is not None and rgbx.shape == rgb.shape[:2] and rgbx.dtype == np.uint32 and rgbx.flags.c_contiguous:
        return Image.frombuffer("RGBX", (rgb.shape[1], rgb.shape[0]), rgbx, "raw", "RGBX", 0, 1).tobytes("raw", "RGB")
    return np.ascontiguousarray(rgb).tobytes()


def _flag_lossy(sc: Dataset, ratio: float) -> None:
    """Lossy Image Compression "01" with this step's ratio and method after those already recorded."""
    ratios = _values(sc, "LossyImageCompressionRatio")
    methods = _values(sc, "LossyImageCompressionMethod")
    if len(ratios) != len(methods):  # an incomplete history cannot be extended: record this step
        ratios, methods = [], []
    sc.LossyImageCompression = "01"
    sc.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]
    sc.LossyImageCompressionMethod = [*methods, JPEG_METHOD]


def _values(ds: Dataset, keyword: str) -> list[str]:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return []
    value = ds[keyword].value
    items = [value] if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) else list(value)
    return [str(v) for v in items]
