"""Mapping between source-image pixels and model-input pixels (aspect-preserving letterbox).

Coordinates are continuous pixel coordinates with the origin at the top-left corner of the
top-left pixel (``x`` = column axis, ``y`` = row axis), in both spaces; see ``models/findings.py``.

The source image (``rows`` x ``columns``) is resized to ``resized_height`` x ``resized_width``
(about ``scale`` times its size, aspect ratio kept) and placed at (``pad_top``, ``pad_left``)
in a ``model_height`` x ``model_width`` canvas padded with 0. The per-axis scales
``resized / source`` are the exact ones the resize used, so a box maps to the same content.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.findings import BoxMM, checked_spacing

BoxTuple = tuple[float, float, float, float]


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ResizeGeometry:
    """How one source image was placed into the model input (see module docstring)."""

    source_rows: int
    source_columns: int
    model_height: int
    model_width: int
    resized_height: int
    resized_width: int
    pad_top: int
    pad_left: int
    #: (row spacing, column spacing) in mm of the source image, or None.
    pixel_spacing_mm: tuple[float, float] | None = None
    #: "PixelSpacing" | "ImagerPixelSpacing" | None
    spacing_source: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "source_rows",
            "source_columns",
            "model_height",
            "model_width",
            "resized_height",
            "resized_width",
        ):
            _check_int(name, getattr(self, name), 1)
        for name in ("pad_top", "pad_left"):
            _check_int(name, getattr(self, name), 0)
        if self.pad_top + self.resized_height > self.model_height:
            raise ValueError(
                f"pad_top {self.pad_top} + resized_height {self.resized_height} exceeds "
                f"model_height {self.model_height}"
            )
        if self.pad_left + self.resized_width > self.model_width:
            raise ValueError(
                f"pad_left {self.pad_left} + resized_width {self.resized_width} exceeds "
                f"model_width {self.model_width}"
            )
        object.__setattr__(self, "pixel_spacing_mm", checked_spacing(self.pixel_spacing_mm, self.spacing_source))

    # ------------------------------------------------------------------ construction

    @classmethod
    def letterbox(
        cls,
        source_rows: int,
        source_columns: int,
        image_size: tuple[int, int],
        pixel_spacing_mm: tuple[float, float] | None = None,
        spacing_source: str | None = None,
    ) -> ResizeGeometry:
        """Aspect-preserving fit of ``source_rows x source_columns`` into ``image_size = (H, W)``,
        centred (integer padding, any odd pixel goes to the bottom/right)."""
        _check_int("source_rows", source_rows, 1)
        _check_int("source_columns", source_columns, 1)
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
        height, width = (int(v) for v in image_size)
        _check_int("image_size height", height, 1)
        _check_int("image_size width", width, 1)
        scale = min(height / source_rows, width / source_columns)
        resized_h = min(height, max(1, round(source_rows * scale)))
        resized_w = min(width, max(1, round(source_columns * scale)))
        return cls(
            source_rows=source_rows,
            source_columns=source_columns,
            model_height=height,
            model_width=width,
            resized_height=resized_h,
            resized_width=resized_w,
            pad_top=(height - resized_h) // 2,
            pad_left=(width - resized_w) // 2,
            pixel_spacing_mm=pixel_spacing_mm,
            spacing_source=spacing_source,
        )

    # ------------------------------------------------------------------ mapping

    @property
    def scale_y(self) -> float:
        """Model pixels per source pixel along rows."""
        return self.resized_height / self.source_rows

    @property
    def scale_x(self) -> float:
        """Model pixels per source pixel along columns."""
        return self.resized_width / self.source_columns

    def box_to_model(self, x: float, y: float, w: float, h: float) -> BoxTuple:
        """Source-pixel box (x, y, width, height) -> model-input-pixel box."""
        return (
            x * self.scale_x + self.pad_left,
            y * self.scale_y + self.pad_top,
            w * self.scale_x,
            h * self.scale_y,
        )

    def box_to_source(self, x: float, y: float, w: float, h: float) -> BoxTuple:
        """Model-input-pixel box -> source-pixel box (exact inverse of :meth:`box_to_model`, unclipped)."""
        return (
            (x - self.pad_left) / self.scale_x,
            (y - self.pad_top) / self.scale_y,
            w / self.scale_x,
            h / self.scale_y,
        )

    def xyxy_model_to_source(self, x1: float, y1: float, x2: float, y2: float) -> BoxTuple | None:
        """Detector output (corners in model pixels) -> source box clipped to the image; None if empty."""
        x, y, w, h = self.box_to_source(x1, y1, x2 - x1, y2 - y1)
        return self.clip_to_source(x, y, w, h)

    def clip_to_source(self, x: float, y: float, w: float, h: float) -> BoxTuple | None:
        """Clip a source-pixel box to [0, columns] x [0, rows]; None when nothing is left."""
        x1, y1 = max(0.0, float(x)), max(0.0, float(y))
        x2, y2 = min(float(self.source_columns), float(x + w)), min(float(self.source_rows), float(y + h))
        if not (x2 > x1 and y2 > y1):
            return None
        return (x1, y1, x2 - x1, y2 - y1)

    def box_to_mm(self, x: float, y: float, w: float, h: float) -> BoxMM | None:
        """Source-pixel box -> millimetres (column spacing for x/width, row spacing for y/height);
        None when the image has no spacing."""
        if self.pixel_spacing_mm is None or self.spacing_source is None:
            return None
        row_mm, col_mm = self.pixel_spacing_mm
        return BoxMM(
            x=x * col_mm,
            y=y * row_mm,
            width=w * col_mm,
            height=h * row_mm,
            spacing_source=self.spacing_source,
        )
