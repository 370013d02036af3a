"""The explanation monitor under a protocol: passed to explain(), recorded in its table and history."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monitor_helpers import TinySegmenter, loaders, make_trainer, scans  # noqa: I001 - beside this file

from agg2exp_lightning.callbacks import ExplanationMonitor
from agg2exp_lightning.explain import explain


def test_unknown_protocol_fails_when_the_monitor_is_made():
    with pytest.raises(ValueError, match=r"`protocol`.*\['paper', 'corrected'\].*'papper'.*did you mean 'paper'"):
        ExplanationMonitor(protocol="papper")


def test_monitor_under_the_paper_protocol_equals_direct_explain_and_records_it(tmp_path, monkeypatch):
    import agg2exp_lightning.explain as explain_package

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("protocol"))
        return explain(*args, **kwargs)

    monkeypatch.setattr(explain_package, "explain", spy)
    torch.manual_seed(0)
    module = TinySegmenter()
    monitor = ExplanationMonitor(every_n_epochs=1, method="integrated_gradients", method_options={"n_steps": 4}, num_scans=2,
                                 at_train_end=False, protocol="paper")
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(module, *loaders())
    for n, item in enumerate(scans(2, 2)):
        direct = explain(module.net, item["image"], method="integrated_gradients", n_steps=4, protocol="paper")
        np.testing.assert_allclose(monitor.latest.roi[n], direct.roi.double().numpy(), rtol=1e-5, atol=1e-7)
    assert seen and all(p is not None and p.name == "paper" for p in seen)  # the protocol reached every explain() call
    assert monitor.history[-1]["protocol"]["name"] == "paper"
    assert monitor.history[-1]["protocol"]["settings"]["ig_integration"] == "uniform_inclusive"
