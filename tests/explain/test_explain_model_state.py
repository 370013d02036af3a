"""explain leaves the model as it found it (also after an error) and works in inference mode."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from agg2exp_lightning.explain import METHODS, explain, explanation_mode

from explain_models import SmoothConvNet  # noqa: I001 - beside this file


class DropNet(nn.Module):
    """Conv net with dropout and batch norm, so train/eval mode changes its output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Conv3d(4, 3, 1)
        self.calls = 0
        self.fail_at: int | None = None

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("boom")
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))))


def _state(model: nn.Module):
    return (
        [(n, m.training) for n, m in model.named_modules()],
        [(n, p.requires_grad) for n, p in model.named_parameters()],
        [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(getattr(m, "_backward_pre_hooks", {})))
         for n, m in model.named_modules()],
        {n: p.detach().clone() for n, p in model.named_parameters()},
        {n: b.detach().clone() for n, b in model.named_buffers()},
    )


def _mixed_model() -> DropNet:
    model = DropNet().train()
    model.head.eval()  # mixed modes must come back exactly
    model.conv.bias.requires_grad_(False)  # mixed requires_grad too
    return model


def _assert_same(before, after):
    assert before[:3] == after[:3]
    for a, b in zip(before[3:], after[3:]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", METHODS)
def test_state_restored_after_success(method):
    model = _mixed_model()
    before = _state(model)
    opts = {"n_samples": 8, "cubes_per_axis": 2} if method == "kernelshap_cubes" else {}
    opts |= {"n_samples": 2} if method == "smoothgrad" else {}
    opts |= {"n_steps": 2} if method == "integrated_gradients" else {}
    with torch.no_grad():  # grad mode off outside: must stay off
        res = explain(model, torch.rand(1, 6, 6, 6), method=method, **opts)
        assert not torch.is_grad_enabled()
    _assert_same(before, _state(model))  # includes BN running stats: eval mode during explain
    assert res.attributions.shape == (3, 6, 6, 6)


@pytest.mark.parametrize(("method", "window"), [("vg", {"roi_size": 6}), ("sg", {}), ("ks_semantic", {})])
def test_state_restored_after_an_error(method, window):
    model = _mixed_model()
    model.fail_at = 2  # the prediction pass works, the next model call raises
    before = _state(model)
    torch.set_grad_enabled(False)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            explain(model, torch.rand(1, 6, 6, 6), method=method, **window)
        assert not torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(True)
    _assert_same(before, _state(model))


def test_explanation_mode_restores_on_exception_and_freezes_parameters():
    model = _mixed_model()
    before = _state(model)
    with pytest.raises(KeyError):
        with explanation_mode(model):
            assert not any(m.training for m in model.modules())
            assert not any(p.requires_grad for p in model.parameters())
            assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            raise KeyError("x")
    _assert_same(before, _state(model))


def test_works_inside_inference_mode_with_an_inference_tensor():
    model = SmoothConvNet(classes=3)
    image = torch.rand(1, 6, 6, 6, dtype=torch.float64)
    reference = explain(model, image, method="ig", n_steps=3)
    with torch.inference_mode():
        frozen = image.clone()  # an inference tensor, as a validation batch would be
        res = explain(model, frozen, method="ig", n_steps=3)
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(res.attributions, reference.attributions)
    assert all(p.requires_grad for p in model.parameters())


class _ExplainingModule(pl.LightningModule):
    """Calls explain in validation_step, under the Trainer's default inference mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmoothConvNet(classes=3, dtype=torch.float32)
        self.shares = []
        self.modes = []

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).mean()

    def validation_step(self, batch, batch_idx):
        self.modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        res = explain(self.net, batch[0][0], method="sg", n_samples=2)
        self.shares.append(res.roi)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_works_in_a_lightning_validation_step_with_trainer_defaults(tmp_path):
    data = torch.utils.data.TensorDataset(torch.rand(2, 1, 6, 6, 6))
    loader = torch.utils.data.DataLoader(data, batch_size=1)
    module = _ExplainingModule()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, loader, loader)  # validation inside fit runs under no_grad
    trainer.validate(module, loader, verbose=False)  # trainer.validate runs under inference mode
    assert module.modes == [(False, False), (True, False)]
    assert len(module.shares) == 2 and all(s.shape == (3, 3) and not torch.isnan(s).all() for s in module.shares)
    assert all(p.requires_grad for p in module.parameters())
