"""Does weighting the DiceCE loss by label frequency make the demo learn the small structures sooner?

Trains the demo's model on the demo cohort (settings from configs/demo.yaml, monitors off) twice from the
same seed, with uniform class weights (as published) and with ``class_weights=inverse_sqrt_frequency``,
for the same number of epochs and the same cosine schedule, then prints the validation Dice per class
of each. The comparison is by optimisation steps, so it holds whatever else runs on the machine.

Usage: python benchmarks/class_weighting.py [--epochs 8] [--data data/synthetic_thorax]
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import yaml

from agg2exp_lightning.utils.hardware import hardware_line

REPO = Path(__file__).resolve().parents[1]


def run(weights: str | None, epochs: int, data_root: str) -> tuple[dict[str, float], float, int]:
    import lightning.pytorch as pl

    from agg2exp_lightning.data.datamodule import ThoraxDataModule
    from agg2exp_lightning.model import SegmentationModule
    from agg2exp_lightning.training.dice_table import dice_table

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    pl.seed_everything(config["seed_everything"], verbose=False)
    model_args = {**config["model"], "class_weights": weights}
    data_args = {**config["data"], "data_root": data_root}
    model, data = SegmentationModule(**model_args), ThoraxDataModule(**data_args)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, check_val_every_n_epoch=epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    _, means = dice_table(model.class_names, model.last_val_dice)
    return means, time.perf_counter() - start, trainer.global_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs per arm (the demo trains 16)")
    parser.add_argument("--data", default=str(REPO / "data" / "synthetic_thorax"), help="demo cohort (generated if absent)")
    args = parser.parse_args()
    print(hardware_line(), flush=True)
    results = {}
    for weights in (None, "inverse_sqrt_frequency"):
        means, seconds, steps = run(weights, args.epochs, args.data)
        results[weights or "uniform"] = means
        print(f"{weights or 'uniform'}: {steps} steps in {seconds:.0f} s, mean foreground Dice {means['mean_foreground']:.3f}", flush=True)
    names = list(next(iter(results.values())))
    print(f"\n| class | {' | '.join(results)} |\n|---|{'---|' * len(results)}")
    for name in names:
        cells = " | ".join("nan" if math.isnan(r[name]) else f"{r[name]:.3f}" for r in results.values())
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
