"""Regression tests for findings of the byte-level fuzzing of the decode path (``fuzz/fuzz_decode.py``)."""

from __future__ import annotations

import random
import struct

import pytest
from hostile import _elem, _encapsulated, _split, base_dataset, encode, part10

from models.dicom_image import load_source_image
from models.errors import ImageDecodeError

#: Frame 0 of fuzzer crash input ``crash-c51596e5`` (16x16, 16-bit, RLE Lossless, 2 segments): the
#: second segment decodes past the end of the frame and pylibjpeg-rle's Rust decoder panics
#: ("index out of bounds: the len is 512 but the index is 512"). The panic surfaces as pyo3's
#: ``PanicException``, a ``BaseException``, which escaped ``load_source_image``'s ``except Exception``
#: (and then the engine's decode task, leaving the job's future unresolved).
RLE_PANIC_FRAME = bytes.fromhex(
    "020000004000000058000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000010000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000f00"
    "08030609050d080e0a0f010709080c010708ff010b080a040f0e03000f00060b0407020e0708050d050eff07050f0306"
    "0209070c0100090b04080d020e0906090bff0600000f010c000700080d0e080c0e0d070e000202060401ff0b0a01080e"
    "0b0c0f0d0c0608030f01000700040f0400090d080e010902070f02070c0d03060302040b0c0e0f020607010001ff0906"
    "080d040205040eff070203090b0f0c050c05040208000e060302060d0c0f0f0b02010d0a0806080f0d08010f0e010a0f"
    "0b04070a04050d09010908010f0c07030702030b030f03060fff0e050a0f0e0002090f070f04000907060c010406050e"
    "0f09050f0e0f070e010a01040d000500010b0a0c0c0a0308000c0d0c07040c030201ff09000d0fd8ae0b2b7531c708d9"
    "c33610126925630f4fed2f664ce6163387f7570f16d9f4dbafa3502952b6ee0f83a80f6c0f9967fe8a49676ce423bf7b"
    "bf75025f3600"
)


def _rle_dataset(frame: bytes):  # type: ignore[no-untyped-def]
    import io

    import pydicom

    ds = base_dataset(random.Random(0), 16, 16)
    del ds.PixelData
    head, _ = _split(ds, 0x7FE0)
    body = encode(head) + _elem(0x7FE0, 0x0010, b"OB", _encapsulated([frame]), length=0xFFFFFFFF)
    return pydicom.dcmread(io.BytesIO(part10(ds.SOPInstanceUID, body, "1.2.840.10008.1.2.5")))


def test_rust_decoder_panic_becomes_image_decode_error() -> None:
    ds = _rle_dataset(RLE_PANIC_FRAME)
    with pytest.raises(ImageDecodeError, match="PanicException"):
        load_source_image(ds)


def test_valid_rle_frame_still_decodes() -> None:
    """Control: a well-formed 2-segment RLE frame of the same geometry decodes."""
    seg = bytes([0x81, 0x10]) * 2  # two replicate runs of 128 bytes = 256 bytes per segment
    frame = struct.pack("<16I", 2, 64, 64 + len(seg), *([0] * 13)) + seg + seg
    img = load_source_image(_rle_dataset(frame))
    assert img.pixels.shape == (16, 16)
