"""dicom_node.transport.reactor_checkpoint on real pynetdicom associations over loopback (the race itself,
with a stalled reactor, is reproduced in tests/test_deliver_kept.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dicom_node.transport.reactor_checkpoint import ReactorCheckpoint, install_checkpoint, pause_reactor


def _instance() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture
def association() -> Iterator[Association]:
    """A requestor association with a pynetdicom storage SCP on loopback, released (or aborted) on exit."""
    scp = AE(ae_title="SCP")
    scp.add_supported_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    server = scp.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
    )
    scu = AE(ae_title="SCU")
    scu.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 10
    assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        scp.shutdown()


def test_every_c_store_is_answered_with_the_reactor_paused_for_certain(association: Association) -> None:
    checkpoint = install_checkpoint(association)
    assert isinstance(checkpoint, ReactorCheckpoint) and checkpoint.is_set()
    for _ in range(30):
        assert pause_reactor(association)
        assert checkpoint.parked and not checkpoint.is_set()  # the reactor waits inside wait()
        status = association.send_c_store(_instance())
        assert int(status.Status) == 0x0000
        assert checkpoint.is_set()  # send_c_store lets the reactor run again, as pynetdicom does


def test_without_the_checkpoint_pynetdicoms_own_pause_is_left_in_place(association: Association) -> None:
    assert not pause_reactor(association)  # nothing installed: False, and nothing changed
    assert not isinstance(association._reactor_checkpoint, ReactorCheckpoint)
    assert int(association.send_c_store(_instance()).Status) == 0x0000


def test_a_pause_of_an_ended_association_returns_at_once(association: Association) -> None:
    install_checkpoint(association)
    association.release()
    association.join(5)  # the reactor thread has ended: nothing will ever park
    t0 = time.monotonic()
    assert not pause_reactor(association)
    assert time.monotonic() - t0 < 1.0  # bounded by the reactor's end, not by the 2 s timeout


def test_the_bench_scus_pause_for_certain_too(association: Association) -> None:
    """``bench/common.pause_for_certain`` (paced.py, python_peers.py, orthanc_like_scu.py): the checkpoint
    installed on first use, kept after, and the reactor parked before each send."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from common import pause_for_certain

    for _ in range(3):
        pause_for_certain(association)
        checkpoint = association._reactor_checkpoint
        assert isinstance(checkpoint, ReactorCheckpoint) and checkpoint.parked
        assert int(association.send_c_store(_instance()).Status) == 0x0000
    assert association._reactor_checkpoint is checkpoint  # installed once
