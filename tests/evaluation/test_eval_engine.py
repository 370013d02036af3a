"""The comparison with the real explanation engine (all five methods) on a tiny linear conv net."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agg2exp_lightning.evaluation.compare import METHODS, ComparisonSettings, compare_methods, make_method_attributor
from agg2exp_lightning.explain import engine  # noqa: F401 - imported, never skipped: a broken engine fails here

NAMES = ("background", "left", "right")
OPTIONS = {
    "smoothgrad": {"n_samples": 2},
    "integrated_gradients": {"n_steps": 4, "baseline": "zero"},
    "kernelshap_cubes": {"cubes_per_axis": 2, "n_samples": 64},
    "kernelshap_semantic": {"n_samples": 16},
}


def _scans():
    rng = np.random.default_rng(4)
    out = []
    for i in range(2):
        x = torch.from_numpy(rng.random((1, 12, 12, 12), dtype=np.float32))
        x[0, 0, 0, 0] = 0.0  # min(x) = 0: the faithfulness baseline equals IG's zero baseline
        out.append((f"s{i}", x))
    return out


def test_five_methods_through_explain(linear_net, tmp_path):
    settings = ComparisonSettings(n_runs=10, subset_size=150, noise_samples=2, batch_size=5)
    table = compare_methods(linear_net, _scans(), METHODS, NAMES, tmp_path, explainer=make_method_attributor(**OPTIONS),
                            settings=settings, class_names=NAMES, progress=False)
    assert len(table) == 5 * 2 * 3
    assert table[["faithfulness", "sensitivity_avg", "sensitivity_max", "complexity"]].notna().all().all()
    by = table.set_index("method")
    # IG from a zero baseline on a linear net gives each voxel's exact contribution: correlation 1
    np.testing.assert_allclose(by.loc["integrated_gradients", "faithfulness"], 1.0, atol=1e-6)
    # KernelSHAP over 2x2x2 cubes spreads each cube's value evenly: complexity counts whole cubes (1/8 each)
    eighths = by.loc["kernelshap_cubes", "complexity"].to_numpy() * 8
    np.testing.assert_allclose(eighths, np.round(eighths), atol=1e-12)
    assert (table["seconds_all_classes"] > 0).all() and (table["seconds_one_class"] > 0).all()


def test_sampling_methods_are_seeded_so_resumed_runs_reproduce(linear_net, tmp_path):
    ex = make_method_attributor(**OPTIONS)
    image = _scans()[0][1]
    for method in ("smoothgrad", "kernelshap_cubes"):
        torch.testing.assert_close(ex(linear_net, image, method, [0, 1]), ex(linear_net, image, method, [0, 1]))
    with pytest.raises(ValueError, match="options of method 'smoothgrad' as a dict"):
        make_method_attributor(smoothgrad=3)
