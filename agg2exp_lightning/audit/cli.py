"""Command line of the post-hoc model audit (``agg2exp-audit`` / ``python audit.py``).

Examples::

    agg2exp-audit --from-table tsv2_test_aggregated_sg_explanations_with_dice.csv --out runs/audit_tsv2
    agg2exp-audit --from-table table.csv --metadata meta.csv --reference-table train.csv --out runs/audit
    agg2exp-audit --model model.ckpt --data /data/Totalsegmentator_v2 --method smoothgrad \
        --method-option n_samples=10 --reference-split train --out runs/audit_ckpt --devices 2 --strategy ddp
    agg2exp-audit --model bundles/my_ct_bundle --data scans.csv --targets liver tumour --out runs/audit_bundle
    agg2exp-audit --model mypkg.nets:build --weights net.pt --label-map labels.yaml --data scans.csv --out runs/audit_own

Python::

    from agg2exp_lightning.audit import audit
    analysis = audit("model.ckpt", "data/synthetic_thorax", method="vanilla_gradient", reference="train", out="runs/audit")
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from agg2exp_lightning.analysis.anomaly import DEFAULT_CONTAMINATION, DEFAULT_RANDOM_STATE, DEFAULT_SCORE_TAIL
from agg2exp_lightning.analysis.detectors import DEFAULT_DETECTOR, DEFAULT_SCORE_DETECTOR, DETECTORS
from agg2exp_lightning.analysis.regions import PRESET_MERGES
from agg2exp_lightning.audit_settings import AuditSettings, SettingError
from agg2exp_lightning.cli_common import (
    METHOD_OPTION_HELP,
    METHOD_OPTION_SYNTAX,
    ArgumentParser,
    add_device_arguments,
    add_model_arguments,
    add_version_argument,
    describe_os_error,
    method_options_for,
    model_source_options,
    parse_devices,
    parse_method_options,
)
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.protocols import DEFAULT_PROTOCOL, PROTOCOLS

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can inspect it)."""
    p = ArgumentParser(prog="agg2exp-audit", description="Post-hoc audit of a segmentation model's aggregated explanations (Agg2Exp).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-table", metavar="CSV", help="table of aggregated explanations in the published column format")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumed if it holds this audit)")
    t = p.add_argument_group("table mode (--from-table)")
    t.add_argument("--metadata", metavar="CSV", help="metadata joined on the id column (patient / image_id), e.g. meta.csv")
    t.add_argument("--reference-table", metavar="CSV", help="table to fit the detectors on (default: the audited scans)")
    c = p.add_argument_group("model mode (--model)")
    add_model_arguments(c, source_group=src)
    c.add_argument("--data", metavar="ROOT", help="TotalSegmentator v2 root or manifest CSV")
    c.add_argument("--manifest", metavar="CSV", help="manifest CSV (image, label, metadata columns); overrides --data")
    c.add_argument("--method", default="smoothgrad", help="attribution method (default %(default)s)")
    c.add_argument("--method-option", action="append", default=[], metavar=METHOD_OPTION_SYNTAX, help=METHOD_OPTION_HELP)
    c.add_argument("--targets", nargs="+", metavar="CLASS", help="classes to explain, by name or channel id (default: every class)")
    c.add_argument("--mapping-file", metavar="YAML",
                   help="TotalSegmentator structures -> the model's labels (default: the shipped thorax mapping)")
    c.add_argument("--split", default="test", help="split to audit (default %(default)s)")
    c.add_argument("--reference-split", metavar="SPLIT", default="auto",
                   help="split to fit the detectors on and to calibrate the scan-level score against (paper: train); "
                        "'auto' (default): a held-out split (val) where the data has one besides the audited split, else train "
                        "(with a note: the bound assumes exchangeable scans); 'none': the audited scans")
    c.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="resampling spacing in mm (default: the training data module's)")
    c.add_argument("--roi-size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="sliding-window size for the explainer")
    add_device_arguments(c)
    c.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace another audit's results in --out")
    p.add_argument("--settings", metavar="FILE",
                   help="JSON/YAML file of audit settings (agg2exp_lightning.audit_settings.AuditSettings fields); flags given here win")
    p.add_argument("--random-state", type=int, default=DEFAULT_RANDOM_STATE, help="seed of the anomaly detectors (default %(default)s)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, metavar="NAME",
                   help=f"per-class anomaly detector, one of {', '.join(DETECTORS)} (default %(default)s, the paper's; "
                        "local_outlier_factor: scikit-learn's LocalOutlierFactor with novelty=True)")
    p.add_argument("--score-detector", default=DEFAULT_SCORE_DETECTOR, metavar="NAME",
                   help=f"detector of the calibrated scan-level score, per evidence family and class, one of {', '.join(DETECTORS)} "
                        "(default %(default)s: mean squared robust z-score against the reference)")
    p.add_argument("--score-tail", default=DEFAULT_SCORE_TAIL, metavar="NAME",
                   help="per-class p of a score beyond every reference score: exponential (default: a tail fitted to the top "
                        "reference scores, so a far-off feature counts) or conformal (stops at 1/(M+1))")
    p.add_argument("--contamination", type=float, default=DEFAULT_CONTAMINATION, metavar="C",
                   help="share of clean scans the scan-level flag may raise, in (0, 0.5] (default %(default)s)")
    p.add_argument("--evidence", metavar="FAMILIES",
                   help="evidence of the scan-level score, comma-separated from shares,prediction,attribution,image "
                        "(default: all; with --protocol paper: shares)")
    p.add_argument("--dependencies", type=int, default=12, metavar="K", help="strongest region->class dependencies to report (default %(default)s)")
    p.add_argument("--protocol", default=DEFAULT_PROTOCOL, metavar="NAME",
                   help=f"bundle of choices, one of {', '.join(PROTOCOLS)} (default %(default)s; paper = as published: "
                        "absent regions count as share 0, the cumulative-share graph rule, uncropped volumes, ...)")
    c.add_argument("--extra-masks", metavar="DIR",
                   help="per-scan masks added as regions (e.g. a pathology): DIR/<subject id>/<name>.nii.gz (or .nrrd, .mha, a DICOM folder) on the CT's grid")
    p.add_argument("--merge", action="append", default=[], metavar="NAME[=REGION,...]",
                   help=f"join regions into one before the analysis, repeatable: a preset ({', '.join(PRESET_MERGES)}) "
                        "or NAME=REGION,REGION,... (e.g. lung=lung_upper_lobe_left,lung_lower_lobe_left)")
    p.add_argument("--wandb", action="store_true", help="also log to one W&B run (WANDB_MODE, default offline)")
    p.add_argument("--wandb-project", default="agg2exp-audit", help="W&B project (default %(default)s)")
    c.add_argument("--save-maps", action="store_true",
                   help="write each scan's attribution maps and prediction as NIfTI in the scan's own grid (maps/; the size estimate is printed first)")
    c.add_argument("--wandb-model-artifact", metavar="NAME",
                   help="W&B artifact of the audited checkpoint (e.g. model-1a2b3c:best): the audit run uses it (online)")
    c.add_argument("--figures-for", nargs="+", default=[], metavar="ID",
                   help="also draw these scans in three views (besides the worklist's; needs --save-maps)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    add_version_argument(p)
    return p


#: AuditSettings fields set by flags: field -> argparse dest (the flag is ``--`` + dest with ``-`` for ``_``).
SETTING_FLAGS: dict[str, str] = {
    "method": "method", "targets": "targets", "split": "split", "reference_split": "reference_split", "spacing": "spacing",
    "roi_size": "roi_size", "protocol": "protocol", "merges": "merge", "random_state": "random_state",
    "contamination": "contamination", "detector": "detector", "score_detector": "score_detector", "score_tail": "score_tail", "evidence": "evidence", "n_dependencies": "dependencies",
    "save_maps": "save_maps", "figures_for": "figures_for",
}


#: Settings whose flags take a number: a value out of range is reported as argparse reports a bad flag.
NUMBER_FLAGS = frozenset({"contamination", "n_dependencies", "random_state"})
#: Settings whose bad value is also reported as argparse reports a bad flag (``--evidence: ...``).
PARSER_FLAGS = NUMBER_FLAGS | {"evidence"}


def _given_flags(argv: Sequence[str] | None) -> set[str]:
    """The argparse dests given on the command line (not left at their defaults)."""
    bare = build_parser()
    for action in bare._actions:
        action.default = argparse.SUPPRESS
    return set(vars(bare.parse_args(argv)))


def settings_from_arguments(args: argparse.Namespace, given: set[str] | None = None) -> AuditSettings:
    """The audit's :class:`~agg2exp_lightning.audit_settings.AuditSettings`, built (and checked) once: flags given
    on the command line, over ``--settings FILE``, over the flags' defaults.

    Raises:
        SettingError: a bad value, naming its field; ValueError: a bad ``--settings`` file or ``--method-option``.
    """
    given = set(vars(args)) if given is None else given
    values = {field: getattr(args, dest) for field, dest in SETTING_FLAGS.items()}
    if args.settings is not None:
        from_file = AuditSettings.read_file(Path(args.settings))
        values.update({k: v for k, v in from_file.items() if SETTING_FLAGS.get(k) not in given})
    settings = AuditSettings(**values)  # the method resolved once, here
    parsed = parse_method_options(args.method_option)
    other = sorted({o.method for o in parsed if o.method not in (None, settings.method_name)})
    if other:
        raise ValueError(f"--method-option names method(s) {other}, but this audit runs {settings.method_name!r}")
    options = method_options_for(parsed, settings.method_name)
    return AuditSettings.build(settings, method_options={**settings.method_options, **options}) if options else settings


def _flag_error(err: SettingError) -> str:
    """A setting's error in the command line's words: ``--contamination must be ...`` for a number, else ``--flag: ...``."""
    flag = "--" + (SETTING_FLAGS.get(err.field, err.field) if err.field != "method_options" else "method_option").replace("_", "-")
    match = re.match(r"Expected (?:argument )?`\w+` to be (.*)", str(err), flags=re.S)
    return f"{flag} must be {match.group(1)}" if match and err.field in NUMBER_FLAGS else f"{flag}: {err}"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the audit; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.quiet:  # Lightning sets its logger's level when imported: import it first, then silence its notes too
        import lightning.pytorch  # noqa: F401

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.from_table is not None:
        given = [f for f, v in (("--data", args.data), ("--manifest", args.manifest), ("--weights", args.weights), ("--extra-masks", args.extra_masks),
                                ("--targets", args.targets), ("--mapping-file", args.mapping_file), ("--bundle-override", args.bundle_override),
                                ("--folds", args.folds), ("--checkpoint-name", args.checkpoint_name)) if v]
        if given:
            parser.error(f"{'/'.join(given)} belong to --model audits, not --from-table")
    if args.model is not None and (args.metadata or args.reference_table):
        parser.error("--metadata/--reference-table belong to --from-table audits (model audits read metadata from the data)")
    try:
        devices = parse_devices(args.devices)
        settings = settings_from_arguments(args, _given_flags(argv))  # every setting checked here, before anything is written
    except SettingError as err:
        if err.field in PARSER_FLAGS:  # e.g. a number out of range: argparse's kind of error (exit 2 by SystemExit)
            parser.error(_flag_error(err))
        print(f"agg2exp-audit: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"agg2exp-audit: error: {err}", file=sys.stderr)
        return 2
    common = dict(overwrite=args.overwrite, settings=settings, wandb=args.wandb, wandb_project=args.wandb_project)
    try:
        if args.from_table is not None:
            from agg2exp_lightning.audit.table_audit import run_table_audit

            if args.save_maps or args.figures_for:
                parser.error("--save-maps/--figures-for belong to --model audits, not --from-table")
            outputs = run_table_audit(args.from_table, args.out, metadata=args.metadata, reference_table=args.reference_table,
                                      label_map=args.label_map, **common)
        else:
            from agg2exp_lightning.audit.checkpoint_audit import run_checkpoint_audit

            outputs = run_checkpoint_audit(
                args.model, args.out, weights=args.weights, label_map=args.label_map, mapping_file=args.mapping_file, data=args.data,
                manifest=args.manifest, accelerator=args.accelerator, devices=devices, strategy=args.strategy, num_workers=args.num_workers,
                wandb_model_artifact=args.wandb_model_artifact, extra_masks=args.extra_masks, **model_source_options(args), **common,
            )
    except DataError as err:
        print(f"agg2exp-audit: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only --out ...: say where, keep what is finished
        print(f"agg2exp-audit: error: {describe_os_error(err, args.out)}", file=sys.stderr)
        return 1
    if outputs is not None:  # None on DDP ranks other than 0
        print(f"report: {outputs.report_html}")
    return 0
