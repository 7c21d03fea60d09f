"""Deterministic UIDs (dicom_node.uids)."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from dicom_node import uids
from models.findings import ModelInfo

M1 = (ModelInfo("cxr_classification", "0.1.0"), ModelInfo("cxr_opacity_detection", "0.1.0"))
M2 = (ModelInfo("cxr_classification", "0.2.0"), ModelInfo("cxr_opacity_detection", "0.1.0"))
SRC = "1.2.826.0.1.3680043.8.498.1"
STUDY = "1.2.826.0.1.3680043.8.498.2"


def test_same_inputs_give_same_uids() -> None:
    assert uids.instance_uid(SRC, M1, "SR") == uids.instance_uid(SRC, list(M1), uids.ResultKind.SR)
    assert uids.series_uid(STUDY, M1, "SC") == uids.series_uid(STUDY, M1, "SC")
    assert uids.device_observer_uid(M1) == uids.device_observer_uid(M1)
    assert uids.tracking_uid(SRC, M1, "box-0") == uids.tracking_uid(SRC, M1, "box-0")


def test_model_order_does_not_matter() -> None:
    assert uids.instance_uid(SRC, M1, "SR") == uids.instance_uid(SRC, tuple(reversed(M1)), "SR")


def test_every_input_changes_the_uid() -> None:
    base = uids.instance_uid(SRC, M1, "SR")
    assert uids.instance_uid(SRC, M2, "SR") != base  # new model version
    assert uids.instance_uid(SRC, M1, "SC") != base  # other kind
    assert uids.instance_uid(SRC + ".1", M1, "SR") != base  # other source
    assert uids.series_uid(STUDY, M1, "SR") != uids.series_uid(STUDY, M2, "SR")
    assert uids.series_uid(STUDY, M1, "SR") != uids.series_uid(STUDY, M1, "SC")
    assert uids.device_observer_uid(M1) != uids.device_observer_uid(M2)
    assert uids.tracking_uid(SRC, M1, "box-0") != uids.tracking_uid(SRC, M1, "box-1")
    # a series UID is not the instance UID of anything with the same string inputs
    assert uids.series_uid(SRC, M1, "SR") != uids.instance_uid(SRC, M1, "SR")


def test_series_uid_depends_on_study_not_on_instance() -> None:
    # two instances of one study share the SR series; their SR instances differ
    assert uids.instance_uid(SRC, M1, "SR") != uids.instance_uid(SRC + ".2", M1, "SR")
    assert uids.series_uid(STUDY, M1, "SR") != uids.series_uid(STUDY + ".9", M1, "SR")


def test_uids_are_valid_dicom_uids() -> None:
    for u in (
        uids.instance_uid(SRC, M1, "SR"),
        uids.series_uid(STUDY, M1, "SC"),
        uids.device_observer_uid(M1),
        uids.tracking_uid(SRC, M1, "image"),
        uids.instance_uid(SRC, (), "SR"),
    ):
        assert isinstance(u, UID)
        assert u.is_valid, u
        assert u.startswith("2.25.")
        assert len(u) <= 64


def test_no_models_is_allowed_and_distinct() -> None:
    assert uids.models_key(()) == "(no models)"
    assert uids.instance_uid(SRC, (), "SR") != uids.instance_uid(SRC, M1, "SR")


def test_bad_inputs_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="'XX'"):
        uids.instance_uid(SRC, M1, "XX")
    with pytest.raises(ValueError, match="''"):
        uids.instance_uid("", M1, "SR")
    with pytest.raises(TypeError, match="str"):
        uids.models_key(["cxr_classification"])  # type: ignore[list-item]


def test_uids_are_stable_across_processes() -> None:
    """A restarted node must derive the same UIDs (no per-process randomness or salt)."""
    import subprocess
    import sys

    code = (
        "from dicom_node import uids; from models.findings import ModelInfo as M; "
        f"print(uids.instance_uid({SRC!r}, (M('cxr_classification', '0.1.0'), M('cxr_opacity_detection', '0.1.0')), 'SR'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == uids.instance_uid(SRC, M1, "SR")


def test_parts_are_not_concatenated_ambiguously() -> None:
    # pydicom's generate_uid joins its sources with "" - ours must not
    assert uids._uid("1.2", "3.4") != uids._uid("1.23", ".4")
    assert uids.tracking_uid("1.2", M1, "box-1") != uids.tracking_uid("1.2", M1, "box-10")
