"""pynetdicom's set_uid, remembered (dicom_node.transport.uid_memo): same results, errors and warnings."""

from __future__ import annotations

import logging

import pynetdicom.pdu_items
import pynetdicom.presentation
import pytest
from pydicom.uid import UID

from dicom_node.transport import uid_memo

INPUTS = [
    "1.2.840.10008.5.1.4.1.1.7",
    b"1.2.840.10008.1.2.1",  # as decoded from a PDU
    UID("1.2.840.10008.5.1.4.1.1.88.34"),
    "2.25." + "9" * 59,  # 64 characters
]


@pytest.mark.parametrize("value", INPUTS, ids=repr)
def test_accepted_uids_are_remembered_and_equal_pynetdicoms(value: object) -> None:
    uid_memo._accepted.clear()
    expected = uid_memo.ORIGINAL(value, "x")
    first = uid_memo.set_uid(value, "x")
    second = uid_memo.set_uid(value, "x")
    assert first == second == expected and type(first) is UID
    assert second is first  # the second answer is the remembered one
    assert len(uid_memo._accepted) == 1


@pytest.mark.parametrize(
    "value,kwargs,error",
    [
        ("", {"allow_empty": False}, ValueError),
        ("1." + "2" * 70, {}, ValueError),  # too long
        (123, {}, TypeError),
        (None, {"allow_none": False}, TypeError),
    ],
)
def test_refused_values_raise_as_pynetdicom_does_every_time(value: object, kwargs: dict, error: type) -> None:
    for _ in range(2):
        with pytest.raises(error):
            uid_memo.ORIGINAL(value, "x", **kwargs)
        with pytest.raises(error):
            uid_memo.set_uid(value, "x", **kwargs)


def test_non_conformant_values_warn_every_time(caplog: pytest.LogCaptureFixture) -> None:
    uid_memo._accepted.clear()
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        for value in ("1.02.3", "1.2.abc", b"1.2.3\x00"):  # a leading zero, letters, a NUL: not conformant
            for _ in range(2):
                assert uid_memo.set_uid(value, "x") == uid_memo.ORIGINAL(value, "x")
    assert (
        sum("Non-conformant" in r.getMessage() for r in caplog.records) == 12
    )  # ours and pynetdicom's, each time
    assert not uid_memo._accepted
    assert uid_memo.set_uid(None, "x") is None
    assert uid_memo.set_uid("", "x") == ""
    assert uid_memo.set_uid("1.02.3", "x", validate=False) == "1.02.3"


def test_instance_uids_are_not_remembered() -> None:
    uid_memo._accepted.clear()
    assert uid_memo.set_uid("1.2.3.4", "Affected SOP Instance UID") == "1.2.3.4"
    assert uid_memo.set_uid("1.2.3.5", "Requested SOP Instance UID") == "1.2.3.5"
    assert not uid_memo._accepted


def test_remembered_inputs_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uid_memo, "MAX_REMEMBERED", 2)
    monkeypatch.setattr(uid_memo, "_accepted", {})
    for i in range(3):
        uid_memo.set_uid(f"1.2.{i + 1}", "x")
    assert list(uid_memo._accepted) == [("1.2.3", False)]


def test_installed_where_pynetdicom_calls_it() -> None:
    import dicom_node.scp.receive  # noqa: F401 - the node's receiver and sender install it

    assert pynetdicom.pdu_items.set_uid is uid_memo.set_uid
    assert pynetdicom.presentation.set_uid is uid_memo.set_uid
    assert "pynetdicom.dimse_primitives" in uid_memo.install()  # idempotent


# ------------------------------------------------------------------ PresentationContext.add_transfer_syntax

TS_INPUTS = [
    "1.2.840.10008.1.2.1",
    b"1.2.840.10008.1.2.4.50",  # as decoded from a PDU
    UID("1.2.840.10008.1.2"),  # as pynetdicom's sub-item hands it over
    " 1.2.840.10008.1.2.2 ",  # pydicom strips it
    "1.2.840.10008.1.2.1",  # again: the list keeps one
    "1.2.840.10008.5.1.4.1.1.7",  # a valid UID that is not a transfer syntax: warns
    "1.2.3.4.5",  # private: accepted silently, not remembered
    "1.02.3",  # not conformant: warns
    "",  # a rejected context's empty syntax: not added
    None,  # ignored
    "1." + "2" * 70,  # too long: pynetdicom raises
    b"1.2.840.\xff",  # not ASCII: the decode raises
    123,  # neither str nor bytes: logs an error
]


def _run(add: object, inputs: list, caplog: pytest.LogCaptureFixture) -> tuple[list, list, list]:
    caplog.clear()
    cx = pynetdicom.presentation.PresentationContext()
    errors = []
    for value in inputs:
        try:
            add(cx, value)
        except Exception as exc:  # noqa: BLE001 - compared between the two implementations
            errors.append((type(exc), str(exc)))
    logs = [(r.levelno, r.getMessage()) for r in caplog.records]
    return [(type(s), str(s)) for s in cx.transfer_syntax], errors, logs


def test_add_transfer_syntax_gives_pynetdicoms_list_errors_and_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    uid_memo._standard_syntaxes.clear()
    with caplog.at_level(logging.DEBUG, logger="pynetdicom"):
        expected = _run(uid_memo.ORIGINAL_ADD_TRANSFER_SYNTAX, TS_INPUTS * 2, caplog)
        first = _run(uid_memo.add_transfer_syntax, TS_INPUTS * 2, caplog)  # learns on the way
        again = _run(uid_memo.add_transfer_syntax, TS_INPUTS * 2, caplog)  # answers from the memo
    assert first == expected and again == expected
    assert (
        any(level == logging.WARNING for level, _ in expected[2]) and expected[1]
    )  # the test sees both kinds
    # only the silent standard ones (" ...2.2 " makes pydicom warn before it strips the spaces)
    remembered = {str(v) for v in uid_memo._standard_syntaxes.values()}
    assert remembered == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2"}


def test_a_uid_with_a_private_encoding_always_goes_to_pynetdicom() -> None:
    uid_memo._standard_syntaxes.clear()
    uid_memo.add_transfer_syntax(pynetdicom.presentation.PresentationContext(), "1.2.840.10008.1.2.1")
    marked = UID("1.2.840.10008.1.2.1")
    marked.set_private_encoding(False, True)
    cx = pynetdicom.presentation.PresentationContext()
    uid_memo.add_transfer_syntax(cx, marked)
    assert cx.transfer_syntax[0]._PRIVATE_TS_ENCODING == (False, True)  # pynetdicom's copy keeps it


def test_install_puts_the_method_on_presentation_context() -> None:
    uid_memo.install()
    assert pynetdicom.presentation.PresentationContext.add_transfer_syntax is uid_memo.add_transfer_syntax
    cx = pynetdicom.presentation.build_context("1.2.840.10008.5.1.4.1.1.7", ["1.2.840.10008.1.2.4.50"])
    assert cx.transfer_syntax == ["1.2.840.10008.1.2.4.50"]
