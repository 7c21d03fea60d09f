"""dicom_node.scp.deflate_guard: measuring what a deflated data set inflates to, without keeping it."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pytest

from dicom_node.scp.deflate_guard import (
    bytes_inflate_beyond,
    dataset_offset,
    file_inflates_beyond,
    inflates_beyond,
)


def _raw_deflate(data: bytes) -> bytes:
    d = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return d.compress(data) + d.flush()


def test_limit_is_exclusive_and_exact() -> None:
    stream = _raw_deflate(b"\x00" * 1000)
    assert not bytes_inflate_beyond(stream, 1000)
    assert bytes_inflate_beyond(stream, 999)


def test_stops_early_on_a_large_stream() -> None:
    """A 256 MiB stream is judged after the first MiBs: the inflated data is never kept."""
    d = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = b"".join(d.compress(b"\x00" * 2**20) for _ in range(256)) + d.flush()
    assert bytes_inflate_beyond(stream, 4 * 2**20)


def test_corrupt_stream_is_left_to_the_parser() -> None:
    assert not bytes_inflate_beyond(b"\xff" * 100, 10)


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="-1"):
        inflates_beyond(io.BytesIO(b""), -1)


def test_dataset_offset_and_file(tmp_path: Path) -> None:
    meta_value = b"\x02\x00\x10\x00UI\x04\x001.2\x00"  # (0002,0010), 12 bytes
    head = b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + len(meta_value).to_bytes(4, "little")
    path = tmp_path / "f.dcm"
    path.write_bytes(head + meta_value + _raw_deflate(b"\x01" * 5000))
    with open(path, "rb") as fp:
        assert dataset_offset(fp) == 144 + 12
    assert file_inflates_beyond(str(path), 4999) and not file_inflates_beyond(str(path), 5000)


@pytest.mark.parametrize("head", [b"", b"\x00" * 128 + b"NOPE" + b"\x00" * 12, b"\x00" * 128 + b"DICM" + b"\x08\x00" * 6])
def test_dataset_offset_refuses_what_it_cannot_read(head: bytes) -> None:
    with pytest.raises(ValueError):
        dataset_offset(io.BytesIO(head))
