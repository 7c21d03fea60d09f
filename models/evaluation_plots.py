"""PNG plots of the evaluation report (matplotlib, Agg canvas, no pyplot global state).

Every function writes one PNG and returns its path. Colours in image plots:
ground-truth boxes green, predicted boxes red.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics

_DPI = 100


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
