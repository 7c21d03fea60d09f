"""The per-association copy of the SCP's contexts (dicom_node/scp/contexts.py) is a deep copy in effect."""

from __future__ import annotations

import copy

from pynetdicom.presentation import PresentationContext
from service_helpers import running_receiver, verification_association

from dicom_node.scp.contexts import SupportedContexts
from dicom_node.scp.receive import build_ae
from dicom_node.settings import NodeSettings


def _state(cx: PresentationContext) -> tuple:
    return (cx.context_id, cx.abstract_syntax, tuple(cx.transfer_syntax), cx.scu_role, cx.scp_role, cx.as_scu,
            cx.as_scp, cx.result)  # fmt: skip


def test_copy_equals_a_deep_copy_and_is_independent(tmp_path) -> None:
    contexts = build_ae(NodeSettings(spool_dir=tmp_path, destinations=[])).supported_contexts
    fast = copy.deepcopy(SupportedContexts(contexts))
    slow = copy.deepcopy(contexts)
    assert [_state(c) for c in fast] == [_state(c) for c in slow]
    assert [vars(c) for c in fast] == [vars(c) for c in slow]  # every attribute, not only the public ones
    assert all(type(c) is PresentationContext for c in fast)
    assert len(fast) > 100
    for original, copied in zip(contexts, fast, strict=True):
        assert copied is not original and copied.transfer_syntax is not original.transfer_syntax
    n = len(contexts[0].transfer_syntax)
    fast[0].add_transfer_syntax("1.2.840.10008.1.2.4.80")  # the association changes its own copy only
    fast[0].context_id = 99
    assert len(contexts[0].transfer_syntax) == n and contexts[0].context_id != 99


def test_the_receiver_serves_the_cheap_copy(tmp_path) -> None:
    with running_receiver(tmp_path / "spool") as (receiver, _):
        servers = receiver.ae._servers
        assert servers and all(isinstance(s.contexts, SupportedContexts) for s in servers)


def test_the_scp_advertises_its_maximum_pdu(tmp_path) -> None:
    """A sender learns scp_max_pdu in the A-ASSOCIATE-AC (storescu then sends 57 instead of 303
    P-DATA PDUs for 16 RSNA-style instances at 128 KiB; the chunked receive writes them the same)."""
    for size in (NodeSettings.model_fields["scp_max_pdu"].default, 65536):
        with running_receiver(tmp_path / f"spool{size}", scp_max_pdu=size) as (receiver, settings):
            with verification_association(receiver, settings) as assoc:
                assert assoc.acceptor.maximum_length == size


def test_a_subclass_is_copied_by_copy_copy() -> None:
    from dicom_node.scp.contexts import copy_context

    class Tagged(PresentationContext):
        def __copy__(self) -> Tagged:
            new = Tagged()
            new.__dict__.update(self.__dict__)
            new.copied = True
            return new

    cx = Tagged()
    cx.abstract_syntax = "1.2.840.10008.1.1"
    cx.add_transfer_syntax("1.2.840.10008.1.2")
    new = copy_context(cx)
    assert type(new) is Tagged and new.copied and new.transfer_syntax == cx.transfer_syntax
    assert new.transfer_syntax is not cx.transfer_syntax
