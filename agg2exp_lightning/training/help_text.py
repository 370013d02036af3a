"""``agg2exp-train``'s words: the description, one sentence per subcommand, and the top-level ``--help`` page.

Kept apart from :mod:`~agg2exp_lightning.training.cli` (which imports Lightning and torch) so that
``agg2exp-train --help`` answers at once and in full: LightningCLI's own page lists each subcommand by the
first lines of Lightning's docstrings, cut mid-sentence.
"""
from __future__ import annotations

import shutil
import textwrap

from agg2exp_lightning.training.configs import named_configs

DESCRIPTION = (
    "Train, evaluate and apply the Swin-UNETR thorax segmentation model. Shortcut: `agg2exp-train demo [OPTIONS]` "
    "= `agg2exp-train fit --config demo [OPTIONS]` (2-core CPU demo). Shipped configurations for --config: {names}."
)
SUBCOMMAND_HELP = {
    "fit": "Fit the model (continuing a killed run from <run>/checkpoints/last.ckpt; --resume never starts over), "
           "then validate the best checkpoint and write <run>/dice_table.md.",
    "validate": "Per-scan Dice of --ckpt_path (default <run>/checkpoints/last.ckpt) on the validation scans; "
                "writes <run>/dice_table.md.",
    "test": "Per-scan Dice of --ckpt_path (default <run>/checkpoints/last.ckpt) on the test scans; writes "
            "<run>/test_dice_table.md.",
    "predict": "Label maps of the test scans by --ckpt_path (default <run>/checkpoints/last.ckpt), written as "
               "NIfTI on each input image's grid (shape and affine) to --predictions_dir (default <run>/predictions).",
}


def top_level_help(width: int | None = None) -> str:
    """The ``agg2exp-train --help`` page: usage, description, every subcommand's full sentence, where to go next."""
    width = width or max(min(shutil.get_terminal_size((100, 24)).columns, 100), 60)
    wrap = textwrap.TextWrapper(width=width, break_on_hyphens=False)
    out = ["usage: agg2exp-train [-h] [--version] {demo,fit,validate,test,predict} [OPTIONS]", "",
           wrap.fill(DESCRIPTION.format(names=", ".join(named_configs()))), "", "subcommands:"]
    items = {"demo": "The 2-core CPU demo: `fit --config demo`, any further OPTIONS on top.", **SUBCOMMAND_HELP}
    for name, text in items.items():
        lines = textwrap.wrap(text, width=width - 14, break_on_hyphens=False)
        out.append(f"  {name:<10}  {lines[0]}")
        out += [" " * 14 + line for line in lines[1:]]
    out += ["", "options:", "  -h, --help    this page", "  --version     print the version and exit", "",
            wrap.fill("Each subcommand's options (--config, --trainer.*, --model.*, --data.*, --print_config): "
                      "`agg2exp-train SUBCOMMAND --help`.")]
    return "\n".join(out) + "\n"
