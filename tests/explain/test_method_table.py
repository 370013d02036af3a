"""The method table: a method registered through the public API runs through ``explain``, the audit and the
memory estimate; options come from its signature; the paper's five rows say what the engine used to hard-code.

Known answers: "gradient x input" equals the vanilla gradient's map times the image; a "uniform" attribution
(the same value in every voxel) puts a share |b| / |V| of every class's mass in region b, whatever the model,
so an audit with it has equal share rows for all classes and mass outside each class's own region, unlike any
gradient of the voxel-wise model used here (whose own shares are 1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.explain import (
    METHODS,
    available_methods,
    explain,
    explain_memory_estimate,
    get_method,
    register_method,
    resolve_method_name,
    unregister_method,
)

NAMES = ["background", "liver", "tumour"]


def gradient_x_input(predictor, image, *, scale: float = 1.0, batch_size: int = 1):
    """Gradient of every target's proxy times the input (a toy method)."""
    return predictor.gradients(image)[0] * image[0] * scale, {"toy_scale": scale}


def uniform(predictor, image, *, value: float = 1.0):
    """The same attribution in every voxel (a toy method that ignores the model)."""
    return torch.full((len(predictor.targets), *image.shape[2:]), float(value)), {}


@pytest.fixture
def toy_methods():
    register_method("gradient_x_input", gradient_x_input, cost="gradient", aliases=("gxi",))
    register_method("uniform_toy", uniform, cost="perturbation")
    yield
    unregister_method("gradient_x_input")
    unregister_method("uniform_toy")


def test_paper_rows_hold_what_the_engine_used_to_hard_code():
    assert METHODS == ("vanilla_gradient", "smoothgrad", "integrated_gradients", "kernelshap_cubes", "kernelshap_semantic")
    assert get_method("vanilla_gradient").options == {"batch_size", "vectorize"} and get_method("vg").keep_graph
    assert get_method("sg").options == {"batch_size", "vectorize", "n_samples", "noise_level", "stdev", "seed"}
    assert get_method("ig").options == {"batch_size", "vectorize", "n_steps", "integration", "baseline", "baseline_value",
                                        "baseline_sigma", "blur_sigma", "seed"}
    shap = {"n_samples", "baseline", "baseline_value", "batch_size", "seed", "paired", "spread", "reuse_windows"}
    assert shap <= get_method("ks_semantic").options and shap | {"cubes_per_axis"} <= get_method("ks_cubes").options
    assert get_method("kernelshap_cubes").defaults["n_samples"] == 1000 and get_method("kernelshap_semantic").defaults["n_samples"] == 200
    assert {get_method(m).cost for m in METHODS} == {"gradient", "perturbation"}
    assert [get_method(m).cost for m in METHODS].count("perturbation") == 2
    assert get_method("ig").protocol_options == {"integration": "ig_integration"}


def test_registered_method_runs_through_explain_with_options_from_its_signature(toy_methods):
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    image = torch.rand(1, 8, 8, 8)
    assert resolve_method_name("GXI") == "gradient_x_input" and "gradient_x_input" in available_methods()
    got = explain(net, image, method="gxi", scale=2.0)
    ref = explain(net, image, method="vanilla_gradient")
    torch.testing.assert_close(got.attributions, 2.0 * ref.attributions * image[0])
    assert got.method == "gradient_x_input" and got.diagnostics["toy_scale"] == 2.0
    with pytest.raises(ValueError, match=r"'scal' \(did you mean 'scale'\?\).*'gradient_x_input'"):
        explain(net, image, method="gxi", scal=2.0)


def test_registration_is_checked():
    with pytest.raises(ValueError, match="cost"):
        register_method("bad_cost", uniform, cost="cheap")
    with pytest.raises(ValueError, match="taken"):
        register_method("sg", uniform, cost="gradient")
    with pytest.raises(ValueError, match="forwards_to"):
        register_method("forwarding", lambda predictor, image, **options: None, cost="gradient")
    assert "bad_cost" not in available_methods()


def test_memory_estimate_costs_a_registered_method_by_its_row(toy_methods):
    kw = dict(num_classes=3, num_targets=3, batch_size=4, pass_bytes_per_voxel=100.0)
    assert explain_memory_estimate((16,) * 3, "gxi", **kw).parts == explain_memory_estimate((16,) * 3, "smoothgrad", **kw).parts
    assert explain_memory_estimate((16,) * 3, "uniform_toy", **kw).parts == explain_memory_estimate((16,) * 3, "kernelshap_semantic", **kw).parts
    with pytest.raises(ValueError, match="not_a_method"):
        explain_memory_estimate((16,) * 3, "not_a_method", **kw)


def _phantom(root: Path) -> Path:
    """Four 12^3 scans of 8 mm in a manifest: a body with a liver block and a tumour inside."""
    import nibabel as nib

    rows = ["image,label,split"]
    g = np.stack(np.meshgrid(*[np.arange(12)] * 3, indexing="ij"))
    for i in range(4):
        body = ((g - 6) ** 2).sum(0) < 5**2
        liver = body & (np.abs(g - 6) < 3 + (i % 2)).all(0)
        tumour = liver & (((g - 6) ** 2).sum(0) <= 1 + i)
        ct = np.where(body, 0.0, -1000.0)
        ct[liver], ct[tumour] = 200.0, 600.0
        affine = np.diag([8.0, 8.0, 8.0, 1.0])
        nib.save(nib.Nifti1Image(ct.astype(np.float32), affine), root / f"p{i}.nii.gz")
        nib.save(nib.Nifti1Image((liver.astype(np.uint8) + tumour), affine), root / f"p{i}_label.nii.gz")
        rows.append(f"p{i}.nii.gz,p{i}_label.nii.gz,test")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_registered_method_runs_through_the_audit(tmp_path, toy_methods):
    from agg2exp_lightning.audit import audit

    net = torch.nn.Conv3d(1, 3, 1)
    p = torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():  # tangents of x^2: voxel-wise, so any gradient's own share would be 1
        net.weight.copy_((2 * p).view(-1, 1, 1, 1, 1))
        net.bias.copy_(-(p**2))
    manifest = _phantom(tmp_path)
    with pytest.raises(DataError, match="valu"):
        audit(net, manifest, method="uniform_toy", method_options={"valu": 2.0}, label_map=NAMES, spacing=(8, 8, 8),
              out=tmp_path / "bad", accelerator="cpu")
    analysis = audit(net, manifest, method="uniform_toy", method_options={"value": 2.0}, label_map=NAMES, spacing=(8, 8, 8),
                     out=tmp_path / "out", accelerator="cpu")
    mass = analysis.table.mass  # [N, T, R]
    rows = np.nan_to_num(mass, nan=0.0)
    np.testing.assert_allclose(rows, rows[:, :1, :].repeat(3, axis=1), atol=1e-9)  # every class: the regions' volume shares
    np.testing.assert_allclose(rows.sum(2), 1.0, atol=1e-9)
    assert (np.diagonal(rows, axis1=1, axis2=2) < 1 - 1e-3).all()
    import json

    assert json.loads((tmp_path / "out" / "audit.json").read_text())["config"]["method"] == "uniform_toy"
