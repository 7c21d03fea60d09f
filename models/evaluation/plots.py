"""PNG plots of the evaluation report (matplotlib, Agg canvas, no pyplot global state).

Every ``plot_*`` function writes one PNG and returns its path; :func:`write_plots` writes all
of them for one evaluation (file names in :data:`PLOT_FILES`). Colours in image plots:
ground-truth boxes green, predicted boxes red.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation import metrics
from models.evaluation.predict import ImagePrediction
from models.evaluation.report import FIXED_THRESHOLDS

logger = logging.getLogger(__name__)

_DPI = 100
PLOT_FILES: dict[str, str] = {
    "roc": "roc.png",
    "pr": "precision_recall.png",
    "confusion_0.5": "confusion_t0.50.png",
    "confusion_0.25": "confusion_t0.25.png",
    "confusion_3class": "confusion_3class.png",
    "calibration": "calibration.png",
    "samples": "samples.png",
}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_roc(y_true: Any, scores: Any, path: Path, *, ci: tuple[float, float] | None = None) -> Path:
    """ROC curve with the AUC (and its CI when given) in the legend."""
    fpr, tpr, _ = metrics.roc_curve(y_true, scores)
    auc = metrics.roc_auc(y_true, scores)
    label = f"AUC {auc:.3f}"
    if ci is not None:
        label += f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})"
    fig = _figure(5, 5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr, color="tab:blue", lw=2, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity (FPR)", ylabel="sensitivity (TPR)")
    ax.set_title(f"ROC – pneumonia (n={len(y_true)}, positives={int(np.sum(y_true))})")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pr(y_true: Any, scores: Any, path: Path) -> Path:
    """Precision–recall curve with the average precision and the prevalence baseline."""
    precision, recall, _ = metrics.precision_recall_curve(y_true, scores)
    ap = metrics.average_precision(y_true, scores)
    prevalence = float(np.mean(y_true))
    fig = _figure(5, 5)
    ax = fig.add_subplot(1, 1, 1)
    ax.step(recall, precision, where="post", color="tab:blue", lw=2, label=f"AP {ap:.3f}")
    ax.axhline(prevalence, color="grey", lw=1, ls="--", label=f"prevalence {prevalence:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    ax.set_title("Precision–recall – pneumonia")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str, path: Path) -> Path:
    """Confusion matrix (rows = truth, columns = prediction) with counts in the cells."""
    cm = np.asarray(matrix, dtype=np.int64)
    k = cm.shape[0]
    fig = _figure(2.2 + 1.3 * k, 1.8 + 1.1 * k)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    short = [lab if len(lab) <= 14 else lab[:12] + "…" for lab in labels]
    ax.set_xticks(range(k), short, rotation=20, ha="right")
    ax.set_yticks(range(k), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title)
    thresh = cm.max() / 2.0 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > thresh else "black"
            )
    return _save(fig, path)


def plot_calibration(y_true: Any, scores: Any, path: Path, *, n_bins: int = 10) -> Path:
    """Reliability diagram (uniform bins) with the Brier score, and a histogram of the scores."""
    frac, mean, count = metrics.calibration_curve(y_true, scores, n_bins)
    brier = metrics.brier_score(y_true, scores)
    fig = _figure(5, 6)
    ax = fig.add_subplot(2, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    ax.plot(mean, frac, marker="o", color="tab:blue", label=f"model (Brier {brier:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="fraction positive")
    ax.set_title(f"Calibration – pneumonia ({n_bins} bins)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(2, 1, 2)
    ax2.hist(np.asarray(scores, dtype=float), bins=np.linspace(0, 1, n_bins + 1), color="tab:blue", alpha=0.7)
    ax2.set(xlim=(0, 1), xlabel="predicted probability", ylabel="images")
    return _save(fig, path)


@dataclass(frozen=True)
class SamplePanel:
    """One image of the sample grid."""

    title: str
    #: 2-D display image in [0, 1] (0 = black).
    image: np.ndarray
    #: (x, y, w, h) in the image's own pixel coordinates.
    gt_boxes: tuple[tuple[float, float, float, float], ...] = ()
    #: (x, y, w, h, score)
    pred_boxes: tuple[tuple[float, float, float, float, float], ...] = ()

    def __post_init__(self) -> None:
        if np.asarray(self.image).ndim != 2:
            raise ValueError(f"SamplePanel image must be 2-D, got shape {np.asarray(self.image).shape}")


def plot_sample_grid(panels: Sequence[SamplePanel], path: Path, *, ncols: int = 3, title: str = "") -> Path:
    """Grid of images with ground-truth boxes (green) and predicted boxes (red, with score)."""
    from matplotlib.patches import Rectangle

    n = max(len(panels), 1)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig = _figure(3.2 * ncols, 3.4 * nrows + 0.4)
    for idx in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, idx + 1)
        ax.set_axis_off()
        if idx >= len(panels):
            if not panels and idx == 0:
                ax.text(0.5, 0.5, "no examples", ha="center", va="center")
            continue
        p = panels[idx]
        ax.imshow(np.asarray(p.image), cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
        for x, y, w, h in p.gt_boxes:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", lw=1.5))
        for x, y, w, h, s in p.pred_boxes:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="red", lw=1.2, ls="--"))
            ax.text(x, y, f"{s:.2f}", color="red", fontsize=7, va="bottom")
        ax.set_title(p.title, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------- one evaluation's plots


def _display_image(pred: ImagePrediction, max_side: int = 384) -> tuple[np.ndarray, float]:
    """(display image in [0, 1], scale from source pixels to the display image)."""
    import pydicom

    from models.imaging.dicom_image import load_source_image

    src = load_source_image(pydicom.dcmread(pred.image)).pixels
    step = max(1, int(math.ceil(max(src.shape) / max_side)))
    return src[::step, ::step], 1.0 / step


def _sample_panels(
    predictions: Sequence[ImagePrediction],
    *,
    threshold: float,
    operating_threshold: float | None,
    npz_images: np.ndarray | None,
    per_kind: int = 3,
) -> list[Any]:
    analysed = [p for p in predictions if p.status == "analysed"]
    groups: dict[str, list[ImagePrediction]] = {"TP": [], "FP": [], "FN": [], "TN": []}
    for p in analysed:
        positive = (p.pneumonia_probability or 0.0) >= threshold
        kind = ("TP" if p.target == 1 else "FP") if positive else ("FN" if p.target == 1 else "TN")
        groups[kind].append(p)
    for kind in ("TP", "FP"):  # most confident mistakes / hits first
        groups[kind].sort(key=lambda p: -(p.pneumonia_probability or 0.0))
    for kind in ("FN", "TN"):
        groups[kind].sort(key=lambda p: p.pneumonia_probability or 0.0)
    # up to per_kind each of TP, FP, FN; empty slots are filled with further examples (TN last)
    n_panels = 3 * per_kind
    chosen = [(k, p) for k in ("TP", "FP", "FN") for p in groups[k][:per_kind]]
    rest = [(k, p) for k in ("TP", "FP", "FN") for p in groups[k][per_kind:]] + [
        ("TN", p) for p in groups["TN"]
    ]
    chosen += rest[: max(0, n_panels - len(chosen))]
    order = {"TP": 0, "FP": 1, "FN": 2, "TN": 3}
    chosen.sort(key=lambda kp: order[kp[0]])
    panels = []
    op = operating_threshold if operating_threshold is not None else 0.0
    for kind, p in chosen:
        try:
            if p.image.startswith("npz:") and npz_images is not None:
                img, scale = npz_images[int(p.image.rsplit(":", 1)[1])].astype(np.float32) / 255.0, 1.0
            else:
                img, scale = _display_image(p)
        except Exception as exc:
            logger.warning("sample image unreadable", extra={"image": p.image, "error": str(exc)})
            continue
        gt = tuple(tuple(v * scale for v in b) for b in p.gt_boxes)
        pr = tuple((*(v * scale for v in b[:4]), b[4]) for b in p.pred_boxes if b[4] >= op)
        panels.append(
            SamplePanel(
                title=f"{kind} p={p.pneumonia_probability:.2f} {p.klass or ''}".strip(),
                image=img,
                gt_boxes=gt,  # type: ignore[arg-type]
                pred_boxes=pr,  # type: ignore[arg-type]
            )
        )
    return panels


def write_plots(
    out_dir: Path,
    predictions: Sequence[ImagePrediction],
    report: Mapping[str, Any],
    *,
    npz_images: np.ndarray | None = None,
    sample_images: bool = True,
) -> dict[str, str]:
    """All PNG plots into ``out_dir``; returns ``{plot key: file name}`` of those written.

    ``sample_images=False`` leaves out the grid of sample images (a report that is shared must not
    carry the evaluated radiographs themselves)."""
    out_dir = Path(out_dir)
    written: dict[str, str] = {}
    analysed = [p for p in predictions if p.status == "analysed"]
    cls = report["classification"]
    if cls.get("available"):
        y = np.array([p.target for p in analysed], dtype=np.int64)
        s = np.array([p.pneumonia_probability for p in analysed], dtype=np.float64)
        plot_roc(y, s, out_dir / PLOT_FILES["roc"], ci=tuple(cls["roc_auc_ci95"]))  # type: ignore[arg-type]
        written["roc"] = PLOT_FILES["roc"]
        plot_pr(y, s, out_dir / PLOT_FILES["pr"])
        written["pr"] = PLOT_FILES["pr"]
        for t in FIXED_THRESHOLDS:
            key = f"confusion_{t:g}"
            r = cls["at_threshold"][f"{t:g}"]
            plot_confusion(
                r["confusion_matrix"],
                ["no pneumonia", "pneumonia"],
                f"Pneumonia at threshold {t:g}",
                out_dir / PLOT_FILES[key],
            )
            written[key] = PLOT_FILES[key]
        if cls.get("multiclass"):
            mc = cls["multiclass"]
            plot_confusion(
                mc["confusion_matrix"],
                mc["class_names"],
                "RSNA 3-class (argmax)",
                out_dir / PLOT_FILES["confusion_3class"],
            )
            written["confusion_3class"] = PLOT_FILES["confusion_3class"]
        plot_calibration(y, s, out_dir / PLOT_FILES["calibration"], n_bins=cls["calibration"]["n_bins"])
        written["calibration"] = PLOT_FILES["calibration"]
    if not sample_images:
        return written
    det = report.get("detection")
    panels = _sample_panels(
        predictions,
        threshold=0.5,
        operating_threshold=det["operating_threshold"] if det else None,
        npz_images=npz_images,
    )
    plot_sample_grid(
        panels,
        out_dir / PLOT_FILES["samples"],
        title="TP / FP / FN at 0.5 — truth boxes green, predicted boxes red",
    )
    written["samples"] = PLOT_FILES["samples"]
    return written
