"""The model as the attribution methods see it: logits, proxies and proxy gradients (private).

One :class:`Predictor` hides whether the volume is predicted in one pass or with sliding windows,
and counts every forward and backward pass for the diagnostics.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from agg2exp_lightning.errors import NonFiniteError
from agg2exp_lightning.explain._sliding_window import WindowPlan, blended_logits, windowed_coalition_proxies, windowed_proxy_gradients
from agg2exp_lightning.explain._vjp import PassCounter, target_vjps
from agg2exp_lightning.explain.proxy import proxy_output


@dataclass
class Predictor:
    """A model, its optional window plan, the fixed mask labels and the targets.

    Attributes:
        model: maps ``[B, 1, *S]`` (or ``[B, 1, *roi]`` with windows) to logits.
        plan: sliding-window plan, or ``None`` for one pass over the whole volume.
        targets: class ids to explain.
        labels: ``[*S]`` mask labels of the unperturbed prediction (set by :meth:`predict`).
        vectorize: batched backward over the targets (``is_grads_batched``) instead of a loop.
        counter: forward/backward pass counts.
        progress: show a progress bar over the sample batches.
    """

    model: nn.Module
    plan: WindowPlan | None
    targets: Sequence[int]
    labels: Tensor | None = None
    vectorize: bool = False
    counter: PassCounter = field(default_factory=PassCounter)
    progress: bool = False
    _graph: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    _window_terms: dict = field(default_factory=dict, repr=False)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """``[B, C, *S]`` logits of ``[B, 1, *S]`` inputs, without grad (blended with windows)."""
        if self.plan is not None:
            return blended_logits(self.model, x, self.plan, self.counter)
        self.counter.forward(x.shape[0])
        return self.model(x)

    def predict(self, image: Tensor, *, keep_graph: bool = False) -> Tensor:
        """Logits of the unperturbed ``image`` ``[1, 1, *S]``; fixes :attr:`labels` from their argmax.

        With ``keep_graph`` (whole volume only) the pass runs with grad on a leaf copy of the
        image, and the next :meth:`gradients` call on the same input reuses it: the vanilla gradient
        then costs one forward pass in all.
        """
        self._graph = None
        if keep_graph and self.plan is None:
            inp = image.detach().clone().requires_grad_(True)
            logits = self.model(inp)
            self.counter.forward(1)
            self._graph = (inp, logits)
        else:
            logits = self.logits(image)
        spatial = tuple(image.shape[2:])
        if logits.dim() != image.dim() or logits.shape[0] != 1 or tuple(logits.shape[2:]) != spatial:
            raise ValueError(
                f"Expected argument `model` to map an input of shape {tuple(image.shape)} to logits of shape "
                f"[1, C, {', '.join(map(str, spatial))}], but it returned shape {tuple(logits.shape)}"
            )
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteError("Expected argument `model` to return finite logits for `image`, but they hold NaN or infinite "
                                 "values", what="logits")
        self.labels = logits.detach().argmax(dim=1)[0]
        return logits.detach()

    @torch.no_grad()
    def proxies(self, x: Tensor) -> Tensor:
        """``[B, T]`` proxy outputs of ``x`` with the fixed mask (no grad)."""
        return proxy_output(self.logits(x), self._labels(), self.targets)

    @torch.no_grad()
    def coalition_proxies(
        self, base: Tensor, image: Tensor, feature_mask: Tensor, z: Tensor, *, batch_size: int, reuse_windows: bool = True
    ) -> tuple[Tensor, int]:
        """``[N, T]`` float64 proxies of ``base + z[:, feature_mask] * (image - base)`` for coalitions ``z`` ``[N, M]``.

        Whole volume: ``batch_size`` perturbed volumes per forward pass. With windows, window by
        window (:func:`~agg2exp_lightning.explain._sliding_window.windowed_coalition_proxies`):
        with ``reuse_windows`` a window runs once per distinct restriction of the coalitions to the
        features it covers, across calls of one explanation. Returns ``(proxies, window passes saved)``.
        """
        if self.plan is not None:
            return windowed_coalition_proxies(
                self.model, base, image, feature_mask, z, self._labels(), self.targets, self.plan, self.counter,
                reuse=reuse_windows, cache=self._window_terms, progress=self.progress and z.shape[0] > 1,
            )
        diff = image - base
        outs = []
        for start, stop in self.batches(z.shape[0], batch_size, "KernelSHAP coalitions"):
            keep = z[start:stop].to(device=image.device, dtype=image.dtype)[:, feature_mask]  # [b, *S]
            outs.append(self.proxies(base + keep.unsqueeze(1) * diff).double().cpu())
        return (torch.cat(outs) if outs else torch.zeros((0, len(self.targets)), dtype=torch.float64)), 0

    def gradients(self, x: Tensor) -> Tensor:
        """``[B, T, *S]``: gradient of each target's proxy w.r.t. each input of ``x`` ``[B, 1, *S]``.

        One forward pass per batch (per window batch with windows) serves all targets; a target
        whose class is absent from the mask (in the whole volume, or in a window batch) has a
        zero gradient there and costs no backward pass.
        """
        labels = self._labels()
        if self.plan is not None:
            return windowed_proxy_gradients(self.model, x, labels, self.targets, self.plan, self.counter, vectorize=self.vectorize)
        graph, self._graph = self._graph, None
        if graph is not None and graph[0].shape == x.shape and torch.equal(graph[0].detach(), x):
            inp, logits = graph  # the prediction pass of this very input, kept with its graph
        else:
            inp = x.detach().clone().requires_grad_(True)
            logits = self.model(inp)
            self.counter.forward(x.shape[0])
        cotangents = {}
        for t, c in enumerate(self.targets):
            mask = labels == c
            if bool(mask.any()):
                cotangents[t] = (c, mask.to(logits.dtype).expand(x.shape[0], *mask.shape))
        grads = target_vjps(logits, inp, cotangents, self.counter, vectorize=self.vectorize)
        out = torch.zeros((x.shape[0], len(self.targets), *x.shape[2:]), dtype=x.dtype, device=x.device)
        for t, g in grads.items():
            out[:, t] = g[:, 0]
        return out

    def batches(self, total: int, batch_size: int, desc: str) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of consecutive batches, with a tqdm bar when :attr:`progress`."""
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, unit="sample", disable=not self.progress, leave=False) as bar:
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                yield start, stop
                bar.update(stop - start)

    def _labels(self) -> Tensor:
        if self.labels is None:
            raise RuntimeError("Predictor.predict(image) must run before proxies or gradients")
        return self.labels
