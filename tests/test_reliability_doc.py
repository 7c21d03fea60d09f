"""RELIABILITY.md's results are generated from the figures the fault suite wrote (issue 13 point 7)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reliability_report", ROOT / "scripts" / "reliability_report.py")
assert _spec and _spec.loader
rr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rr)


def test_reliability_md_is_the_rendering_of_the_committed_results() -> None:
    doc = rr.DOC.read_text(encoding="utf-8")
    assert rr.rewrite(doc, rr.render(rr.load())) == doc, "RELIABILITY.md is stale: run scripts/reliability_report.py"


def test_every_scenario_reported_and_counted() -> None:
    records = rr.load()
    tested = {r["test"].split("::")[0].split("/")[-1] for r in records}
    calling = {p.name for p in (ROOT / "tests" / "reliability").glob("test_*.py") if "report(" in p.read_text()}
    assert calling <= tested, f"scenarios without a committed result: {sorted(calling - tested)}"
    for r in records:
        assert r.get("lost") in (None, 0), f"{r['scenario']}: lost {r['lost']}"
    for p in (ROOT / "tests" / "reliability").glob("test_*.py"):  # lost is counted, never a literal
        assert not re.search(r"\blost=0\b", p.read_text()), f"{p.name} reports a literal lost=0"


def test_render_shows_counted_fields() -> None:
    block = rr.render([{"scenario": "s", "scale": 0.25, "test": "tests/reliability/test_x.py::t", "ts": "2026-01-01 00:00",
                        "tried": 3, "lost": 0, "refused": 2, "seconds": 1.5}])  # fmt: skip
    assert "| s | 3 | **0** | refused 2 | 1.5 | `test_x.py` |" in block
