"""Drive OHIF in Debian's Chromium with Playwright (no browser download): open a study, a series, read the page.

Used by ``test_ohif.py``. Every request the page makes outside its own origin is aborted (and
recorded), so the test needs no network and OHIF cannot phone home. Console messages and page
errors are recorded: OHIF catches the SR extension's TypeError in a React error boundary and
only *logs* it, so a failed SR display shows up as a console message, not as a page error.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
#: Chromium flags: no sandbox (CI runs as root), software rendering, no background traffic
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: a landscape reading-room monitor: the portrait/square CXR leaves room right of it for the labels
VIEWPORT = {"width": 1920, "height": 1080}
#: console text that means OHIF failed (its error boundary logs the exception at debug level)
_FAILURE_TEXT = re.compile(r"TypeError|Error Boundary|Something went wrong|Cannot read properties", re.IGNORECASE)
#: OHIF's own listener bug, logged when an image request fails and is retried (see PageLog.failures)
_OHIF_IMAGE_LOAD_NOISE = re.compile(r"^error in event listener of type:\s+IMAGE_LOAD_ERROR TypeError: handler is not a function")
#: OHIF's first-visit tour of /viewer would cover the viewport
_NO_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"


@dataclass
class PageLog:
    """What one page said: console messages, page errors, requests it tried outside its origin."""

    console: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """Page errors, console errors, and any console message reporting an exception.

        Not counted: OHIF 3.13.2's own TypeError in its IMAGE_LOAD_ERROR listener ("handler is
        not a function"), logged now and then when one of cornerstone's progressive image requests
        fails and is retried; an image that really does not load leaves the viewport without
        actors, and then the SR is not drawn and the SC not shown, which the tests check.
        """
        out = [f"pageerror: {e}" for e in self.page_errors]
        out += [f"console.{kind}: {text}" for kind, text in self.console
                if (kind == "error" or _FAILURE_TEXT.search(text)) and not _OHIF_IMAGE_LOAD_NOISE.search(text)]  # fmt: skip
        return out


def new_page(browser: Any, origin: str) -> tuple[Any, PageLog]:
    """A page in a fresh context that only talks to ``origin``, with its :class:`PageLog`."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.add_init_script(_NO_TOUR)
    page = context.new_page()
    log = PageLog()
    page.on("console", lambda m: log.console.append((m.type, m.text)))
    page.on("pageerror", lambda e: log.page_errors.append(str(e)))

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith(origin + "/") or url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            log.blocked.append(url)
            r.abort()

    page.route("**/*", route)
    return page, log


def open_study(page: Any, origin: str, study_uid: str, timeout_ms: float = 60_000) -> None:
    """Open OHIF's viewer on one study; returns when the study browser lists its series and the
    viewport shows the first image (so that opening another series cancels no image request)."""
    page.goto(f"{origin}/viewer?StudyInstanceUIDs={study_uid}", timeout=timeout_ms)
    page.locator("[data-cy=series-description-label]").first.wait_for(timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    while viewport_pixels(page).std() < 5:  # a black pane: not rendered yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"OHIF showed no image of study {study_uid} within {timeout_ms / 1000:.0f} s")
        page.wait_for_timeout(250)


def open_series(page: Any, description: str, timeout_ms: float = 30_000) -> None:
    """Double-click the series with this description in the study browser (loads it into the viewport)."""
    label = page.locator("[data-cy=series-description-label]", has_text=description).first
    label.wait_for(timeout=timeout_ms)
    label.dblclick()


def decline_tracking_prompt(page: Any, timeout_ms: float = 10_000) -> bool:
    """Answer "No" to OHIF's "continue tracking measurements?" prompt (shown for SRs), if it comes."""
    button = page.get_by_role("button", name="No", exact=True)
    try:
        button.first.wait_for(timeout=timeout_ms)
    except Exception:  # no prompt: nothing to decline
        return False
    button.first.click()
    return True


def toggle_study_browser(page: Any, *, open_: bool) -> None:
    """Open or close the left side panel. Closed (as a reader does), the viewport is wide enough for
    the labels OHIF writes right of the image (the image-level result's)."""
    page.locator("[data-cy=side-panel-header-left]").first.click()
    page.locator("[data-cy=studyBrowser-panel]").first.wait_for(state="attached" if open_ else "detached", timeout=10_000)


def wait_for_annotation(page: Any, tracking_uid: str, timeout_ms: float = 30_000) -> None:
    """Wait until OHIF has drawn the SR measurement with this Tracking UID.

    OHIF 3.13.2 sometimes adds the SR's annotations but draws them only at the next render of the
    viewport (a user's first mouse move or resize shows them): when nothing is drawn after a few
    seconds, the viewport is resized once (side panel closed) to trigger that render.
    """
    group = page.locator(f'svg.svg-layer g[data-annotation-uid="{tracking_uid}"]').first
    try:
        group.wait_for(state="attached", timeout=min(8_000, timeout_ms))
        return
    except Exception:  # not drawn yet: resize the viewport
        pass
    if page.locator("[data-cy=studyBrowser-panel]").count():
        toggle_study_browser(page, open_=False)
    group.wait_for(state="attached", timeout=timeout_ms)


def annotation_lines(page: Any, tracking_uid: str, timeout_ms: float = 30_000) -> list[str]:
    """The text lines OHIF drew next to the SR measurement with this Tracking UID (SVG annotation layer)."""
    group = page.locator(f'svg.svg-layer g[data-annotation-uid="{tracking_uid}"]').first
    group.wait_for(state="attached", timeout=timeout_ms)
    return [t.strip() for t in group.locator("tspan").all_text_contents()]


def polylines(page: Any) -> list[np.ndarray]:
    """Every polyline of the viewport's SVG annotation layer, as (n, 2) canvas coordinates."""
    points = page.locator("svg.svg-layer polyline").evaluate_all("els => els.map(e => e.getAttribute('points'))")
    out = []
    for text in points:
        values = [float(v) for v in re.split(r"[\s,]+", text.strip()) if v]
        out.append(np.asarray(values, dtype=float).reshape(-1, 2))
    return out


def viewport_pixels(page: Any) -> np.ndarray:
    """RGB pixels (h, w, 3) of the viewport pane as the browser shows it."""
    from PIL import Image

    png = page.locator("[data-cy=viewport-pane]").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
