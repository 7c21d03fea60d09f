"""StagedFile: instances received straight into ``incoming/`` (chunked receive), then committed."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from dicom_node.storage.spool import Spool, SpoolFullError, StagedFile, is_out_of_space, write_atomic


def test_staged_file_committed_byte_identical_without_leftovers(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    staged = sp.stage_incoming()
    assert (
        staged.path.parent == sp.incoming
        and staged.path.name.startswith(".")
        and staged.name.endswith(".tmp")
    )
    chunks = [bytes([i]) * (70_000 + i) for i in range(40)]  # > the 1 MiB write buffer in total
    for c in chunks:
        assert staged.write(c) == len(c)
        staged.file.flush()  # what pynetdicom calls after every fragment
    assert staged.size == sum(map(len, chunks))
    path = sp.store_incoming("1.2.3", staged)
    assert path.read_bytes() == b"".join(chunks)
    assert [p.name for p in sp.incoming.iterdir()] == [path.name] and path.name.startswith("1.2.3_")
    staged.close()  # pynetdicom closes (and tries to unlink the old name) after the handler
    assert path.is_file()


def test_reserve_refuses_before_anything_is_written(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool", reserve_bytes=10**18)
    staged = sp.stage_incoming()
    assert isinstance(staged.error, SpoolFullError) and is_out_of_space(staged.error)
    staged.write(b"x" * 1000)  # data still arriving is swallowed, never written
    assert staged.size == 0 and not any(sp.incoming.iterdir())
    with pytest.raises(SpoolFullError):
        sp.store_incoming("1.2.3", staged)
    assert not any(sp.incoming.iterdir())


def test_reserve_counts_the_bytes_already_received(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    staged = sp.stage_incoming()
    staged.write(b"x" * 4096)
    sp.reserve_bytes = sp.free_bytes() + 1  # space ran low while the data set was arriving
    with pytest.raises(SpoolFullError):
        sp.store_incoming("1.2.3", staged)
    assert not any(sp.incoming.iterdir())  # the refused file is gone


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_write_error_is_kept_not_raised_and_the_partial_file_removed(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    staged = sp.stage_incoming()
    staged.write(b"a" * 100)
    assert staged.path.is_file()
    staged._fh.close()  # type: ignore[union-attr]
    staged._fh = open("/dev/full", "wb", buffering=0)  # noqa: SIM115 - the real ENOSPC of a full device
    staged.write(b"b" * 100)  # must not raise into pynetdicom's reader
    assert staged.error is not None and staged.error.errno == errno.ENOSPC
    assert not staged.path.exists()  # deleted at once, so the space is free again
    staged.write(b"c" * 100)
    with pytest.raises(OSError) as err:
        sp.store_incoming("1.2.3", staged)
    assert is_out_of_space(err.value) and not any(sp.incoming.iterdir())


def test_staged_file_must_live_in_the_target_folder(tmp_path: Path) -> None:
    staged = StagedFile(tmp_path)
    staged.write(b"x")
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="not in the folder"):
        write_atomic(tmp_path / "other" / "a.dcm", staged)
    staged.discard()
    staged.discard()  # idempotent
    assert list(tmp_path.iterdir()) == [tmp_path / "other"]


def test_crash_leftovers_of_staged_files_cleaned_on_open(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    staged = sp.stage_incoming()
    staged.write(b"partial")
    staged.close()  # the process dies here: never committed, never acknowledged
    assert staged.path.is_file()
    Spool(tmp_path / "spool")
    assert not staged.path.exists()


def test_staged_file_beyond_max_bytes_is_deleted_at_once_and_the_rest_discarded(tmp_path: Path) -> None:
    """Issue 13 point 5: an instance larger than max_instance_mb is never spooled whole."""
    from dicom_node.storage.spool import InstanceTooLargeError, StagedFile

    staged = StagedFile(tmp_path, max_bytes=1000)
    assert staged.write(b"x" * 600) == 600 and staged.path.exists()
    assert staged.write(b"x" * 600) == 600  # pynetdicom keeps feeding: never raises
    assert isinstance(staged.error, InstanceTooLargeError) and not staged.path.exists()
    staged.write(b"x" * 10_000)
    assert not staged.path.exists() and staged.size == 600
