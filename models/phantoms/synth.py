"""Deterministic synthetic chest X-ray phantoms, written in the RSNA challenge layout.

The phantoms are not real radiographs: they are cheap, fully deterministic images with the
gross anatomy of a frontal chest X-ray (dark lung fields, mediastinum, spine, heart shadow,
ribs, clavicles, domed diaphragm, soft tissue) so that the training, inference and DICOM
plumbing can be exercised end to end without patient data.

Display convention: the image is shown as a radiograph is read (patient facing the viewer),
so the patient's left - and the heart - is on the **image right**.

Box convention (same as :mod:`models.findings` and the RSNA labels): ``(x, y, width, height)``
in continuous pixel coordinates, origin at the top-left corner of the top-left pixel.

Three classes (:data:`models.findings.RSNA_CLASSES`):

* ``Normal`` - anatomy only;
* ``No Lung Opacity / Not Normal`` - cardiomegaly, pleural effusion (blunted costophrenic
  angle), a small nodule and/or a line/tube; no boxes;
* ``Lung Opacity`` - 1-3 (rarely 4) patchy, fuzzy-edged consolidation-like opacities inside
  the lung fields; each box is the tight extent of the visible opacity.

Determinism: every image depends only on (seed, index, size, class fractions); the same
inputs give the same bytes with the same numpy / Pillow (libjpeg) versions on the same CPU
architecture (floating-point library differences could flip single grey levels elsewhere).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.findings import RSNA_CLASSES

log = logging.getLogger(__name__)

NORMAL, NOT_NORMAL, LUNG_OPACITY = RSNA_CLASSES

#: Secondary Capture Image Storage: the SOP class of the RSNA challenge DICOMs.
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
#: Pixel spacing (mm) of a 1024-px phantom; scaled by 1024 / size for other sizes.
PIXEL_SPACING_AT_1024_MM = 0.143
#: Anatomy is rendered at most at this resolution and upsampled (noise is added at full size).
_MAX_WORK_SIZE = 384
#: An opacity pixel counts as visible (inside the box) above this fraction of its core density.
_VISIBLE_FRACTION = 0.2
_JPEG_QUALITY = 95

Box4 = tuple[float, float, float, float]


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Phantom:
    """One synthetic frontal chest radiograph."""

    #: uint8, (size, size), MONOCHROME2 (0 = black = air).
    image: np.ndarray
    #: (x, y, width, height) in pixels; empty unless ``klass`` is Lung Opacity.
    boxes: tuple[Box4, ...]
    klass: str
    view_position: str
    #: Names of the non-opacity abnormalities drawn (``No Lung Opacity / Not Normal`` only).
    abnormalities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.image, np.ndarray) or self.image.dtype != np.uint8 or self.image.ndim != 2:
            raise ValueError(
                f"Phantom image must be a 2-D uint8 array, got {getattr(self.image, 'dtype', type(self.image))!r} "
                f"with shape {getattr(self.image, 'shape', None)!r}"
            )
        if self.klass not in RSNA_CLASSES:
            raise ValueError(f"Phantom klass must be one of {RSNA_CLASSES}, got {self.klass!r}")
        if self.view_position not in ("PA", "AP"):
            raise ValueError(f"Phantom view_position must be 'PA' or 'AP', got {self.view_position!r}")
        boxes = tuple(tuple(float(v) for v in b) for b in self.boxes)
        rows, cols = self.image.shape
        for b in boxes:
            if len(b) != 4:
                raise ValueError(f"a box must be (x, y, width, height), got {b!r}")
            x, y, w, h = b
            if not (w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= cols and y + h <= rows):
                raise ValueError(f"box {b!r} is empty or outside the {rows}x{cols} image")
        if (self.klass == LUNG_OPACITY) != bool(boxes):
            raise ValueError(f"class {self.klass!r} is inconsistent with {len(boxes)} box(es)")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "abnormalities", tuple(self.abnormalities))


@dataclass(frozen=True)
class SyntheticCase:
    """One written case of a synthetic RSNA-layout dataset."""

    patient_id: str
    klass: str
    view_position: str
    boxes: tuple[Box4, ...]
    image_path: Path


@dataclass(frozen=True)
class RsnaDatasetSummary:
    """What :func:`write_rsna_dataset` wrote."""

    out_dir: Path
    n: int
    seed: int
    size: int
    start_index: int
    cases: tuple[SyntheticCase, ...]
    #: class name -> number of images (all three classes present as keys).
    class_counts: MappingProxyType = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cases", tuple(self.cases))
        if len(self.cases) != self.n:
            raise ValueError(f"summary lists {len(self.cases)} cases for n={self.n!r}")
        counts = {k: 0 for k in RSNA_CLASSES}
        for c in self.cases:
            counts[c.klass] += 1
        object.__setattr__(self, "class_counts", MappingProxyType(counts))

    @property
    def patient_ids(self) -> tuple[str, ...]:
        return tuple(c.patient_id for c in self.cases)

    @property
    def n_boxes(self) -> int:
        return sum(len(c.boxes) for c in self.cases)

    @property
    def labels_csv(self) -> Path:
        return self.out_dir / "stage_2_train_labels.csv"

    @property
    def class_info_csv(self) -> Path:
        return self.out_dir / "stage_2_detailed_class_info.csv"

    @property
    def images_dir(self) -> Path:
        return self.out_dir / "stage_2_train_images"


# --------------------------------------------------------------------------- small helpers


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 (x <= e0) to 1 (x >= e1); e1 < e0 gives a falling step."""
    t = np.subtract(x, np.float32(e0), dtype=np.float32)
    t *= np.float32(1.0 / (e1 - e0))
    np.clip(t, 0.0, 1.0, out=t)
    out = np.float32(3.0) - np.float32(2.0) * t
    out *= t
    out *= t
    return out


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float array to (rows, cols) (pixel-centre aligned, like PIL)."""
    if a.shape == shape:
        return a.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.array(img.resize((shape[1], shape[0]), Image.Resampling.BICUBIC), dtype=np.float32)


def _lowpass_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1] with ``cells`` features across the larger side."""
    cells = max(2, int(cells))
    ratio = shape[0] / shape[1]
    coarse = rng.standard_normal((max(2, round(cells * ratio)) + 2, cells + 2)).astype(np.float32)
    return _resize(coarse, shape) / 1.2


def _ellipse_field(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float,
                   angle: float = 0.0, power: float = 2.0) -> np.ndarray:
    """Superellipse 'radius' (1 on the boundary, < 1 inside)."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    u = (c * dx + s * dy) / ax
    v = (-s * dx + c * dy) / ay
    return (np.abs(u) ** power + np.abs(v) ** power) ** (1.0 / power)


# --------------------------------------------------------------------------- anatomy


@dataclass
class _Anatomy:
    atten: np.ndarray        # float32 display-like intensity (0 air .. ~1 bone) at work resolution
    lung_visible: np.ndarray  # soft mask of the lung fields not hidden by heart/mediastinum/diaphragm
    lungs: tuple[np.ndarray, np.ndarray]  # soft masks of the image-left and image-right lung
    x: np.ndarray            # anatomy coordinates (after the random pose), about [-1, 1]
    y: np.ndarray
    params: dict[str, Any]


def _blend(a: np.ndarray, mask: np.ndarray, level: np.ndarray | float) -> np.ndarray:
    return a * (1.0 - mask) + mask * level


def _render_anatomy(rng: np.random.Generator, work: int, view: str, heart_scale: float) -> _Anatomy:
    """Render the normal anatomy at ``work`` x ``work`` pixels (anatomy coordinates about [-1, 1])."""
    # -- pose: image pixel centre -> anatomy coordinates (rotation, scale, shift of the whole body)
    px = (np.arange(work, dtype=np.float32) + 0.5) / work * 2.0 - 1.0
    gx, gy = np.meshgrid(px, px)
    angle = math.radians(rng.normal(0.0, 2.0))
    scale = rng.uniform(0.9, 1.05) * (1.04 if view == "AP" else 1.0)
    shift_x, shift_y = rng.normal(0.0, 0.03), rng.normal(0.03, 0.03)
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = gx - shift_x, gy - shift_y
    x = ((c * dx + s * dy) / scale).astype(np.float32)
    y = ((-s * dx + c * dy) / scale).astype(np.float32)
    ax = np.abs(x)
    soft = 3.0 / work

    # -- soft tissue: neck, sloping shoulders, chest wall, arms
    half_w = rng.uniform(0.84, 0.94)
    neck = rng.uniform(0.17, 0.23)
    shoulder_y = rng.uniform(-0.86, -0.74)
    rel = np.clip((ax - neck) / (half_w - neck), 0.0, 1.0)
    shoulder_top = np.where(ax < neck, -2.0, shoulder_y - 0.06 + 0.16 * rel ** 1.6)
    wall = half_w - 0.05 * (y - 0.1).clip(0, None) ** 2
    torso = _smoothstep(0.0, 0.035, wall - ax) * _smoothstep(0.0, 0.06, y - shoulder_top)
    arm_in = half_w + rng.uniform(0.02, 0.05)
    arms = (_smoothstep(0.0, 0.03, ax - arm_in) * _smoothstep(0.0, 0.06, y - (shoulder_y + 0.12))
            * _smoothstep(0.0, 0.05, arm_in + 0.3 - ax))
    tissue = (0.4 + 0.1 * (1.0 - (ax / half_w) ** 2).clip(0, 1) + 0.08 * _smoothstep(0.0, 0.9, y)
              + _lowpass_noise(rng, (work, work), 6) * 0.02)
    atten = 0.04 + torso * tissue + arms * 0.36 * (1.0 - torso)

    # -- lungs (image-left = patient's right lung, whose hemidiaphragm is a little higher)
    lung_top = shoulder_y + rng.uniform(0.04, 0.1)
    dome_r = rng.uniform(0.36, 0.48)
    dome_l = dome_r + rng.uniform(0.02, 0.07)
    lat = half_w - rng.uniform(0.05, 0.09)
    med = rng.uniform(0.07, 0.1)
    lungs: list[np.ndarray] = []
    dia = np.empty_like(x)
    for side, base in ((-1.0, dome_r), (1.0, dome_l)):
        xs = x * side
        t = np.clip((y - lung_top) / (base + 0.1 - lung_top), 0.0, 1.0)
        lateral_edge = med + 0.03 + (lat - med - 0.03) * (1.0 - (1.0 - t) ** 1.9) ** (1.0 / 1.9)
        medial_edge = med + 0.07 * (1.0 - t) ** 3
        cx, half = (med + lat) / 2.0, (lat - med) / 2.0
        u = (xs - cx) / half
        dome = base - 0.1 * (1.0 - u ** 2).clip(0, None) + 0.12 * u.clip(0, None) ** 3
        dia = np.where(xs > 0, dome, dia)
        lung = (_smoothstep(-soft, soft, lateral_edge - xs) * _smoothstep(-soft, soft, xs - medial_edge)
                * _smoothstep(-soft, soft, dome - y) * _smoothstep(lung_top - 0.01, lung_top + 0.05, y))
        lungs.append(lung.astype(np.float32))
    lung_any = np.maximum(lungs[0], lungs[1])
    # vascular markings: ridge lines of smooth noise, denser towards the hila
    n1 = _lowpass_noise(rng, (work, work), 40)
    wobble = _lowpass_noise(rng, (work, work), 10)
    theta = np.arctan2(y + 0.02, ax - 0.12)
    rad = np.sqrt((ax - 0.12) ** 2 + (y + 0.02) ** 2)
    fan = np.abs(np.sin(9.0 * theta + 1.5 * wobble + 3.0 * rad))
    ridges = (_smoothstep(0.85, 1.0, 1.0 - fan) * np.exp(-rad / 0.45)
              + 0.5 * _smoothstep(0.82, 1.0, 1.0 - np.abs(n1)) * np.exp(-rad / 0.6))
    hilar = np.exp(-(((ax - 0.2) / 0.3) ** 2 + ((y - 0.0) / 0.5) ** 2))
    hila = np.exp(-(((ax - 0.19) / 0.07) ** 2 + ((y + 0.02) / 0.12) ** 2))
    depth = rng.uniform(0.27, 0.35)
    lucency = depth * (0.85 + 0.2 * _smoothstep(0.2, 0.8, ax) + 0.05 * _smoothstep(0.3, -0.4, y))
    atten = atten - lung_any * (lucency - 0.07 * ridges * (0.35 + hilar) - 0.12 * hila
                                - 0.015 * _lowpass_noise(rng, (work, work), 90))

    # -- mediastinum and heart (the heart bulges to the image right = patient's left)
    med_w = med + 0.03 + 0.03 * _smoothstep(-0.6, 0.0, y)
    mediast = _smoothstep(-0.02, 0.02, med_w - ax) * _smoothstep(lung_top - 0.2, lung_top + 0.05, y)
    atten = _blend(atten, mediast, 0.74 + 0.04 * _smoothstep(-0.5, 0.3, y))
    heart_scale = heart_scale * (1.12 if view == "AP" else 1.0) * rng.uniform(0.93, 1.07)
    h_ax = 0.31 * heart_scale
    h_ay = 0.34 * min(heart_scale, 1.25)
    h_cx = 0.09 + 0.6 * (h_ax - 0.31) + rng.normal(0.0, 0.012)
    h_cy = min(dome_r, dome_l) + 0.02
    heart_r = _ellipse_field(x, y, h_cx, h_cy, h_ax, h_ay, angle=math.radians(rng.uniform(-25, -12)), power=2.2)
    heart = _smoothstep(-0.04, 0.04, 1.0 - heart_r) * _smoothstep(0.03, -0.01, y - dia)
    atten = _blend(atten, heart, 0.72 + 0.04 * lung_any)
    knob_r = _ellipse_field(x, y, med + 0.05, lung_top + 0.3, 0.06, 0.07)
    knob = _smoothstep(-0.1, 0.25, 1.0 - knob_r) * (1.0 - heart)
    atten = _blend(atten, knob, 0.68)

    # -- diaphragm and abdomen (liver under the image-left dome, gastric bubble under the right)
    below = _smoothstep(0.0, 0.025, y - dia) * torso
    atten = _blend(atten, below, 0.68 + 0.05 * _smoothstep(0.0, 0.6, y - dia)
                   + 0.02 * _lowpass_noise(rng, (work, work), 5))
    if rng.uniform() < 0.7:
        bub = _ellipse_field(x, y, rng.uniform(0.28, 0.45), dome_l + rng.uniform(0.08, 0.12), 0.1, 0.045)
        atten = atten - 0.2 * _smoothstep(-0.05, 0.15, 1.0 - bub) * below

    # -- spine (vertebral bodies and pedicles), trachea
    spacing = rng.uniform(0.105, 0.125)
    phase0 = rng.uniform(0.0, 1.0)
    spine = _smoothstep(-0.01, 0.01, 0.07 - ax)
    vert = 0.5 + 0.5 * np.cos(2.0 * math.pi * (y / (spacing * 0.9) + phase0))
    pedicle = np.exp(-(((ax - 0.05) / 0.014) ** 2)) * _smoothstep(0.55, 0.9, vert)
    spine_w = 0.6 + 0.4 * _smoothstep(lung_top + 0.2, lung_top - 0.1, y)  # clearer in the neck
    atten = atten + spine * spine_w * (0.04 + 0.03 * _smoothstep(0.2, 0.8, vert)) + 0.035 * pedicle * spine_w
    trachea = (_smoothstep(-0.01, 0.01, 0.032 - np.abs(x - 0.005))
               * _smoothstep(lung_top + 0.3, lung_top + 0.22, y))
    atten = atten - 0.16 * trachea

    # -- ribs: posterior (stronger, spacing widening downward) and anterior (faint), over the thorax
    thorax = (_smoothstep(-0.02, 0.02, lat + 0.05 - ax) * _smoothstep(lung_top - 0.1, lung_top, y)
              * _smoothstep(-0.02, 0.04, np.maximum(dome_l, dome_r) + 0.1 - y))
    post = (y - (-0.15 * ax + 0.5 * ax ** 2) - lung_top + 0.1).clip(0, None)
    post_p = post ** 0.88 / spacing + phase0
    frac = post_p - np.floor(post_p)
    rib = _smoothstep(0.0, 0.08, frac) * _smoothstep(0.5, 0.42, frac)
    cortex = np.exp(-((frac - 0.05) / 0.035) ** 2) + np.exp(-((frac - 0.46) / 0.035) ** 2)
    post_ribs = (rib * 0.7 + 0.5 * cortex) * _smoothstep(0.06, 0.14, ax) * thorax
    ant = y - 0.5 * (lat - ax).clip(0, None)
    ant_p = ant / (spacing * 1.45) + rng.uniform(0.0, 1.0)
    afr = ant_p - np.floor(ant_p)
    ant_ribs = _smoothstep(0.0, 0.1, afr) * _smoothstep(0.35, 0.25, afr) * _smoothstep(0.25, 0.4, ax) * thorax
    see_through = 1.0 - 0.6 * np.maximum(heart, mediast)
    atten = atten + (rng.uniform(0.055, 0.085) * post_ribs + 0.035 * ant_ribs) * see_through

    # -- clavicles (from the sternal notch up and out towards the shoulders)
    clav_y = lung_top + rng.uniform(0.03, 0.08)
    for side in (-1.0, 1.0):
        xs = x * side
        cy = clav_y + 0.05 - 0.2 * (xs - 0.08) + 0.22 * (xs - 0.32) ** 2
        d = np.abs(y - cy) / 0.026
        clav = np.exp(-(d ** 4)) * _smoothstep(0.06, 0.11, xs) * _smoothstep(0.0, 0.05, half_w - 0.12 - xs)
        atten = atten + 0.13 * clav * (1.0 + 0.3 * np.exp(-((d - 0.9) / 0.2) ** 2))

    hidden = np.maximum(np.maximum(heart, mediast), np.maximum(below, knob))
    lung_visible = (lung_any * (1.0 - hidden)).astype(np.float32)
    params = dict(lung_top=lung_top, dome_r=dome_r, dome_l=dome_l, lat=lat, med=med, half_w=half_w,
                  heart=(h_cx, h_cy, h_ax, h_ay), depth=depth, scale=scale, rot=(c, s), shift=(shift_x, shift_y))
    return _Anatomy(atten.astype(np.float32), lung_visible, (lungs[0], lungs[1]), x, y, params)


def _anatomy_to_pixel(anat: _Anatomy, ax_: float, ay_: float, work: int) -> tuple[float, float]:
    """Anatomy coordinates -> work-image pixel coordinates (continuous)."""
    c, s = anat.params["rot"]
    scale = anat.params["scale"]
    sx, sy = anat.params["shift"]
    u, v = ax_ * scale, ay_ * scale
    gx = c * u - s * v + sx
    gy = s * u + c * v + sy
    return (gx + 1.0) / 2.0 * work, (gy + 1.0) / 2.0 * work


# --------------------------------------------------------------------------- abnormalities


def _add_effusion(rng: np.random.Generator, anat: _Anatomy, atten: np.ndarray) -> None:
    """Pleural effusion: a meniscus-shaped density filling one costophrenic angle."""
    side = rng.choice([-1.0, 1.0])
    lung = anat.lungs[0 if side < 0 else 1]
    base = anat.params["dome_r" if side < 0 else "dome_l"]
    lat = anat.params["lat"]
    x, y = anat.x, anat.y
    level = base - rng.uniform(0.16, 0.34)
    # meniscus: higher laterally
    surface = level + 0.3 * (1.0 - (x * side / lat).clip(0, 1)) ** 2.5
    eff = _smoothstep(-0.03, 0.05, y - surface) * lung * anat.lung_visible
    atten += eff * (anat.params["depth"] * rng.uniform(0.75, 0.95))


def _add_nodule(rng: np.random.Generator, anat: _Anatomy, atten: np.ndarray, work: int) -> None:
    """A small well-defined round nodule somewhere in the visible lung."""
    ys, xs = np.nonzero(anat.lung_visible > 0.9)
    if xs.size == 0:
        return
    i = int(rng.integers(xs.size))
    r = rng.uniform(0.012, 0.025) * work
    yy, xx = np.ogrid[:work, :work]
    d = np.sqrt((xx + 0.5 - xs[i] - 0.5) ** 2 + (yy + 0.5 - ys[i] - 0.5) ** 2) / r
    atten += rng.uniform(0.12, 0.22) * _smoothstep(-0.15, 0.15, 1.0 - d).astype(np.float32)


def _add_line(rng: np.random.Generator, anat: _Anatomy, atten: np.ndarray, work: int) -> None:
    """A line/tube: a central venous catheter curving down into the mediastinum, or an ET tube."""
    t = np.linspace(0.0, 1.0, 400)
    if rng.uniform() < 0.5:  # central line from the (image-left/right) subclavian region
        side = rng.choice([-1.0, 1.0])
        x0, y0 = side * rng.uniform(0.45, 0.6), anat.params["lung_top"] + 0.05
        x1, y1 = rng.uniform(-0.02, 0.06), anat.params["lung_top"] + rng.uniform(0.45, 0.6)
        xc = x0 + (x1 - x0) * np.sin(t * math.pi / 2)
        yc = y0 + (y1 - y0) * t ** 1.5
    else:  # endotracheal tube in the trachea
        xc = np.full_like(t, 0.01) + rng.normal(0, 0.01)
        yc = -1.05 + t * (anat.params["lung_top"] + rng.uniform(0.15, 0.3) + 1.05)
    pts = [_anatomy_to_pixel(anat, float(a), float(b), work) for a, b in zip(xc[::8], yc[::8], strict=True)]
    img = Image.new("L", (work, work), 0)
    ImageDraw.Draw(img).line(pts, fill=255, width=max(2, round(work / 160)), joint="curve")
    img = img.filter(ImageFilter.GaussianBlur(0.7))
    atten += 0.3 * np.asarray(img, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------- opacities


def _draw_box_size(rng: np.random.Generator) -> tuple[float, float]:
    """Window (width, height) as fractions of the image side.

    The visible opacity (its box) fills about 80 % of the window in each direction, so boxes
    come out RSNA-like: median about 210 x 320 px at 1024, width ~100-350, height ~120-500.
    """
    w = float(np.clip(rng.lognormal(math.log(265 / 1024), 0.28), 125 / 1024, 430 / 1024))
    h = float(np.clip(rng.lognormal(math.log(400 / 1024), 0.3), 150 / 1024, 600 / 1024))
    return w, h


def _opacity_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Patchy consolidation filling most of a (rows, cols) window, 0 (none) .. ~1 (dense core).

    An ellipse with a noisy, fuzzy outline, a lumpy interior (a sum of smoothed random blobs)
    and a few satellite blobs; it fades to 0 before the window edges.
    """
    rows, cols = shape
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    yy = (yy + 0.5) / rows * 2 - 1
    xx = (xx + 0.5) / cols * 2 - 1
    r = np.sqrt(xx ** 2 + yy ** 2) / 0.86
    r = r * (1.0 + 0.22 * _lowpass_noise(rng, shape, 4) + 0.08 * _lowpass_noise(rng, shape, 9))
    core = _smoothstep(1.0, 0.55, r)
    lumps = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6)
        sx, sy = rng.uniform(0.15, 0.35), rng.uniform(0.15, 0.35)
        lumps += rng.uniform(0.3, 0.8) * np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
    patch = 0.55 + 0.3 * _smoothstep(-0.6, 0.7, _lowpass_noise(rng, shape, 8)) + 0.15 * _lowpass_noise(rng, shape, 16)
    dens = np.clip(core * patch + 0.5 * np.clip(lumps, 0, 1) * _smoothstep(1.25, 0.8, r), 0.0, 1.0)
    edge = _smoothstep(0.0, 0.1, 1.0 - np.abs(xx)) * _smoothstep(0.0, 0.1, 1.0 - np.abs(yy))
    return (dens * edge).astype(np.float32)


@dataclass
class _Opacity:
    window: tuple[int, int, int, int]  # work-resolution (x0, y0, x1, y1)
    density: np.ndarray  # work-resolution field within the window, 0..1, already masked by the lung
    amplitude: float


def _place_opacities(rng: np.random.Generator, anat: _Anatomy, work: int) -> list[_Opacity]:
    """1-3 (rarely 4) opacities inside the visible lung fields, not overlapping each other."""
    n = int(rng.choice([1, 2, 3, 4], p=[0.42, 0.5, 0.06, 0.02]))
    first_side = int(rng.integers(2))
    out: list[_Opacity] = []
    taken: list[tuple[int, int, int, int]] = []  # visible extents (x0, y0, x1, y1), work pixels
    for k in range(n):
        side = (first_side + k) % 2
        region = anat.lungs[side] * anat.lung_visible
        ys, xs = np.nonzero(region > 0.95)
        if xs.size == 0:
            continue
        for _attempt in range(15):
            wf, hf = _draw_box_size(rng)
            w = max(8, round(wf * work))
            h = max(8, round(hf * work))
            i = int(rng.integers(xs.size))
            x0 = int(np.clip(xs[i] - w // 2, 0, work - w))
            y0 = int(np.clip(ys[i] - h // 2, 0, work - h))
            dens = _opacity_field(rng, (h, w)) * region[y0:y0 + h, x0:x0 + w]
            visible = dens > _VISIBLE_FRACTION
            # most of the drawn opacity must fall inside the lung, its box clear of earlier boxes
            if visible.sum() < 0.4 * w * h:
                continue
            cols, rows = np.flatnonzero(visible.any(axis=0)), np.flatnonzero(visible.any(axis=1))
            ext = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
            gap = max(2, work // 64)
            if any(ext[0] < t[2] + gap and t[0] < ext[2] + gap and ext[1] < t[3] + gap and t[1] < ext[3] + gap
                   for t in taken):
                continue
            amp = float(rng.uniform(0.09, 0.18) if rng.uniform() < 0.4 else rng.uniform(0.18, 0.32))
            taken.append(ext)
            out.append(_Opacity((x0, y0, x0 + w, y0 + h), dens.astype(np.float32), amp))
            break
    if not out:  # rare: a small lung field; put a modest opacity at the centre of the larger lung
        side = int(np.argmax([float((lg * anat.lung_visible).sum()) for lg in anat.lungs]))
        region = anat.lungs[side] * anat.lung_visible
        ys, xs = np.nonzero(region > 0.5)
        cy, cx = int(np.median(ys)), int(np.median(xs))
        w, h = max(8, work // 7), max(8, work // 5)
        x0, y0 = int(np.clip(cx - w // 2, 0, work - w)), int(np.clip(cy - h // 2, 0, work - h))
        dens = _opacity_field(rng, (h, w)) * region[y0:y0 + h, x0:x0 + w]
        out.append(_Opacity((x0, y0, x0 + w, y0 + h), dens.astype(np.float32), 0.25))
    return out


def _box_at_full_size(op: _Opacity, work: int, size: int) -> Box4 | None:
    """Tight extent, in whole full-size pixels, of the visible part of an opacity.

    The opacity is resampled to full size exactly as the image is, so the box is the bounding
    box of the pixels where it is visible (density above ``_VISIBLE_FRACTION`` of its core).
    """
    x0, y0, x1, y1 = op.window
    if size == work:
        dens, ox, oy = op.density, x0, y0
    else:
        canvas = np.zeros((work, work), dtype=np.float32)
        canvas[y0:y1, x0:x1] = op.density
        full = _resize(canvas, (size, size))
        f = size / work
        ox, oy = max(0, math.floor(x0 * f) - 4), max(0, math.floor(y0 * f) - 4)
        dens = full[oy:min(size, math.ceil(y1 * f) + 4), ox:min(size, math.ceil(x1 * f) + 4)]
    vis = dens > _VISIBLE_FRACTION
    cols = np.flatnonzero(vis.any(axis=0))
    rows = np.flatnonzero(vis.any(axis=1))
    if cols.size == 0:
        return None
    return (float(ox + cols[0]), float(oy + rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))


# --------------------------------------------------------------------------- public: phantoms


#: Non-opacity abnormalities of the "No Lung Opacity / Not Normal" class.
ABNORMALITIES: tuple[str, ...] = ("cardiomegaly", "effusion", "nodule", "line")


def make_phantom(rng: np.random.Generator, *, size: int = 1024, kind: str,
                 view_position: str | None = None, render_opacity: bool = True,
                 abnormalities: Sequence[str] | None = None) -> Phantom:
    """Render one synthetic frontal CXR of class ``kind`` (one of ``RSNA_CLASSES``).

    ``view_position`` ("PA"/"AP") is drawn from ``rng`` when None (AP more often for sicker classes).
    ``render_opacity=False`` draws exactly the same random numbers and returns the same image
    and boxes, only without the opacities painted in (for tests of the boxes).
    ``abnormalities`` (only for ``No Lung Opacity / Not Normal``; names from ``ABNORMALITIES``)
    forces which ones are drawn; by default 1 or 2 are drawn at random.
    """
    if kind not in RSNA_CLASSES:
        raise ValueError(f"kind must be one of {RSNA_CLASSES}, got {kind!r}")
    if not isinstance(size, (int, np.integer)) or size < 64:
        raise ValueError(f"size must be an integer >= 64, got {size!r}")
    p_ap = {NORMAL: 0.3, NOT_NORMAL: 0.5, LUNG_OPACITY: 0.7}[kind]
    ap_draw = rng.uniform()
    if view_position is None:
        view_position = "AP" if ap_draw < p_ap else "PA"
    elif view_position not in ("PA", "AP"):
        raise ValueError(f"view_position must be 'PA' or 'AP', got {view_position!r}")
    work = int(min(size, _MAX_WORK_SIZE))

    if abnormalities is not None:
        unknown = [a for a in abnormalities if a not in ABNORMALITIES]
        if kind != NOT_NORMAL or unknown or not abnormalities:
            raise ValueError(f"abnormalities must be a non-empty subset of {ABNORMALITIES} for kind "
                             f"{NOT_NORMAL!r}, got {tuple(abnormalities)!r} for kind {kind!r}")
    drawn: list[str] = []
    heart_scale = 1.0
    if kind == NOT_NORMAL:
        k = int(rng.choice([1, 2], p=[0.7, 0.3]))
        drawn = rng.choice(list(ABNORMALITIES), size=k, replace=False).tolist()
        if abnormalities is not None:
            drawn = list(abnormalities)
        drawn = sorted(set(drawn), key=ABNORMALITIES.index)
        if "cardiomegaly" in drawn:
            heart_scale = rng.uniform(1.3, 1.55)

    # the abnormalities draw from their own stream, so that adding one changes nothing else
    abn_rng = np.random.default_rng(int(rng.integers(2**63)))
    anat = _render_anatomy(rng, work, view_position, heart_scale)
    atten = anat.atten
    if "effusion" in drawn:
        _add_effusion(abn_rng, anat, atten)
    if "nodule" in drawn:
        _add_nodule(abn_rng, anat, atten, work)
    if "line" in drawn:
        _add_line(abn_rng, anat, atten, work)
    # ECG electrodes on some images of every class (not a finding)
    if rng.uniform() < 0.2:
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.15, 0.85) * work, rng.uniform(0.1, 0.7) * work
            yy, xx = np.ogrid[:work, :work]
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / (0.018 * work)
            atten += 0.12 * _smoothstep(-0.1, 0.1, 1 - d) * (1 - 0.5 * _smoothstep(-0.1, 0.1, 0.5 - d))

    boxes: list[Box4] = []
    if kind == LUNG_OPACITY:
        ops = _place_opacities(rng, anat, work)
        for op in ops:
            box = _box_at_full_size(op, work, size)
            if box is None:
                continue
            boxes.append(box)
            if render_opacity:
                x0, y0, x1, y1 = op.window
                atten[y0:y1, x0:x1] += op.amplitude * op.density

    # -- exposure / tone variation (pointwise, so done at work size), then full size + noise
    contrast = rng.uniform(0.85, 1.2)
    brightness = rng.normal(0.0, 0.04)
    gamma = rng.uniform(0.85, 1.2)
    intensity = np.clip((atten - 0.45) * contrast + 0.45 + brightness, 0.0, None)
    knee = 0.85
    intensity = np.where(intensity > knee, knee + 0.15 * np.tanh((intensity - knee) / 0.15), intensity)
    intensity = np.clip(intensity, 0.0, 1.0) ** gamma
    ramp = np.linspace(-1.0, 1.0, work, dtype=np.float32)  # heel effect / uneven exposure
    intensity = intensity * (1.0 + rng.normal(0, 0.03) * ramp[None, :] + rng.normal(0, 0.03) * ramp[:, None])
    noise_sd = rng.uniform(0.006, 0.02)
    lo, hi = rng.uniform(0.0, 0.05), rng.uniform(0.92, 1.0)
    img = _resize(((lo + (hi - lo) * np.clip(intensity, 0.0, 1.0)) * 255.0).astype(np.float32), (size, size))
    noise = rng.standard_normal((size, size), dtype=np.float32)
    noise *= np.float32((hi - lo) * 255.0 * noise_sd)
    img += noise
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    image = img.astype(np.uint8)
    return Phantom(image=image, boxes=tuple(boxes), klass=kind, view_position=view_position,
                   abnormalities=tuple(drawn))


# --------------------------------------------------------------------------- public: RSNA layout


def patient_id_for(seed: int, index: int) -> str:
    """Deterministic uuid-like RSNA ``patientId`` of image ``index`` of dataset ``seed``."""
    digest = hashlib.sha256(f"cxr-ai-node synth patient {int(seed)} {int(index)}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def class_for_index(seed: int, index: int, class_fractions: Sequence[float] = (0.4, 0.3, 0.3)) -> str:
    """Class of image ``index``: a golden-ratio sequence, so any run of indices has ~the fractions."""
    fr = _check_fractions(class_fractions)
    start = int.from_bytes(hashlib.sha256(f"class {int(seed)}".encode()).digest()[:8], "big") / 2.0 ** 64
    u = (start + index * 0.6180339887498949) % 1.0
    cum = np.cumsum(fr)
    return RSNA_CLASSES[min(int(np.searchsorted(cum, u, side="right")), 2)]


def _check_fractions(class_fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in class_fractions)
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"class_fractions must be 3 non-negative numbers summing to 1 (order {RSNA_CLASSES}), "
                         f"got {class_fractions!r}")
    return fr  # type: ignore[return-value]


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of dataset ``seed`` (independent of the other images)."""
    return np.random.default_rng([int(seed), int(index), 0x5C5])


def phantom_for_index(seed: int, index: int, *, size: int = 1024,
                      class_fractions: Sequence[float] = (0.4, 0.3, 0.3),
                      render_opacity: bool = True) -> Phantom:
    """The phantom that :func:`write_rsna_dataset` writes for image ``index`` of dataset ``seed``."""
    return make_phantom(case_rng(seed, index), size=size, kind=class_for_index(seed, index, class_fractions),
                        render_opacity=render_opacity)


def _uid(*parts: object) -> str:
    """Deterministic ``2.25.<UUID as integer>`` UID (``generate_uid(prefix=None)`` ignores its entropy)."""
    text = "\x1f".join(["cxr-ai-node synth", *map(str, parts)])
    digest = hashlib.sha256(text.encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def encode_jpeg_baseline(image: np.ndarray, quality: int = _JPEG_QUALITY) -> bytes:
    """Encode a 2-D uint8 image as a baseline (8-bit, Huffman, 4:4:4 grey) JPEG frame."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"need a 2-D uint8 image, got {image.dtype} {image.shape}")
    buf = BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="JPEG", quality=quality, optimize=False,
                                          progressive=False)
    return buf.getvalue()


def phantom_dataset(phantom: Phantom, *, patient_id: str, seed: int, index: int,
                    sex: str, age: int) -> Any:
    """A pydicom ``FileDataset`` like the RSNA challenge files (SC, JPEG Baseline, MONOCHROME2)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, JPEGBaseline8Bit

    rows, cols = phantom.image.shape
    sop_uid = _uid("sop", seed, index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SC_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CXR_AI_NODE_SYN"

    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)  # type: ignore[arg-type]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SC_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    # fixed synthetic date/time: same bytes every run
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {phantom.view_position}"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.PatientAge = f"{int(age):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = phantom.view_position
    ds.StudyInstanceUID = _uid("study", seed, index)
    ds.SeriesInstanceUID = _uid("series", seed, index)
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    spacing = round(PIXEL_SPACING_AT_1024_MM * 1024 / cols, 6)
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([encode_jpeg_baseline(phantom.image)])
    ds["PixelData"].VR = "OB"
    return ds


def write_rsna_dataset(out_dir: Path, n: int, seed: int, *, size: int = 1024,
                       class_fractions: Sequence[float] = (0.4, 0.3, 0.3),
                       start_index: int = 0) -> RsnaDatasetSummary:
    """Write ``n`` phantoms (indices ``start_index`` .. ``start_index + n - 1``) in RSNA layout.

    ``out_dir/stage_2_train_images/<patientId>.dcm``, ``out_dir/stage_2_train_labels.csv`` and
    ``out_dir/stage_2_detailed_class_info.csv`` (both CSVs are overwritten and list exactly these
    ``n`` patients). Every byte depends only on (index, seed, size, class_fractions): a different
    ``start_index`` with the same seed gives disjoint patients (e.g. a held-out test set).
    """
    from pydicom import dcmwrite

    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(start_index, (int, np.integer)) or start_index < 0:
        raise ValueError(f"start_index must be a non-negative integer, got {start_index!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    fractions = _check_fractions(class_fractions)
    out_dir = Path(out_dir)
    images_dir = out_dir / "stage_2_train_images"
    images_dir.mkdir(parents=True, exist_ok=True)
    cases: list[SyntheticCase] = []
    label_rows: list[list[str]] = []
    class_rows: list[list[str]] = []
    for index in range(int(start_index), int(start_index) + int(n)):
        pid = patient_id_for(seed, index)
        kind = class_for_index(seed, index, fractions)
        rng = case_rng(seed, index)
        phantom = make_phantom(rng, size=size, kind=kind)
        sex = "F" if rng.uniform() < 0.45 else "M"
        age = int(np.clip(rng.normal(48, 17), 1, 92))
        ds = phantom_dataset(phantom, patient_id=pid, seed=seed, index=index, sex=sex, age=age)
        path = images_dir / f"{pid}.dcm"
        tmp = path.with_suffix(".dcm.tmp")
        dcmwrite(tmp, ds, enforce_file_format=True)
        tmp.replace(path)
        cases.append(SyntheticCase(pid, kind, phantom.view_position, phantom.boxes, path))
        if phantom.boxes:
            for x, y, w, h in phantom.boxes:
                label_rows.append([pid, _fmt(x), _fmt(y), _fmt(w), _fmt(h), "1"])
                class_rows.append([pid, kind])
        else:
            label_rows.append([pid, "", "", "", "", "0"])
            class_rows.append([pid, kind])
    _write_csv(out_dir / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], label_rows)
    _write_csv(out_dir / "stage_2_detailed_class_info.csv", ["patientId", "class"], class_rows)
    summary = RsnaDatasetSummary(out_dir=out_dir, n=int(n), seed=int(seed), size=int(size),
                                 start_index=int(start_index), cases=tuple(cases))
    log.info("wrote synthetic RSNA dataset", extra={"out_dir": str(out_dir), "n": int(n), "seed": int(seed),
                                                    "size": int(size), "n_boxes": summary.n_boxes})
    return summary


def _fmt(v: float) -> str:
    return f"{float(v):.1f}"


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)


# --------------------------------------------------------------------------- public: full-size DX / CR


DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
#: Longer side (mm) of the DX/CR phantoms' detector field: 0.175 mm pixels at 2500 x 2048.
DX_FIELD_MM = 437.5


def dx_phantom_dataset(*, rows: int = 2500, columns: int = 2048, bits: int = 16, seed: int = 0,
                       photometric: str = "MONOCHROME2", transfer_syntax: str = "1.2.840.10008.1.2.1",
                       modality: str = "DX", kind: str = NORMAL, rescale_slope: float = 1.0,
                       rescale_intercept: float = 0.0) -> Any:
    """A detector-size frontal chest DX (or CR) phantom as a pydicom ``FileDataset``.

    ``bits`` is Bits Stored (9..16, Bits Allocated 16; 8 gives 8-bit). MONOCHROME1 stores the
    inverted values, so every photometric interpretation displays the same anatomy. The dataset
    carries Rescale Slope/Intercept, a Window Center/Width that covers the anatomy (in rescaled
    units), ImagerPixelSpacing, PatientOrientation ``L\\F`` and ViewPosition. Compressed transfer
    syntaxes (RLE, JPEG-LS, JPEG 2000 lossless, ...) are encoded with ``Dataset.compress``.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

    if modality not in ("DX", "CR"):
        raise ValueError(f"modality must be 'DX' or 'CR', got {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if not (bits == 8 or 9 <= bits <= 16):
        raise ValueError(f"bits (Bits Stored) must be 8 or 9..16, got {bits!r}")
    if rows < 64 or columns < 64:
        raise ValueError(f"rows/columns must be >= 64, got {rows!r} x {columns!r}")
    if modality == "DX" and (rescale_slope != 1.0 or rescale_intercept != 0.0):
        raise ValueError(f"DX requires Rescale Slope 1 and Intercept 0, got {rescale_slope!r}, {rescale_intercept!r}")
    ts = UID(transfer_syntax)

    # anatomy rendered square (at most 1024 px) and resized to the detector (a slight stretch
    # for a non-square detector, so that no anatomy is cut off)
    rng = np.random.default_rng([int(seed), rows, columns, 0xD7])
    side = int(min(1024, max(rows, columns)))
    phantom = make_phantom(rng, size=side, kind=kind)
    img = _resize(phantom.image.astype(np.float32) / 255.0, (rows, columns))
    max_value = (1 << bits) - 1
    # a DX is not windowed at acquisition: keep headroom and add fine quantum noise at full size
    lo, hi = 0.06 * max_value, 0.9 * max_value
    values = lo + (hi - lo) * np.clip(img, 0.0, 1.0)
    values += rng.standard_normal(values.shape, dtype=np.float32) * (0.002 * max_value)
    stored = np.clip(np.rint(values), 0, max_value)
    display_lo, display_hi = np.percentile(stored, [1.0, 99.5])
    if photometric == "MONOCHROME1":
        stored = max_value - stored
        display_lo, display_hi = max_value - display_hi, max_value - display_lo
    pixels = stored.astype(np.uint8 if bits == 8 else np.uint16)

    sop_class = DX_IMAGE_STORAGE if modality == "DX" else CR_IMAGE_STORAGE
    sop_uid = _uid("dx sop", seed, rows, columns, bits, photometric, modality, kind)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CXR_AI_NODE_SYN"
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)  # type: ignore[arg-type]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "cxr-ai-node synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"Chest {phantom.view_position} (synthetic)"
    pid = f"SYN-DX-{int(seed)}"
    ds.PatientName = pid
    ds.PatientID = pid
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = phantom.view_position
    ds.StudyInstanceUID = _uid("dx study", seed, rows, columns, bits, photometric, modality, kind)
    ds.SeriesInstanceUID = _uid("dx series", seed, rows, columns, bits, photometric, modality, kind)
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = columns
    spacing = round(DX_FIELD_MM / max(rows, columns), 6)
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = f"{rescale_intercept:g}"
    ds.RescaleSlope = f"{rescale_slope:g}"
    ds.RescaleType = "US"
    wc = (display_lo + display_hi) / 2.0 * rescale_slope + rescale_intercept
    ww = max(2.0, (display_hi - display_lo) * abs(rescale_slope))
    ds.WindowCenter = f"{wc:.1f}"
    ds.WindowWidth = f"{ww:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME2" else 1
        ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = DicomSequence([])
        region = pydicom_code("51185008", "SCT", "Chest")
        ds.AnatomicRegionSequence = DicomSequence([region])
    ds.PixelData = pixels.tobytes()
    if ts.is_compressed:
        ds.compress(ts, pixels)
    else:
        meta.TransferSyntaxUID = ts
    return ds


def pydicom_code(value: str, scheme: str, meaning: str) -> Any:
    """A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def write_dx_phantom(path: Path, *, rows: int = 2500, columns: int = 2048, bits: int = 16, seed: int = 0,
                     photometric: str = "MONOCHROME2", transfer_syntax: str = "1.2.840.10008.1.2.1",
                     modality: str = "DX", kind: str = NORMAL) -> Path:
    """Write :func:`dx_phantom_dataset` to ``path`` (DICOM Part 10) and return ``path``."""
    from pydicom import dcmwrite

    ds = dx_phantom_dataset(rows=rows, columns=columns, bits=bits, seed=seed, photometric=photometric,
                            transfer_syntax=transfer_syntax, modality=modality, kind=kind)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path
