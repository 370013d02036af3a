"""Any Captum attribution class on the Agg2Exp proxy, one target at a time (private)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from agg2exp_lightning.explain._sliding_window import WindowPlan
from agg2exp_lightning.explain.proxy import proxy_output


class ProxyModule(nn.Module):
    """``x [B, 1, *S] -> [B, C]`` proxies of every class with a fixed mask (with autograd).

    With a window plan the logits come from MONAI's ``sliding_window_inference`` with the same
    settings, differentiated end to end.
    """

    def __init__(self, model: nn.Module, labels: Tensor, num_classes: int, plan: WindowPlan | None, window: Mapping[str, Any] | None) -> None:
        super().__init__()
        self.model = model
        self.labels = labels
        self.classes = list(range(num_classes))
        self.window = dict(window) if plan is not None and window is not None else None

    def forward(self, x: Tensor) -> Tensor:
        if self.window is None:
            logits = self.model(x)
        else:
            from monai.inferers import sliding_window_inference

            w = self.window
            logits = sliding_window_inference(
                x, w["roi_size"], w["sw_batch_size"], self.model, overlap=w["overlap"], mode=w["mode"], sigma_scale=w["sigma_scale"]
            )
        return proxy_output(logits, self.labels, self.classes)


def captum_attributions(
    method: type,
    model: nn.Module,
    image: Tensor,
    labels: Tensor,
    num_classes: int,
    targets: Sequence[int],
    plan: WindowPlan | None,
    window: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> tuple[Tensor, dict[str, Any]]:
    """``[T, *S]`` attributions of ``method(ProxyModule(...))``, looping over the targets.

    ``options`` go to ``attribute`` except ``init_kwargs`` (to the constructor).
    """
    options = dict(options)
    init_kwargs = dict(options.pop("init_kwargs", {}) or {})
    wrapper = ProxyModule(model, labels, num_classes, plan, window)
    explainer = method(wrapper, **init_kwargs)
    maps = []
    for c in targets:
        a = explainer.attribute(image, target=int(c), **options)
        if isinstance(a, tuple):  # (attributions, delta) when a delta was requested
            a = a[0]
        maps.append(a.detach().reshape(image.shape)[0, 0])
    return torch.stack(maps), {"captum_class": f"{method.__module__}.{method.__qualname__}"}
