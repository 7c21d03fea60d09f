"""Grad-CAM of the classifier (models.inference.heatmap) against MONAI's reference implementation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet121
from monai.visualize import GradCAM

from models.inference.heatmap import ActivationCapture, grad_cam, positive_log_odds

LAYER = "features.denseblock3"


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).eval()
    for p in net.parameters():
        p.requires_grad_(False)  # as the bundle loader leaves them
    return net


def _ours(net: torch.nn.Module, x: torch.Tensor, rows: list[int], positive: int = 1) -> tuple[torch.Tensor, list]:
    capture = ActivationCapture(net, LAYER)
    with torch.enable_grad(), capture:
        logits = net(x)
    assert capture.activations is not None
    return logits, grad_cam(logits, capture.activations, positive, rows)


def test_log_odds_is_the_logit_difference_for_two_classes() -> None:
    logits = torch.tensor([[0.3, 2.0], [1.0, -1.0]])
    torch.testing.assert_close(positive_log_odds(logits, 1), logits[:, 1] - logits[:, 0])
    p = torch.softmax(torch.tensor([[0.1, 0.5, 2.0]]), 1)[0, 2]
    torch.testing.assert_close(positive_log_odds(torch.tensor([[0.1, 0.5, 2.0]]), 2)[0], torch.log(p / (1 - p)))


def test_matches_monai_gradcam(network: torch.nn.Module) -> None:
    """For two classes our score (logit difference) has the gradient of MONAI's class-1 score minus
    its class-0 score: the two Grad-CAMs combine linearly before the ReLU, so compare pre-ReLU maps."""
    torch.manual_seed(1)
    x = torch.randn(3, 1, 64, 64)
    logits, cams = _ours(network, x, [0, 1, 2])
    assert [c.shape for c in cams] == [(4, 4)] * 3
    # reference: MONAI GradCAM on a network whose output is the log-odds (a 1-class "logit")

    class LogOdds(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            out = self.net(t)
            return (out[:, 1] - out[:, 0])[:, None]

    wrapped = LogOdds(copy.deepcopy(network))  # MONAI leaves its hooks on the module: not on the shared one
    for p in wrapped.parameters():
        p.requires_grad_(True)  # MONAI's GradCAM back-propagates through the whole network
    # MONAI's default post-processing maps (min, max) to (1, 0) for display: keep the raw map instead
    reference = GradCAM(nn_module=wrapped, target_layers=f"net.{LAYER}", postprocessing=lambda m: m)
    ref = reference(x.clone(), class_idx=0, layer_idx=-1)  # upsampled to 64 x 64
    for p in wrapped.parameters():
        p.requires_grad_(False)
    for i, cam in enumerate(cams):
        ours_up = torch.nn.functional.interpolate(torch.from_numpy(cam)[None, None], size=(64, 64), mode="bilinear")[0, 0]
        r = ref[i, 0].detach()
        if float(r.max() - r.min()) < 1e-6 or float(ours_up.max()) == 0:
            continue  # no positive evidence anywhere: both flat
        corr = np.corrcoef(ours_up.flatten().numpy(), r.flatten().numpy())[0, 1]
        assert corr > 0.95, (i, corr)
        assert np.unravel_index(int(ours_up.argmax()), (64, 64)) == np.unravel_index(int(r.argmax()), (64, 64))


def test_only_requested_rows_and_values_in_unit_range(network: torch.nn.Module) -> None:
    x = torch.randn(4, 1, 64, 64)
    _, cams = _ours(network, x, [2])
    assert len(cams) == 1 and cams[0].dtype == np.float32
    assert cams[0].min() >= 0.0 and cams[0].max() <= 1.0
    assert cams[0].max() in (0.0, 1.0)


def test_rows_are_independent_of_their_batch(network: torch.nn.Module) -> None:
    torch.manual_seed(2)
    x = torch.randn(3, 1, 64, 64)
    _, together = _ours(network, x, [0, 2])
    _, alone = _ours(network, x[2:3], [0])
    np.testing.assert_allclose(together[1], alone[0], atol=1e-5)


def test_capture_rejects_unknown_layers_and_reentry(network: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="nosuch"):
        ActivationCapture(network, "features.nosuch")
    capture = ActivationCapture(network, LAYER)
    with capture, pytest.raises(RuntimeError, match="already active"):
        capture.__enter__()
    assert not network.features.denseblock3._forward_hooks  # the hook is gone after the block
