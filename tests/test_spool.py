"""Spool: atomic durable writes, space reserve, cleanup of partial files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.storage.spool import Spool, SpoolFullError, is_out_of_space, write_atomic


def test_store_incoming_keeps_bytes_and_separates_duplicates(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    p1 = sp.store_incoming("1.2.3", b"abc")
    p2 = sp.store_incoming("1.2.3", b"abc")
    assert p1 != p2 and p1.read_bytes() == b"abc" == p2.read_bytes()
    assert p1.parent == sp.incoming
    assert not list(sp.incoming.glob(".*.tmp"))


def test_reserve_refuses(tmp_path: Path) -> None:
    sp = Spool(tmp_path, reserve_bytes=10**18)
    with pytest.raises(SpoolFullError) as err:
        sp.store_incoming("1.2.3", b"x" * 10)
    assert err.value.errno == errno.ENOSPC and is_out_of_space(err.value)
    assert not any(sp.incoming.iterdir())


def test_write_failure_leaves_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError) as err:
        write_atomic(tmp_path / "a.dcm", b"data")
    assert is_out_of_space(err.value)
    assert list(tmp_path.iterdir()) == []


def test_partial_files_cleaned_on_open(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    (sp.incoming / ".x.dcm.123.tmp").write_bytes(b"partial")
    Spool(tmp_path)
    assert not list(sp.incoming.iterdir())


def test_store_result_and_remove(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "X"
    path = sp.store_result(7, ds)
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    sp.remove(path)
    assert not path.exists() and not path.parent.exists()
    sp.remove(path)  # idempotent


def test_remove_orphans_keeps_known(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    known = sp.store_incoming("1.1", b"a")
    orphan = sp.store_incoming("1.2", b"b")
    assert sp.remove_orphans({str(known)}) == 1
    assert known.exists() and not orphan.exists()
