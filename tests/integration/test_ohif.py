"""What a radiologist sees in OHIF v3: CXRs pushed through Orthanc and the real node, opened in a real browser.

Orthanc (Debian, DICOMweb plug-in) + the node + OHIF ``@ohif/app`` (the pinned build fetched by
``scripts/fetch_ohif.sh``) served same-origin with the DICOMweb proxy of ``ohif_server.py``,
driven in Debian's Chromium by Playwright (``ohif_browser.py``). The SR must open without the
TypeError of issue 12, and every measurement must be drawn with the label lines that
``tests/sr_ohif_view.py`` (OHIF's SR parser re-implemented) derives from the SR stored in Orthanc:
the image-level result (finding, decision, probability, thresholds) and each box (finding,
probability), at the place the SR says. The SC overlay opens too, and a "not evaluated" SR shows
its reason.

Screenshots go to the test's tmp folder; with ``CXR_OHIF_SCREENSHOT_DIR=docs/img`` the SR view is
also written there as ``ohif_sr.png`` (the README's picture):
``CXR_OHIF_SCREENSHOT_DIR=docs/img .venv/bin/python -m pytest -q tests/integration/test_ohif.py``.
Skipped only when Chromium, the fetched OHIF build, the DICOMweb plug-in or Playwright is missing
(``bash scripts/setup.sh --ci`` installs them all; CI runs this test).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from integration_helpers import NodeProcess, make_image
from ohif_browser import (
    CHROMIUM,
    LAUNCH_ARGS,
    annotation_lines,
    decline_tracking_prompt,
    new_page,
    open_series,
    open_study,
    polylines,
    toggle_study_browser,
    viewport_pixels,
    wait_for_annotation,
)
from ohif_server import OhifServer, ohif_dist
from sr_ohif_view import OhifMeasurement, ohif_measurements

from dicom_node.orthanc.config import DEBIAN_DICOMWEB_PLUGIN
from dicom_node.results.common import SC_SERIES_DESCRIPTION, SR_SERIES_DESCRIPTION
from dicom_node.results.sr.build import build_not_evaluated_sr
from dicom_node.results.sr.codes import NotEvaluatedReason
from dicom_node.results.sr.read import read_sr
from dicom_node.testing.local_orthanc import LocalOrthanc, free_port, storescu, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULT_TIMEOUT = 240.0  # s; the node analyses on 2 shared CPU cores
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class BrowserStack:
    orthanc: LocalOrthanc
    node: NodeProcess
    ohif: OhifServer
    browser: Any


@pytest.fixture(scope="module")
def browser_stack(binaries: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserStack]:
    """Orthanc with DICOMweb + the node + OHIF on one origin + headless Chromium, once per module."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    dist = ohif_dist()
    if dist is None:
        pytest.skip("OHIF is not fetched (bash scripts/fetch_ohif.sh)")
    if not DEBIAN_DICOMWEB_PLUGIN.exists():
        pytest.skip("the Orthanc DICOMweb plug-in is not installed (apt-get install orthanc-dicomweb)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e .[dev])")

    work = tmp_path_factory.mktemp("ohif")
    http, dicom, node_port = free_port(), free_port(), free_port()
    orthanc = LocalOrthanc(workdir=work / "orthanc", http_port=http, dicom_port=dicom, node_port=node_port, dicomweb=True)
    node = NodeProcess(workdir=work / "node", port=node_port, orthanc_dicom_port=dicom)
    ohif: OhifServer | None = None
    try:
        orthanc.start()
        node.start()
        ohif = OhifServer(dist, orthanc.dicomweb_url, orthanc.auth).start()
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
            try:
                yield BrowserStack(orthanc, node, ohif, browser)
            finally:
                browser.close()
    finally:
        if ohif is not None:
            ohif.stop()
        node.kill()
        orthanc.stop()


def _node_results(orthanc: LocalOrthanc, study_uid: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    tags = [t for t in orthanc.study_instances(study_uid) if t.get("Manufacturer") == "cxr-ai-node"]
    return [t for t in tags if t.get("Modality") == "SR"], [t for t in tags if t.get("SOPClassUID") == SC_STORAGE]


def _wait_results(orthanc: LocalOrthanc, study_uid: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        srs, scs = _node_results(orthanc, study_uid)
        return (srs, scs) if srs and scs else None

    return wait_until(both, RESULT_TIMEOUT, interval=1.0, what=f"SR and SC of study {study_uid}")


#: width of the README copy of the SR screenshot (the full 1920-px screenshot stays in tmp_path)
README_WIDTH = 1280


def _save(page: Any, tmp_path: Path, name: str) -> Path:
    """Screenshot into ``tmp_path``; the SR view also (downscaled) into ``$CXR_OHIF_SCREENSHOT_DIR``."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    target = os.environ.get("CXR_OHIF_SCREENSHOT_DIR")
    if target and name == "ohif_sr.png":
        from PIL import Image

        Path(target).mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            small = im.convert("RGB").resize((README_WIDTH, round(im.height * README_WIDTH / im.width)), Image.LANCZOS)
            small.save(Path(target) / name, optimize=True)
    return path


def _canvas_transform(whole_image: np.ndarray, rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) mapping source pixels to canvas pixels, from the drawn whole-image region."""
    top_left, bottom_right = whole_image.min(axis=0), whole_image.max(axis=0)
    scale = (bottom_right - top_left) / np.asarray([columns, rows], dtype=float)
    return top_left, scale


def _assert_drawn(page: Any, measurement: OhifMeasurement, drawn: list[np.ndarray],
                  offset: np.ndarray, scale: np.ndarray) -> None:  # fmt: skip
    lines = annotation_lines(page, measurement.tracking_uid)
    assert lines == measurement.lines, f"{measurement.tracking_identifier}: page shows {lines}"
    expected = offset + measurement.coords[0][1] * scale
    assert any(p.shape == expected.shape and np.allclose(p, expected, atol=1.5) for p in drawn), (
        f"{measurement.tracking_identifier}: no polyline at {expected.round(1).tolist()} among "
        f"{[p.round(1).tolist() for p in drawn]}"
    )


def test_ohif_draws_the_sr_with_its_labels_and_opens_the_sc(
    browser_stack: BrowserStack, phantom_files: list[Path], tmp_path: Path
) -> None:
    stack = browser_stack
    res = storescu(phantom_files, stack.orthanc.dicom_port)
    assert res.returncode == 0, res.stdout + res.stderr
    studies = [str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in phantom_files]
    found = {s: _wait_results(stack.orthanc, s) for s in studies}
    # the study whose SR has the most boxes: the page must show the image-level result and boxes
    srs = {s: pydicom.dcmread(io.BytesIO(stack.orthanc.file(found[s][0][0]["_orthanc_id"]))) for s in studies}
    study = max(studies, key=lambda s: len(read_sr(srs[s]).boxes))
    sr = srs[study]
    expected = ohif_measurements(sr)
    assert len(expected) >= 2, "no phantom got a box: the box check would prove nothing"
    source = pydicom.dcmread(next(f for f in phantom_files if str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) == study))

    page, log = new_page(stack.browser, stack.ohif.url)
    open_study(page, stack.ohif.url, study)
    # the SR: no crash, every measurement drawn where the SR says, with the labels it implies
    open_series(page, SR_SERIES_DESCRIPTION)
    decline_tracking_prompt(page)
    image_level, *boxes = expected
    try:
        wait_for_annotation(page, image_level.tracking_uid)
    except Exception:
        _save(page, tmp_path, "failure.png")
        raise AssertionError(f"OHIF drew no SR (screenshot {tmp_path / 'failure.png'}); page said: "
                             f"{log.failures() or log.console[-20:]}, failed requests {_failed_requests(stack)}") from None  # fmt: skip
    if page.locator("[data-cy=studyBrowser-panel]").count():
        toggle_study_browser(page, open_=False)
    page.wait_for_timeout(1000)  # the viewport re-renders at its new width
    _save(page, tmp_path, "ohif_sr.png")
    drawn = polylines(page)
    whole = [p for p in drawn if p.shape == (5, 2)]
    areas = [np.ptp(p[:, 0]) * np.ptp(p[:, 1]) for p in whole]
    offset, scale = _canvas_transform(whole[int(np.argmax(areas))], int(source.Rows), int(source.Columns))
    assert scale[0] == pytest.approx(scale[1], rel=0.02)  # square pixels: the image-level region is the image
    for measurement in expected:
        _assert_drawn(page, measurement, drawn, offset, scale)
    finding = image_level.tracking_identifier.removesuffix(" (image level)")  # e.g. "Pneumonia", "Lung opacity"
    assert image_level.lines[0].startswith(f"{finding} PRESENT, probability: "), image_level.lines
    assert all(b.lines[0].startswith("Lung opacity probability: ") for b in boxes)
    assert log.failures() == [], (log.failures(), _failed_requests(stack))
    assert page.get_by_text("Something went wrong").count() == 0

    # the SC overlay opens too: the image with its coloured overlay
    toggle_study_browser(page, open_=True)
    open_series(page, SC_SERIES_DESCRIPTION)
    wait_until(lambda: _colourful(viewport_pixels(page)), 30, interval=0.5, what="the SC overlay in the viewport")
    _save(page, tmp_path, "ohif_sc.png")
    assert log.failures() == [], (log.failures(), _failed_requests(stack))
    page.context.close()
    print(f"OHIF screenshots: {tmp_path}")  # visible with -s


def _failed_requests(stack: BrowserStack) -> list[tuple[str, int]]:
    """DICOMweb requests Orthanc answered with an error (for failure messages)."""
    return [(path, status) for path, status in stack.ohif.proxied if status >= 400]


def _colourful(rgb: np.ndarray) -> bool:
    """The viewport shows an image with coloured overlay pixels (the SC), not a black pane."""
    spread = rgb.max(axis=2).astype(int) - rgb.min(axis=2).astype(int)
    return bool(rgb.std() > 10 and (spread > 60).mean() > 0.001)


def test_ohif_shows_a_not_evaluated_sr_with_its_reason(browser_stack: BrowserStack, tmp_path: Path) -> None:
    """A "not evaluated" SR (here: not a chest image) is drawn over its image with the reason."""
    stack = browser_stack
    image = make_image("CR", body_part="SKULL", rows=256, columns=256, patient_name="Not^Chest", seed=41)
    sr = build_not_evaluated_sr(image, NotEvaluatedReason.NOT_CHEST, attempts=1)
    for ds in (image, sr):  # into Orthanc over REST; the router does not forward a skull CR to the node
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        stack.orthanc.upload(buf.getvalue())
    (expected,) = ohif_measurements(sr)
    page, log = new_page(stack.browser, stack.ohif.url)
    open_study(page, stack.ohif.url, str(image.StudyInstanceUID))
    open_series(page, SR_SERIES_DESCRIPTION)
    decline_tracking_prompt(page, timeout_ms=5000)
    wait_for_annotation(page, expected.tracking_uid)
    if page.locator("[data-cy=studyBrowser-panel]").count():
        toggle_study_browser(page, open_=False)
    assert annotation_lines(page, expected.tracking_uid) == expected.lines == [
        "Not evaluated: not a chest image: 1.00 {attempts}"
    ]
    _save(page, tmp_path, "ohif_not_evaluated.png")
    assert log.failures() == [], log.failures()
    page.context.close()
