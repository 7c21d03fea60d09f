"""Tests of models.datasets.split: patient-level, stratified, deterministic split + JSON round trip."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from models.datasets.split import read_split, split_patients, stratum_of, validate_fractions, write_split

CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")


@dataclass(frozen=True)
class Lab:
    """Stand-in with the two fields the split reads (same names as rsna_layout.PatientLabels)."""

    target: int
    klass: str | None


def _labels(n: int, seed: int = 1, with_class: bool = True) -> dict[str, Lab]:
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        k = rng.choice(CLASSES)
        out[f"pid-{i:05d}-{rng.randrange(10**6):06d}"] = Lab(
            int(k == "Lung Opacity"), k if with_class else None
        )
    return out


def test_partition_covers_every_patient_once() -> None:
    labels = _labels(503)
    split = split_patients(labels, seed=3)
    assert set(split) == {"train", "val", "test"}
    all_ids = split["train"] + split["val"] + split["test"]
    assert len(all_ids) == len(set(all_ids)) == len(labels)
    assert set(all_ids) == set(labels)
    for ids in split.values():
        assert ids == sorted(ids)


def test_sizes_follow_fractions_within_one_per_stratum() -> None:
    labels = _labels(1000)
    split = split_patients(labels, seed=0, fractions=(0.7, 0.2, 0.1))
    n_strata = len({stratum_of(v) for v in labels.values()})
    for name, frac in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
        assert abs(len(split[name]) - frac * 1000) <= n_strata


def test_stratified_by_class() -> None:
    labels = _labels(900, seed=5)
    split = split_patients(labels, seed=11)
    total = Counter(v.klass for v in labels.values())
    for name, frac in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        got = Counter(labels[p].klass for p in split[name])
        for k in CLASSES:
            assert abs(got[k] - frac * total[k]) <= 1, (name, k, got[k], total[k])


def test_stratified_by_target_when_class_unknown() -> None:
    labels = _labels(400, seed=2, with_class=False)
    assert {stratum_of(v) for v in labels.values()} == {"target=0", "target=1"}
    split = split_patients(labels, seed=0, fractions=(0.5, 0.25, 0.25))
    pos = sum(v.target for v in labels.values())
    for name, frac in (("train", 0.5), ("val", 0.25), ("test", 0.25)):
        got = sum(labels[p].target for p in split[name])
        assert abs(got - frac * pos) <= 1


def test_deterministic_and_independent_of_dict_order() -> None:
    labels = _labels(300)
    a = split_patients(labels, seed=7)
    items = list(labels.items())
    random.Random(99).shuffle(items)
    b = split_patients(dict(items), seed=7)
    assert a == b
    c = split_patients(labels, seed=8)
    assert c != a  # another seed gives another split


@pytest.mark.parametrize(
    "fractions",
    [(0.8, 0.1, 0.2), (0.5, 0.5), (1.2, -0.1, -0.1), (0.9, 0.1, float("nan")), ("a", 0.5, 0.5)],
)
def test_bad_fractions_name_the_value(fractions: tuple) -> None:
    with pytest.raises(ValueError) as exc:
        split_patients(_labels(10), fractions=fractions)  # type: ignore[arg-type]
    assert repr(fractions) in str(exc.value)


def test_zero_fraction_allowed() -> None:
    split = split_patients(_labels(50), fractions=(0.9, 0.0, 0.1))
    assert split["val"] == []
    assert validate_fractions([1, 0, 0]) == (1.0, 0.0, 0.0)


def test_write_read_round_trip(tmp_path) -> None:
    split = split_patients(_labels(120), seed=1)
    path = write_split(tmp_path / "sub" / "split.json", split, seed=1, fractions=(0.8, 0.1, 0.1))
    assert read_split(path) == split
    doc = json.loads(path.read_text())
    assert doc["seed"] == 1 and doc["fractions"] == [0.8, 0.1, 0.1]
    assert doc["counts"] == {k: len(v) for k, v in split.items()}


def test_read_split_rejects_overlap_and_missing_keys(tmp_path) -> None:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": []}))
    with pytest.raises(ValueError, match="'b'"):
        read_split(p)
    p.write_text(json.dumps({"train": ["a"], "test": []}))
    with pytest.raises(ValueError, match="keys"):
        read_split(p)
    with pytest.raises(ValueError, match="missing.json"):
        read_split(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="'x'"):
        write_split(tmp_path / "w.json", {"train": ["x"], "val": ["x"], "test": []})
