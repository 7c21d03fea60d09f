"""models.inference.view_gate: lateral/oblique views and non-chest images are not analysed."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from models.inference.view_gate import not_analysable_reason

# Real headers carry lower-case CS values; pydicom warns about them, the gate must cope.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR CS")


def _ds(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    ds.Modality = "DX"
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def _code(meaning: str, value: str = "R-10232", scheme: str = "SRT") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


@pytest.mark.parametrize("view", ["PA", "AP", "pa", " AP "])
def test_frontal_views_are_analysed(view: str) -> None:
    assert not_analysable_reason(_ds(ViewPosition=view, BodyPartExamined="CHEST")) is None


def test_no_view_information_is_analysed() -> None:
    assert not_analysable_reason(_ds()) is None


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "ll"])
def test_lateral_view_positions(view: str) -> None:
    reason = not_analysable_reason(_ds(ViewPosition=view, BodyPartExamined="CHEST"))
    assert reason == f"lateral view (ViewPosition={view.upper()})"


@pytest.mark.parametrize("view", ["LLD", "RLD"])
def test_lateral_decubitus_view_positions(view: str) -> None:
    reason = not_analysable_reason(_ds(ViewPosition=view, BodyPartExamined="CHEST"))
    assert reason == f"lateral decubitus view (ViewPosition={view})"


@pytest.mark.parametrize("view", ["RAO", "LPO", "RLO", "LLO"])
def test_oblique_view_positions(view: str) -> None:
    assert not_analysable_reason(_ds(ViewPosition=view)) == f"oblique view (ViewPosition={view})"


def test_view_code_sequence() -> None:
    lateral = _ds(ViewCodeSequence=[_code("left lateral", "R-10236")])
    assert not_analysable_reason(lateral) == "lateral view (ViewCodeSequence)"  # the code meaning is not quoted
    frontal = _ds(ViewCodeSequence=[_code("postero-anterior", "R-10214")], SeriesDescription="CHEST LAT")
    assert not_analysable_reason(frontal) is None  # the coded view wins over free text
    assert not_analysable_reason(_ds(ViewCodeSequence=[_code("bilateral", "X")])) is None


@pytest.mark.parametrize(
    "keyword, text",
    [
        ("SeriesDescription", "CHEST LAT"),
        ("SeriesDescription", "Thorax lateral"),
        ("ProtocolName", "CHEST_LAT"),
        ("AcquisitionDeviceProcessingDescription", "THORAX LAT ADULT"),
    ],
)
def test_textual_lateral_hints_without_view_position(keyword: str, text: str) -> None:
    reason = not_analysable_reason(_ds(**{keyword: text}))
    assert reason == f"lateral view ({keyword})"  # free text is never quoted (issue 13 point 6)


@pytest.mark.parametrize(
    "text", ["CHEST PA + LAT", "CHEST PA", "Bilateral chest", "LATEX ALLERGY", "PLATE 2"]
)
def test_textual_hints_that_are_not_a_lateral_image(text: str) -> None:
    assert not_analysable_reason(_ds(SeriesDescription=text)) is None


def test_frontal_view_position_overrides_text() -> None:
    assert not_analysable_reason(_ds(ViewPosition="PA", SeriesDescription="CHEST LAT")) is None


def test_patient_orientation_of_a_lateral_projection() -> None:
    assert (
        not_analysable_reason(_ds(PatientOrientation=["A", "F"])) == "lateral view (PatientOrientation=A\\F)"
    )
    assert not_analysable_reason(_ds(PatientOrientation=["L", "F"])) is None  # PA frontal
    assert not_analysable_reason(_ds(PatientOrientation=["R", "F"])) is None  # AP frontal


@pytest.mark.parametrize("part", ["CHEST", "chest", "THORAX", "LUNG", "", "PORT CHEST", "TORAX"])
def test_chest_body_parts_are_analysed(part: str) -> None:
    assert not_analysable_reason(_ds(ViewPosition="PA", BodyPartExamined=part)) is None


@pytest.mark.parametrize("part", ["ABDOMEN", "SKULL", "HAND", "KNEE"])
def test_other_body_parts_are_not_analysed(part: str) -> None:
    assert not_analysable_reason(_ds(ViewPosition="PA", BodyPartExamined=part)) == (
        f"not a chest image (BodyPartExamined={part})"
    )
