"""Command line of the post-hoc model audit (``agg2exp-audit`` / ``python audit.py``).

Examples::

    agg2exp-audit --from-table tsv2_test_aggregated_sg_explanations_with_dice.csv --out runs/audit_tsv2
    agg2exp-audit --from-table table.csv --metadata meta.csv --reference-table train.csv --out runs/audit
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from agg2exp_lightning.analysis.anomaly import DEFAULT_RANDOM_STATE
from agg2exp_lightning.errors import DataError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can inspect it)."""
    p = argparse.ArgumentParser(prog="agg2exp-audit", description="Post-hoc audit of a segmentation model's aggregated explanations (Agg2Exp).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-table", metavar="CSV", help="table of aggregated explanations in the published column format")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumed if it holds this audit)")
    p.add_argument("--metadata", metavar="CSV", help="metadata joined on the id column (patient / image_id), e.g. meta.csv")
    p.add_argument("--reference-table", metavar="CSV", help="table to fit the Isolation Forests on (default: the audited scans)")
    p.add_argument("--overwrite", action="store_true", help="replace another audit's results in --out")
    p.add_argument("--random-state", type=int, default=DEFAULT_RANDOM_STATE, help="seed of the Isolation Forests (default %(default)s)")
    p.add_argument("--dependencies", type=int, default=12, metavar="K", help="strongest region->class dependencies to report (default %(default)s)")
    p.add_argument("--wandb", action="store_true", help="also log to one W&B run (WANDB_MODE, default offline)")
    p.add_argument("--wandb-project", default="agg2exp-audit", help="W&B project (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the audit; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.dependencies < 1:
        parser.error(f"--dependencies must be a positive integer, got {args.dependencies}")
    try:
        from agg2exp_lightning.audit.table_audit import run_table_audit

        outputs = run_table_audit(
            args.from_table, args.out, metadata=args.metadata, reference_table=args.reference_table,
            overwrite=args.overwrite, random_state=args.random_state, n_dependencies=args.dependencies,
            wandb=args.wandb, wandb_project=args.wandb_project,
        )
    except DataError as err:
        print(f"agg2exp-audit: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {outputs.report_html}")
    return 0
