"""DIMSE command sets written by dicom_node.transport.command_set equal pynetdicom's own encoding."""

from __future__ import annotations

from io import BytesIO

import pynetdicom.dimse_messages as dimse_messages
import pytest
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE, N_EVENT_REPORT

from dicom_node.transport import command_set


def _store(request: bool, uid: str, status: int | None = None) -> C_STORE:
    p = C_STORE()
    p.MessageID = 7 if request else None
    p.MessageIDBeingRespondedTo = None if request else 7
    p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    p.AffectedSOPInstanceUID = uid
    if request:
        p.Priority = 2
        p.MoveOriginatorApplicationEntityTitle = "ORTHANC"
        p.MoveOriginatorMessageID = 3
    else:
        p.Status = status
    return p


def _messages() -> list[dimse_messages.DIMSEMessage]:
    primitives = []
    for uid in ("1.2.3.4", "1.2.3.45", "2.25." + "1" * 59):  # even, odd, 64 characters
        primitives.append(("C_STORE_RQ", _store(True, uid)))
        for status in (0x0000, 0xB000, 0xA700, 0xC211):
            primitives.append(("C_STORE_RSP", _store(False, uid, status)))
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    primitives.append(("C_ECHO_RQ", echo))
    echo_rsp = C_ECHO()
    echo_rsp.MessageIDBeingRespondedTo = 1
    echo_rsp.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo_rsp.Status = 0
    echo_rsp.ErrorComment = "odd comment"  # LO
    primitives.append(("C_ECHO_RSP", echo_rsp))
    identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")  # an encoded Query/Retrieve Level
    for cls, name in ((C_FIND, "C_FIND_RQ"), (C_GET, "C_GET_RQ"), (C_MOVE, "C_MOVE_RQ")):
        p = cls()
        p.MessageID = 9
        p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
        p.Priority = 0
        p.Identifier = identifier  # type: ignore[assignment]
        if cls is C_MOVE:
            p.MoveDestination = "AINODE"
        primitives.append((name, p))
    report = N_EVENT_REPORT()
    report.MessageID = 5
    report.AffectedSOPClassUID = "1.2.840.10008.1.20.1"
    report.AffectedSOPInstanceUID = "1.2.840.10008.1.20.1.1"
    report.EventTypeID = 1
    primitives.append(("N_EVENT_REPORT_RQ", report))
    out = []
    for name, primitive in primitives:
        message = getattr(dimse_messages, name)()
        message.primitive_to_message(primitive)
        out.append(message)
    return out


@pytest.mark.parametrize("message", _messages(), ids=lambda m: type(m).__name__)
def test_same_bytes_as_pynetdicom(message: dimse_messages.DIMSEMessage) -> None:
    ours = command_set.encode(message.command_set, True, True)
    theirs = command_set.ORIGINAL(message.command_set, True, True)
    assert ours is not None and ours == theirs
    assert command_set._plain_bytes(message.command_set) == theirs  # (not handed to pynetdicom's encoder)


def test_group_length_as_pynetdicom_computes_it() -> None:
    message = _messages()[0]
    length = message.command_set.CommandGroupLength
    del message.command_set.CommandGroupLength
    assert len(command_set.encode(message.command_set, True, True) or b"") == length


@pytest.mark.parametrize(
    "keyword,value",
    [("ErrorComment", "Gr\u00fc\u00dfe"), ("ErrorComment", "a\\b"), ("MessageID", 70000), ("MessageID", -1)],
)
def test_other_values_go_to_pynetdicom(keyword: str, value: object) -> None:
    ds = _messages()[0].command_set
    setattr(ds, keyword, value) if keyword != "MessageID" else ds.__setitem__(0x00000110, _us(value))
    with pytest.raises(command_set._NotPlain):
        command_set._plain_bytes(ds)
    assert command_set.encode(ds, True, True) == command_set.ORIGINAL(ds, True, True)


def _us(value: object):  # type: ignore[no-untyped-def]
    from pydicom.dataelem import DataElement

    return DataElement(0x00000110, "US", value, validation_mode=0)


def test_explicit_vr_and_deflated_go_to_pynetdicom() -> None:
    ds = _messages()[0].command_set
    assert command_set.encode(ds, False, True) == command_set.ORIGINAL(ds, False, True)
    assert command_set.encode(ds, True, True, True) == command_set.ORIGINAL(ds, True, True, True)


def test_installed_where_pynetdicom_encodes_command_sets() -> None:
    import dicom_node.delivery.deliver  # noqa: F401 - the node's sender and receiver install it
    import dicom_node.scp.receive  # noqa: F401

    assert dimse_messages.encode is command_set.encode
    assert command_set.install() is True  # idempotent


def _received_meta(uid: str, syntax: str):  # type: ignore[no-untyped-def]
    from pynetdicom.dsutils import create_file_meta

    return create_file_meta(sop_class_uid="1.2.840.10008.5.1.4.1.1.7", sop_instance_uid=uid, transfer_syntax=syntax)


@pytest.mark.parametrize("uid", ["1.2.3.4", "1.2.3.45", "2.25." + "7" * 59])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"])
def test_received_file_meta_is_written_as_pydicom_writes_it(uid: str, syntax: str) -> None:
    """The meta group pynetdicom writes at the start of a file it receives a C-STORE into."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    ours_meta, theirs_meta = _received_meta(uid, syntax), _received_meta(uid, syntax)
    ours, theirs = BytesIO(), DicomBytesIO()
    theirs.is_implicit_VR, theirs.is_little_endian = False, True
    command_set.write_file_meta_info(ours, ours_meta)
    write_file_meta_info(theirs, theirs_meta)
    assert ours.getvalue() == theirs.getvalue()
    assert ours_meta == theirs_meta  # (the group length set alike)
    import dicom_node.scp.receive  # noqa: F401 - the receiver installs it (with the command set encoder)

    assert dimse_messages.write_file_meta_info is command_set.write_file_meta_info
