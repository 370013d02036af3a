"""Tiny models and a reference explainer for the scan-audit tests (also run by the DDP script).

Not a test module: imported by test_audit_scans.py and by the DDP script it writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from agg2exp_lightning import NUM_CLASSES, THORAX_CLASSES
from agg2exp_lightning.explain.proxy import prediction_labels, proxy_output

#: Spacing (mm) of the synthetic cohort used in these tests (no resampling).
SPACING = (8.0, 8.0, 8.0)
#: Points p_c of the tangent lines: class c is predicted where the intensity is nearest to p_c.
POINTS = torch.linspace(0.05, 1.0, NUM_CLASSES)


class PointwiseNet(nn.Module):
    """``logits_c(v) = 2 p_c x(v) - p_c^2``: tangents of x^2, so argmax picks the p_c nearest to x.

    Each logit depends only on its own voxel, so the vanilla gradient of class c's proxy is
    ``2 p_c`` on c's predicted region and 0 elsewhere: all of c's attribution mass lies in its own
    region (known answer: ``e_{c->c} = 1``).
    """

    def forward(self, x: Tensor) -> Tensor:
        p = POINTS.to(x).view(1, -1, *([1] * (x.dim() - 2)))
        return 2 * p * x - p**2


class TinyConvNet(nn.Module):
    """PointwiseNet plus ``s_c`` times one seeded 3x3x3 smoothing of the image: attributions spill
    into neighbouring regions, by a different amount per class."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv3d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.rand(self.conv.weight.shape, generator=g) / 27)
        self.register_buffer("scale", 0.1 * torch.randn(NUM_CLASSES, generator=g))
        self.pointwise = PointwiseNet()

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(x) + self.scale.view(1, -1, 1, 1, 1) * self.conv(x)


@dataclass
class GradientResult:
    roi: Tensor
    roi_mean: Tensor
    prediction: Tensor
    attribution: Tensor


def gradient_explainer(model: nn.Module, image: Tensor) -> GradientResult:
    """Vanilla gradient of every class's proxy, aggregated into RoI shares (written for the tests)."""
    image = image.detach().clone().requires_grad_(True)
    logits = model(image)
    labels = prediction_labels(logits.detach())[0]
    grads = []
    for t in range(logits.shape[1]):
        (g,) = torch.autograd.grad(proxy_output(logits, labels, [t]).sum(), image, retain_graph=True)
        grads.append(g[0, 0].abs())
    a = torch.stack(grads)
    onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).movedim(-1, 0).to(a.dtype)
    inside = torch.einsum("t...,r...->tr", a, onehot)
    return GradientResult(inside / a.flatten(1).sum(1, keepdim=True), inside / onehot.flatten(1).sum(1), labels, a)


def audit(out: Path, model: nn.Module, sets: dict[str, Any], **kwargs: Any):
    """run_scan_audit with the test settings."""
    from agg2exp_lightning.audit.scan_audit import run_scan_audit
    from agg2exp_lightning.labels import load_structure_mapping

    kwargs.setdefault("explainer", gradient_explainer)
    kwargs.setdefault("trainer_kwargs", {"accelerator": "cpu", "devices": 1})
    return run_scan_audit(model, THORAX_CLASSES, sets, out, config={"test": type(model).__name__}, spacing=SPACING,
                          mapping=load_structure_mapping(), **kwargs)
