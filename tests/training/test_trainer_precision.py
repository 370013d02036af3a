"""precision "auto" in training: bf16-mixed only where the hardware runs bfloat16 natively, said and recorded."""
from __future__ import annotations

import json
import logging

import pytest

import agg2exp_lightning.utils.hardware as hardware
from agg2exp_lightning.training.cli import main
from agg2exp_lightning.training.trainer import AutoPrecisionTrainer, resolve_trainer_precision


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set whether 'this CPU' has native bf16; 'auto' unpinned (the suite pins it to fp32)."""
    monkeypatch.delenv(hardware.AUTO_PRECISION_ENV, raising=False)

    def set_native(native: bool) -> None:
        monkeypatch.setattr(hardware, "_cpu_bf16", lambda: native)

    return set_native


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_follows_the_cpu(cpu_bf16, native, expected):
    cpu_bf16(native)
    choice = resolve_trainer_precision("auto", "cpu")
    assert (choice.asked, choice.used) == ("auto", expected)
    assert ("no native bfloat16" in choice.why) != native
    trainer = AutoPrecisionTrainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.precision == expected and trainer.precision_choice == choice


def test_explicit_bf16_on_a_cpu_without_it_is_obeyed_with_a_warning(cpu_bf16, caplog):
    cpu_bf16(False)
    with caplog.at_level(logging.WARNING, logger="agg2exp_lightning.utils.hardware"):
        trainer = AutoPrecisionTrainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False)
    assert trainer.precision == "bf16-mixed"
    assert [r for r in caplog.records if "emulated" in r.getMessage()]
    assert AutoPrecisionTrainer(accelerator="cpu", precision=32, logger=False).precision == "32-true"


def test_an_unknown_precision_is_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"'fp8' is not a precision Lightning knows; expected one of auto, 32, 32-true, bf16"):
        resolve_trainer_precision("fp8", "cpu")
    rc = main(["fit", "--config", "demo", "--trainer.precision=fp8", f"--trainer.default_root_dir={tmp_path}",
               f"--trainer.logger.init_args.save_dir={tmp_path}", f"--data.data_root={tmp_path / 'none'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'fp8'" in err[0] and "bf16-mixed" in err[0]


def test_bf16_on_a_cuda_device_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": (False, "CUDA device Old GPU has no bfloat16 support"))
    monkeypatch.setattr(hardware, "device_type", lambda device: "cuda")
    with pytest.raises(ValueError, match=r"^--trainer.precision 'bf16-mixed': CUDA device Old GPU has no bfloat16 support; "
                                         r"it supports 32-true and 16-mixed \(or auto\)$"):
        resolve_trainer_precision("bf16-mixed", "cuda")
    with pytest.raises(ValueError, match="it supports fp32 and fp16"):
        hardware.choose_precision("bf16", "cuda")


def test_the_demo_config_asks_auto_and_the_run_records_the_choice(tmp_path, cpu_bf16, tiny_cohort, tiny_model_args):
    """A one-epoch run with the demo config: hardware.json names the CPU and what 'auto' became, and why."""
    from agg2exp_lightning.training.configs import named_configs
    from agg2exp_lightning.training.run import train

    assert "precision: auto" in named_configs()["demo"].read_text()
    cpu_bf16(False)
    train(["fit", "--config", "demo", f"--data.data_root={tiny_cohort}", "--data.synthetic_cohort=null",
           "--data.spacing=[8.0, 8.0, 8.0]", "--data.roi_size=[32, 32, 32]", *tiny_model_args, "--trainer.max_epochs=1",
           "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.logger=false",
           "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={tmp_path}",
           "--resume=never"])
    record = json.loads((tmp_path / "hardware.json").read_text())
    assert record["precision"]["asked"] == "auto" and record["precision"]["used"] == "32-true"
    assert "no native bfloat16" in record["precision"]["why"]
    assert record["hardware"]["cpu"] == hardware.cpu_model() and record["hardware"]["cores"] >= 1
    assert record["memory_format"]["channels_last_3d"] is False and "32-true" in record["memory_format"]["why"]


@pytest.mark.parametrize(("precision", "device", "native", "expected"), [
    ("bf16-mixed", "cpu", True, True), ("bf16-mixed", "cpu", False, False), ("32-true", "cpu", True, False),
    ("bf16-mixed", "cuda", True, False)])
def test_channels_last_only_for_bf16_on_a_cpu_with_native_bf16(cpu_bf16, precision, device, native, expected):
    """The measured rule (docs/benchmarks.md): 1.41x with native bf16 on a CPU, no gain in fp32, not measured on a GPU."""
    cpu_bf16(native)
    chosen, why = hardware.choose_memory_format(precision, device)
    assert chosen is expected and ("channels_last_3d:" in why) is expected


def test_the_model_trains_in_channels_last_when_chosen(monkeypatch):
    """When the rule says so, fitting converts the network and feeds it channels-last input; the loss is the same."""
    import torch

    from agg2exp_lightning.model import SegmentationModule

    torch.manual_seed(0)
    module = SegmentationModule(num_classes=3, feature_size=12, depths=(1, 1, 1, 1), roi_size=(64, 64, 64))
    batch = {"image": torch.rand(1, 1, 64, 64, 64), "label": torch.randint(0, 3, (1, 1, 64, 64, 64))}
    monkeypatch.setattr(SegmentationModule, "log", lambda self, *a, **k: None)
    module.train()
    plain = module.training_step(batch, 0)
    seen = []
    module.net.swinViT.register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last_3d)))

    class _Trainer:
        precision = "bf16-mixed"

    monkeypatch.setattr(hardware, "choose_memory_format", lambda precision, device: (precision.startswith("bf16"), "test"))
    monkeypatch.setattr(SegmentationModule, "trainer", property(lambda self: _Trainer()))
    module.on_fit_start()
    assert module.channels_last
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in module.net.parameters() if p.dim() == 5)
    converted = module.training_step(batch, 0)
    assert seen == [True]
    torch.testing.assert_close(converted, plain, rtol=1e-4, atol=1e-5)
