"""The result contract (models.findings): one decision, validated in the constructor, lossless JSON."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dicom_node.results.build import findings_from_json, findings_to_dict
from models.findings import Box, FindingCode, Findings, Heatmap, ModelInfo

PNEUMONIA = FindingCode("233604007", "SCT", "Pneumonia")
MODELS = (ModelInfo("cxr_classification", "1.0.0", "0123456789ab"), ModelInfo("cxr_opacity_detection", "0.1.0", "cafe"))


def _findings(**kw: object) -> Findings:
    values: dict[str, object] = dict(
        sop_instance_uid="1.2.3",
        analysed=True,
        rows=100,
        columns=80,
        class_probabilities={"Normal": 0.2, "Pneumonia": 0.8},
        probability=0.8,
        finding=PNEUMONIA,
        threshold=0.6,
        boxes=(Box(10, 20, 30, 40, score=0.97),),
        detection_threshold=0.95,
        heatmap=Heatmap(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32), 0, 10, 80, 80),
        models=MODELS,
    )
    values.update(kw)
    return Findings(**values)  # type: ignore[arg-type]


def test_the_decision_is_probability_against_threshold() -> None:
    assert _findings().positive is True
    assert _findings(probability=0.6, boxes=(), heatmap=None).positive is True  # >= threshold
    negative = _findings(probability=0.59, class_probabilities={"Normal": 0.41, "Pneumonia": 0.59}, boxes=(), heatmap=None)
    assert negative.positive is False
    refused = Findings(sop_instance_uid="1.2.3", analysed=False, rows=1, columns=1, not_analysed_reason="lateral")
    assert refused.positive is None


def test_a_negative_image_cannot_carry_boxes_under_positive_only_gating() -> None:
    with pytest.raises(ValueError, match="positive-only"):
        _findings(probability=0.5)
    shown = _findings(probability=0.5, box_gating="all", heatmap=None)  # the "all" rule: the site chose it
    assert shown.positive is False and len(shown.boxes) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"finding": None}, "finding"),
        ({"threshold": None}, "decision threshold"),
        ({"threshold": 1.2}, "1.2"),
        ({"detection_threshold": None}, "detection threshold"),
        ({"boxes": (Box(1, 1, 5, 5, score=0.5),)}, "below the detection threshold"),
        ({"class_probabilities": {"Pneumonia": 0.8}}, "at least two classes"),
        ({"box_gating": "some"}, "'some'"),
        ({"probability": float("nan")}, "nan"),
    ],
)
def test_invalid_findings_are_refused_naming_the_value(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _findings(**change)


def test_heatmap_is_validated_and_read_only() -> None:
    with pytest.raises(ValueError, match="range"):
        Heatmap(np.array([[0.0, 1.5]], np.float32), 0, 0, 1, 1)
    with pytest.raises(ValueError, match="2-D"):
        Heatmap(np.zeros(4, np.float32), 0, 0, 1, 1)
    with pytest.raises(ValueError, match="width/height"):
        Heatmap(np.zeros((2, 2), np.float32), 0, 0, 0, 1)
    h = _findings().heatmap
    assert h is not None and not h.values.flags.writeable
    with pytest.raises(ValueError, match="not analysed"):
        Findings(sop_instance_uid="1.2.3", analysed=False, rows=1, columns=1, not_analysed_reason="x", heatmap=h)


def test_model_label_names_the_exact_weights() -> None:
    assert MODELS[0].label == "1.0.0+0123456789ab"
    with pytest.raises(ValueError, match="digest"):
        ModelInfo("x", "1", "")


def test_json_round_trips_are_exact_and_to_json_says_the_decision() -> None:
    f = _findings()
    back = findings_from_json(findings_to_dict(f))
    assert findings_to_dict(back) == findings_to_dict(f)
    assert back.heatmap is not None and np.array_equal(back.heatmap.values, f.heatmap.values)  # type: ignore[union-attr]
    j = f.to_json()
    assert j["positive"] is True and j["threshold"] == 0.6 and j["box_gating"] == "positive-only"
    assert j["finding"] == {"value": "233604007", "scheme": "SCT", "meaning": "Pneumonia"}
    assert j["models"][0] == {"name": "cxr_classification", "version": "1.0.0", "digest": "0123456789ab"}
    # to_json (rounded) also reads back
    assert findings_from_json(j).boxes[0].score == pytest.approx(0.97)
    assert replace(back, timing_ms={}).sop_instance_uid == "1.2.3"
