"""Deterministic UIDs (dicom_node.results.uids): same inputs, same UIDs; anything that changes a result's
content (source, weights, decision settings) changes them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pydicom.uid import UID

from dicom_node.results import uids
from models.findings import FindingCode, Findings, Heatmap, ModelInfo

M1 = (ModelInfo("cxr_classification", "0.1.0", "aaaaaaaaaaaa"), ModelInfo("cxr_opacity_detection", "0.1.0", "bbbbbbbbbbbb"))
M2 = (ModelInfo("cxr_classification", "0.2.0", "aaaaaaaaaaaa"), ModelInfo("cxr_opacity_detection", "0.1.0", "bbbbbbbbbbbb"))
#: same version strings as M1, other weights (a retrain that kept "version": "0.1.0")
M1_RETRAINED = (ModelInfo("cxr_classification", "0.1.0", "cccccccccccc"), M1[1])
SRC = "1.2.826.0.1.3680043.8.498.1"
STUDY = "1.2.826.0.1.3680043.8.498.2"
PNEUMONIA = FindingCode("233604007", "SCT", "Pneumonia")


def _findings(src: str = SRC, models: tuple[ModelInfo, ...] = M1, **kw: object) -> Findings:
    values: dict[str, object] = dict(
        sop_instance_uid=src,
        analysed=True,
        rows=64,
        columns=64,
        class_probabilities={"Normal": 0.3, "Pneumonia": 0.7},
        probability=0.7,
        finding=PNEUMONIA,
        threshold=0.5,
        detection_threshold=0.9,
        models=models,
    )
    values.update(kw)
    return Findings(**values)  # type: ignore[arg-type]


F1 = _findings()


def test_same_inputs_give_same_uids() -> None:
    assert uids.instance_uid(F1, "SR") == uids.instance_uid(_findings(), uids.ResultKind.SR)
    assert uids.series_uid(STUDY, F1, "SC") == uids.series_uid(STUDY, _findings(), "SC")
    assert uids.device_observer_uid(M1) == uids.device_observer_uid(list(M1))
    assert uids.tracking_uid(F1, "box-0") == uids.tracking_uid(_findings(), "box-0")


def test_model_order_does_not_matter() -> None:
    assert uids.instance_uid(F1, "SR") == uids.instance_uid(_findings(models=tuple(reversed(M1))), "SR")


def test_probabilities_do_not_change_the_uids() -> None:
    """Receiving the same instance twice must give the same UIDs even if float noise moves a probability."""
    again = _findings(probability=0.7000001, class_probabilities={"Normal": 0.2999999, "Pneumonia": 0.7000001})
    assert uids.instance_uid(again, "SR") == uids.instance_uid(F1, "SR")


def test_every_input_changes_the_uid() -> None:
    base = uids.instance_uid(F1, "SR")
    assert uids.instance_uid(_findings(models=M2), "SR") != base  # new model version
    assert uids.instance_uid(F1, "SC") != base  # other kind
    assert uids.instance_uid(_findings(src=SRC + ".1"), "SR") != base  # other source
    assert uids.series_uid(STUDY, F1, "SR") != uids.series_uid(STUDY, _findings(models=M2), "SR")
    assert uids.series_uid(STUDY, F1, "SR") != uids.series_uid(STUDY, F1, "SC")
    assert uids.device_observer_uid(M1) != uids.device_observer_uid(M2)
    assert uids.tracking_uid(F1, "box-0") != uids.tracking_uid(F1, "box-1")
    # a series UID is not the instance UID of anything with the same string inputs
    assert uids.series_uid(SRC, F1, "SR") != uids.instance_uid(F1, "SR")


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(_findings(models=M1_RETRAINED), id="retrained weights, same version string"),
        pytest.param(_findings(threshold=0.6), id="decision threshold"),
        pytest.param(_findings(detection_threshold=0.8), id="detection threshold"),
        pytest.param(_findings(box_gating="all"), id="box gating rule"),
    ],
)
def test_a_retrain_or_a_settings_change_gives_new_instances_in_a_new_series(changed: Findings) -> None:
    """Orthanc keeps the first copy of a SOP Instance UID: stale results must never share a UID."""
    assert uids.instance_uid(changed, "SR") != uids.instance_uid(F1, "SR")
    assert uids.instance_uid(changed, "SC") != uids.instance_uid(F1, "SC")
    assert uids.series_uid(STUDY, changed, "SR") != uids.series_uid(STUDY, F1, "SR")
    assert uids.tracking_uid(changed, "image") != uids.tracking_uid(F1, "image")


def test_a_heatmap_changes_the_sc_instance_but_not_the_series() -> None:
    with_map = _findings(heatmap=Heatmap(np.ones((2, 2), np.float32), 0, 0, 64, 64))
    assert uids.instance_uid(with_map, "SC") != uids.instance_uid(F1, "SC")
    # positive images (with a heatmap) and negative ones (without) of one study share one series
    negative = _findings(probability=0.2, class_probabilities={"Normal": 0.8, "Pneumonia": 0.2})
    assert uids.series_uid(STUDY, with_map, "SC") == uids.series_uid(STUDY, negative, "SC")


def test_series_uid_depends_on_study_not_on_instance() -> None:
    # two instances of one study share the SR series; their SR instances differ
    other = _findings(src=SRC + ".2")
    assert uids.instance_uid(F1, "SR") != uids.instance_uid(other, "SR")
    assert uids.series_uid(STUDY, F1, "SR") == uids.series_uid(STUDY, other, "SR")
    assert uids.series_uid(STUDY, F1, "SR") != uids.series_uid(STUDY + ".9", F1, "SR")


def test_uids_are_valid_dicom_uids() -> None:
    not_analysed = Findings(sop_instance_uid=SRC, analysed=False, rows=1, columns=1, not_analysed_reason="lateral")
    for u in (
        uids.instance_uid(F1, "SR"),
        uids.series_uid(STUDY, F1, "SC"),
        uids.device_observer_uid(M1),
        uids.tracking_uid(F1, "image"),
        uids.instance_uid(not_analysed, "SR"),
    ):
        assert isinstance(u, UID)
        assert u.is_valid, u
        assert u.startswith("2.25.")
        assert len(u) <= 64


def test_no_models_is_allowed_and_distinct() -> None:
    assert uids.models_key(()) == "(no models)"
    bare = Findings(sop_instance_uid=SRC, analysed=False, rows=1, columns=1, not_analysed_reason="lateral")
    assert uids.instance_uid(bare, "SR") != uids.instance_uid(replace(bare, models=M1), "SR")


def test_models_key_names_the_exact_weights() -> None:
    assert uids.models_key(M1) == "cxr_classification=0.1.0+aaaaaaaaaaaa;cxr_opacity_detection=0.1.0+bbbbbbbbbbbb"


def test_bad_inputs_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="'XX'"):
        uids.instance_uid(F1, "XX")
    with pytest.raises(TypeError, match="str"):
        uids.models_key(["cxr_classification"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="dict"):
        uids.result_key({"sop_instance_uid": SRC})  # type: ignore[arg-type]


def test_uids_are_stable_across_processes() -> None:
    """A restarted node must derive the same UIDs (no per-process randomness or salt)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_uids import F1; from dicom_node.results import uids; "
        "print(uids.instance_uid(F1, 'SR'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == uids.instance_uid(F1, "SR")


def test_parts_are_not_concatenated_ambiguously() -> None:
    # pydicom's generate_uid joins its sources with "" - ours must not
    assert uids._uid("1.2", "3.4") != uids._uid("1.23", ".4")
    assert uids.tracking_uid(F1, "box-1") != uids.tracking_uid(F1, "box-10")
