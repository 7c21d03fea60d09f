"""Grad-CAM of the classifier, cheaply: the autograd graph starts at the heatmap layer.

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel of a layer's activations by the
spatial mean of the gradient of the class score, sums the channels and keeps the positive
part. It is ``monai.visualize.GradCAM`` computed in the engine's own forward pass:

- :class:`ActivationCapture` hooks the layer (e.g. ``features.denseblock3`` of a DenseNet121)
  and hands its output on as a fresh leaf that requires grad. The weights require no grad, so
  nothing before the layer is recorded and the backward pass only runs through the network's
  tail (a few layers at the coarsest resolutions): a heatmap costs a few milliseconds on a CPU.
- :func:`grad_cam` takes the log-odds of the positive class (its logit against the log-sum-exp
  of the others: the evidence *for* that class, which for two classes is the logit difference)
  and returns one map per requested image, scaled to [0, 1] by its maximum.

The map has the layer's resolution (4 x 4 for a 64 px DenseNet121 input at ``denseblock3``);
the overlay upsamples it smoothly. ``tests/test_heatmap.py`` checks it against MONAI's GradCAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class ActivationCapture:
    """Context manager: while active, ``layer``'s output is captured as a leaf that requires grad.

    Use around a forward pass under ``torch.enable_grad()``; :attr:`activations` then holds the
    layer's output of that pass (``None`` before). Not re-entrant; one forward pass at a time.
    """

    def __init__(self, network: torch.nn.Module, layer: str) -> None:
        modules = dict(network.named_modules())
        if layer not in modules:
            raise ValueError(f"{type(network).__name__} has no module {layer!r}")
        self.layer_name = layer
        self._layer = modules[layer]
        self._handle: Any = None
        self.activations: torch.Tensor | None = None

    def _hook(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        self.activations = leaf
        return leaf

    def __enter__(self) -> ActivationCapture:
        if self._handle is not None:
            raise RuntimeError(f"ActivationCapture of {self.layer_name!r} is already active")
        self.activations = None
        self._handle = self._layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def positive_log_odds(logits: torch.Tensor, positive_index: int) -> torch.Tensor:
    """Per image, ``logit[positive] - logsumexp(logits of the other classes)`` = log(p / (1 - p))."""
    if logits.ndim != 2 or not 0 <= positive_index < logits.shape[1] or logits.shape[1] < 2:
        raise ValueError(f"logits must be (B, C >= 2) with positive_index < C, got {tuple(logits.shape)} / {positive_index}")
    others = [c for c in range(logits.shape[1]) if c != positive_index]
    return logits[:, positive_index] - torch.logsumexp(logits[:, others], dim=1)


def grad_cam(
    logits: torch.Tensor, activations: torch.Tensor, positive_index: int, rows: Sequence[int]
) -> list[np.ndarray]:
    """Grad-CAM maps (float32, the layer's ``h x w``, in [0, 1]) of the images ``rows`` of a batch.

    ``logits`` (B, C) must come from a forward pass in which ``activations`` (B, K, h, w) was the
    captured leaf (see :class:`ActivationCapture`). A map with no positive evidence is all zeros.
    """
    rows = [int(r) for r in rows]
    if not rows:
        return []
    if activations.ndim != 4 or activations.shape[0] != logits.shape[0]:
        raise ValueError(f"activations must be (B, K, h, w) for B={logits.shape[0]}, got {tuple(activations.shape)}")
    score = positive_log_odds(logits.float(), positive_index)[rows].sum()
    (grads,) = torch.autograd.grad(score, activations)
    acts = activations.detach()[rows].float()
    weights = grads[rows].float().mean(dim=(2, 3), keepdim=True)
    cams = torch.relu((weights * acts).sum(dim=1))  # (n, h, w)
    peak = cams.amax(dim=(1, 2), keepdim=True)
    cams = torch.where(peak > 0, cams / peak.clamp_min(1e-12), torch.zeros_like(cams))
    return [c.clamp_(0.0, 1.0).cpu().numpy().astype(np.float32) for c in cams]
