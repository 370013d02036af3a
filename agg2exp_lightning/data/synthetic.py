"""The synthetic thorax cohort: writes phantom subjects in the TotalSegmentator v2 layout.

```
<root>/meta.csv                                 # ';'-separated, UTF-8 BOM, TotalSegmentator columns + ours
<root>/s0000/ct.nii.gz                          # int16 HU, RAS affine (spacing on the diagonal)
<root>/s0000/segmentations/<structure>.nii.gz   # uint8 0/1 masks on the same grid
```

Everything is a function of ``seed`` and the subject index: demographics, scanner, anatomy and
noise come from ``numpy.random.SeedSequence(seed, spawn_key=(index,))``, so a subject does not
change when the cohort grows. Subjects are written into ``<root>/.partial/`` and renamed into place,
finished subjects are skipped on a rerun, and ``meta.csv`` is written last. A hidden
``.agg2exp_cohort.json`` records the settings so a rerun with other settings is refused.

Command line: ``agg2exp-make-cohort data/synthetic_thorax --n-subjects 36 --seed 0``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agg2exp_lightning.data.phantom import PLANTED_CONDITIONS, STRUCTURES, check_shape, draw_anatomy, generate_subject
from agg2exp_lightning.data.totalsegmentator import META_COLUMNS as TOTALSEGMENTATOR_META_COLUMNS
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.utils.files import TEMPORARY_PATTERN, atomic_write_text, remove_temporaries
from agg2exp_lightning.utils.options import did_you_mean, positive_int

log = logging.getLogger(__name__)

__all__ = [
    "META_COLUMNS",
    "SCANNERS",
    "SubjectPlan",
    "generate_cohort",
    "generate_subject",
    "main",
    "plan_cohort",
    "save_preview",
]

#: The columns of a synthetic ``meta.csv``: TotalSegmentator's, then what was planted.
META_COLUMNS: tuple[str, ...] = (*TOTALSEGMENTATOR_META_COLUMNS, "planted_condition", "degraded")
#: (institute, manufacturer, scanner_model, kvp, noise sd in HU)
SCANNERS: tuple[tuple[str, str, str, int, float], ...] = (
    ("A", "SIEMENS", "SOMATOM Definition Flash", 120, 22.0),
    ("A", "SIEMENS", "SOMATOM Force", 100, 28.0),
    ("B", "GE MEDICAL SYSTEMS", "Revolution CT", 120, 25.0),
    ("C", "Philips", "iCT 256", 120, 32.0),
    ("D", "TOSHIBA", "Aquilion ONE", 120, 38.0),
)
STUDY_TYPES = ("ct thorax", "ct thorax-abdomen", "ct thorax-abdomen-pelvis")
_PATHOLOGY = {
    "none": ("no_pathology", ""),
    "pleural_effusion": ("effusion", "lung_lower_lobe_{side}"),
    "missing_lobe": ("lobectomy", "lung_middle_lobe_right"),
    "metal_artefact": ("metal_implant", "chest_wall"),
    "mirrored_heart": ("dextrocardia", "heart"),
}
DEGRADED_NOISE_FACTOR, BLUR_MM, DEGRADED_BLUR_MM = 3.0, 1.5, 3.5
MARKER = ".agg2exp_cohort.json"
PARTIAL = ".partial"
_SUBJECT_DIR = re.compile(r"^s\d{4,}$")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SubjectPlan:
    """Everything about one subject except its voxels."""

    index: int
    image_id: str
    sex: str
    age: int
    scanner: tuple[str, str, str, int, float]
    study_type: str
    split: str
    condition: str
    degraded: bool
    noise_sd: float
    seed: int

    def anatomy_rng(self) -> np.random.Generator:
        """A fresh generator for the subject's anatomy and noise (the stream :func:`generate_subject` draws from)."""
        return np.random.default_rng(_subject_seeds(self.seed, self.index)[1])

    def meta_row(self) -> dict[str, str]:
        """The subject's ``meta.csv`` row (all strings, in ``META_COLUMNS`` order)."""
        institute, manufacturer, model, kvp, _ = self.scanner
        pathology, location = _PATHOLOGY[self.condition]
        if "{side}" in location:
            location = location.format(side="left" if _effusion_side(self) > 0 else "right")
        values = (self.image_id, str(self.age), self.sex, institute, self.study_type, self.split, manufacturer, model,
                  str(kvp), pathology, location, self.condition, "1" if self.degraded else "0")
        return dict(zip(META_COLUMNS, values))


def _subject_seeds(seed: int, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    demographics, anatomy = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(2)
    return demographics, anatomy


def _effusion_side(plan: SubjectPlan) -> int:
    """The side :func:`generate_subject` will put an effusion on (it draws it from the anatomy stream)."""
    return draw_anatomy(plan.anatomy_rng(), sex=plan.sex, age=plan.age).effusion_side


def _check_fractions(split_fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        f = tuple(float(v) for v in split_fractions)
    except (TypeError, ValueError):
        f = ()
    if len(f) != 3 or any(not np.isfinite(v) or v < 0 for v in f) or sum(f) <= 0:
        raise ValueError(
            f"Expected argument `split_fractions` to be three non-negative numbers (train, val, test) with a positive sum, "
            f"but got {split_fractions!r}"
        )
    return tuple(v / sum(f) for v in f)  # type: ignore[return-value]


def _split_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    counts = [int(round(f * n)) for f in fractions]
    counts = [max(c, 1) if f > 0 and n >= 3 else c for c, f in zip(counts, fractions)]
    while sum(counts) > n:  # take from the largest split that can spare one
        k = max(range(3), key=lambda i: (counts[i] - (1 if fractions[i] > 0 else 0), -i))
        counts[k] -= 1
    counts[int(np.argmax(fractions))] += n - sum(counts)
    return counts


def _condition_names(conditions: Mapping | None, n: int, rng: np.random.Generator) -> list[str]:
    names = ["none"] * n
    if not conditions:
        return names
    keys = list(conditions)
    if all(isinstance(k, str) for k in keys):
        for name in keys:
            _check_condition(name, "conditions")
            frac = conditions[name]
            if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0 <= frac <= 1:
                raise ValueError(f"Expected argument `conditions[{name!r}]` to be a fraction in [0, 1], but got {frac!r}")
        counts = {name: int(round(conditions[name] * n)) for name in PLANTED_CONDITIONS if name in conditions}
        if sum(counts.values()) > n:
            raise ValueError(f"Expected argument `conditions` to plant at most {n} subjects, but the fractions give {counts}")
        order = iter(rng.permutation(n).tolist())
        for name, count in counts.items():
            for _ in range(count):
                names[next(order)] = name
        return names
    for key, name in conditions.items():
        if not isinstance(key, (int, np.integer)) or isinstance(key, bool) or not 0 <= int(key) < n:
            raise ValueError(
                f"Expected argument `conditions` to map condition names to fractions, or subject indices in [0, {n}) "
                f"to condition names, but got key {key!r}"
            )
        names[int(key)] = _check_condition(name, f"conditions[{key}]")
    return names


def _check_condition(name: object, argument: str) -> str:
    if name not in PLANTED_CONDITIONS:
        raise ValueError(f"Expected argument `{argument}` to name one of {PLANTED_CONDITIONS}, but got {name!r}"
                         f"{did_you_mean(name, PLANTED_CONDITIONS)}")
    return str(name)


def plan_cohort(
    n_subjects: int,
    *,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    conditions: Mapping | None = None,
    degraded_scanner: str | None = None,
) -> list[SubjectPlan]:
    """Decide every subject's demographics, scanner, split and planted condition (no voxels).

    Args: see :func:`generate_cohort`.

    Returns:
        One :class:`SubjectPlan` per subject, in index order.

    Raises:
        ValueError: an argument is out of range or names an unknown condition or scanner.
    """
    positive_int("n_subjects", n_subjects)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"Expected argument `seed` to be a non-negative integer, but got {seed!r}")
    models = [s[2] for s in SCANNERS]
    if degraded_scanner is not None and degraded_scanner not in models:
        raise ValueError(f"Expected argument `degraded_scanner` to be None or one of {models}, but got {degraded_scanner!r}"
                         f"{did_you_mean(degraded_scanner, models)}")
    n = int(n_subjects)
    fractions = _check_fractions(split_fractions)
    cohort_rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(2**32 - 1,)))
    counts = _split_counts(n, fractions)
    splits = np.array(["train"] * counts[0] + ["val"] * counts[1] + ["test"] * counts[2])[cohort_rng.permutation(n)]
    condition = _condition_names(conditions, n, cohort_rng)
    plans = []
    for i in range(n):
        rng = np.random.default_rng(_subject_seeds(int(seed), i)[0])
        sex = str(rng.choice(["m", "f"]))
        age = int(rng.integers(20, 91))
        scanner = SCANNERS[int(rng.integers(len(SCANNERS)))]
        study = str(rng.choice(STUDY_TYPES))
        degraded = scanner[2] == degraded_scanner
        noise = scanner[4] * float(rng.uniform(0.9, 1.1)) * (DEGRADED_NOISE_FACTOR if degraded else 1.0)
        plans.append(SubjectPlan(i, f"s{i:04d}", sex, age, scanner, study, str(splits[i]), condition[i], degraded, noise, int(seed)))
    return plans


def _generate_planned(plan: SubjectPlan, shape: tuple[int, int, int], spacing: float | Sequence[float]):
    rng = plan.anatomy_rng()
    blur = DEGRADED_BLUR_MM if plan.degraded else BLUR_MM
    return generate_subject(rng, shape, spacing, sex=plan.sex, age=plan.age, noise_sd=plan.noise_sd,
                            condition=plan.condition, blur_mm=blur)


# ---- writing -------------------------------------------------------------------------------------------
def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def _subject_complete(folder: Path) -> bool:
    seg = folder / "segmentations"
    return (folder / "ct.nii.gz").is_file() and all((seg / f"{n}.nii.gz").is_file() for n in STRUCTURES)


def _write_subject(plan: SubjectPlan, root: Path, shape, spacing) -> None:
    hu, masks, affine = _generate_planned(plan, shape, spacing)
    tmp = root / PARTIAL / plan.image_id
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "segmentations").mkdir(parents=True)
    _save_nifti(hu, affine, tmp / "ct.nii.gz")
    for name, mask in masks.items():
        _save_nifti(mask, affine, tmp / "segmentations" / f"{name}.nii.gz")
    final = root / plan.image_id
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _write_meta(root: Path, plans: Sequence[SubjectPlan]) -> None:
    lines = [";".join(META_COLUMNS)] + [";".join(p.meta_row()[c] for c in META_COLUMNS) for p in plans]
    atomic_write_text(root / "meta.csv", "\ufeff" + "\n".join(lines) + "\n")


def _is_cohort_entry(path: Path) -> bool:
    name = path.name
    return (
        name in ("meta.csv", MARKER, PARTIAL)
        or bool(TEMPORARY_PATTERN.fullmatch(name))  # left by a killed write
        or (path.is_dir() and bool(_SUBJECT_DIR.match(name)))
    )


def _prepare_root(root: Path, settings: dict, overwrite: bool) -> None:
    """Check that ``root`` is empty or a cohort written with the same settings; clear it on ``overwrite``."""
    if root.exists() and not root.is_dir():
        raise DataError(f"cohort root {root} exists and is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a parent is a file, no permission, read-only disk...
        raise DataError(f"cohort root {root}: cannot create the folder ({err.strerror or err}); expected a writable folder path") from err
    entries = sorted(root.iterdir())
    foreign = [p.name for p in entries if not _is_cohort_entry(p)]
    if overwrite:
        for p in entries:
            if _is_cohort_entry(p):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if foreign:
            log.warning("cohort root %s also holds %s, which were left alone", root, foreign[:5])
    else:
        if foreign:
            raise DataError(
                f"cohort root {root} holds content that is not a synthetic cohort ({foreign[:5]}); "
                "expected an empty folder or one written by generate_cohort (pass overwrite=True to write there anyway)"
            )
        marker = root / MARKER
        ours = [p.name for p in entries if p.name not in (MARKER, PARTIAL) and not TEMPORARY_PATTERN.fullmatch(p.name)]
        if not marker.is_file() and ours:
            raise DataError(
                f"cohort root {root} holds {ours[:5]} but no {MARKER}: it was not written by generate_cohort; "
                "expected an empty folder (pass overwrite=True to replace it)"
            )
        if marker.is_file():
            try:
                before = json.loads(marker.read_text())
            except (OSError, ValueError) as err:
                raise DataError(f"{marker}: cannot read the cohort settings ({err}); pass overwrite=True to regenerate") from err
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            if changed:
                diffs = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
                raise DataError(
                    f"cohort root {root} was generated with other settings ({diffs}); "
                    "pass overwrite=True to regenerate it, or choose another folder"
                )
    if (root / PARTIAL).exists():
        shutil.rmtree(root / PARTIAL)
    remove_temporaries(root)
    atomic_write_text(root / MARKER, json.dumps(settings, indent=1, sort_keys=True))


def generate_cohort(
    root: str | Path,
    n_subjects: int = 36,
    *,
    seed: int = 0,
    shape: Sequence[int] = (80, 80, 80),
    spacing: float = 4.0,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    conditions: Mapping | None = None,
    degraded_scanner: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic thorax cohort in the TotalSegmentator v2 layout.

    Args:
        root: the dataset folder (created if missing).
        n_subjects: number of subjects ``s0000 ...``.
        seed: everything is a function of ``seed`` and the subject index.
        shape: grid size (voxels, axes R, A, S).
        spacing: voxel size in mm (isotropic, or three numbers).
        split_fractions: train / val / test fractions; with ``n_subjects >= 3`` every split with a
            positive fraction gets at least one subject.
        conditions: planted conditions, either ``{name: fraction of subjects}`` or
            ``{subject index: name}``; names from ``phantom.PLANTED_CONDITIONS``. ``None``: none.
        degraded_scanner: a ``scanner_model`` from ``SCANNERS`` whose scans get
            ``DEGRADED_NOISE_FACTOR`` times the noise and ``DEGRADED_BLUR_MM`` blur (``degraded=1``).
        progress: show a tqdm bar on stderr.
        overwrite: regenerate everything (cohort files only; other files in ``root`` are left alone).

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: an argument is out of range.
        DataError: ``root`` holds something else, or a cohort written with other settings, and
            ``overwrite`` is False.

    Example:
        >>> generate_cohort("data/synthetic_thorax", 36, seed=0, conditions={"mirrored_heart": 0.1})
    """
    shape = check_shape(shape)
    plans = plan_cohort(n_subjects, seed=seed, split_fractions=split_fractions, conditions=conditions,
                        degraded_scanner=degraded_scanner)
    spacing_list = [float(spacing)] * 3 if np.isscalar(spacing) else [float(s) for s in spacing]
    if len(spacing_list) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_list):
        raise ValueError(f"Expected argument `spacing` to be a positive number or three positive numbers (mm), but got {spacing!r}")
    cond = None if conditions is None else sorted([str(k), v] for k, v in conditions.items())
    settings = {
        "format": _FORMAT_VERSION, "n_subjects": int(n_subjects), "seed": int(seed), "shape": list(shape),
        "spacing": spacing_list, "split_fractions": [float(f) for f in split_fractions], "conditions": cond,
        "degraded_scanner": degraded_scanner,
    }
    root = Path(root)
    _prepare_root(root, settings, overwrite)
    from tqdm.auto import tqdm

    done = 0
    for plan in tqdm(plans, desc="synthetic cohort", unit="subject", disable=not progress, file=sys.stderr):
        folder = root / plan.image_id
        if _subject_complete(folder):
            continue
        if folder.exists():
            log.warning("subject %s is incomplete; generating it again", folder)
        _write_subject(plan, root, shape, spacing_list)
        done += 1
    shutil.rmtree(root / PARTIAL, ignore_errors=True)
    _write_meta(root, plans)
    log.info("cohort %s: %d subjects written, %d already complete", root, done, len(plans) - done)
    return root


# ---- preview -------------------------------------------------------------------------------------------
def save_preview(subject_dir: str | Path, png_path: str | Path) -> Path:
    """Save a montage of one subject: axial, coronal and sagittal slices of HU and of the thorax labels.

    Slices are shown in the radiological convention (patient's right on the image's left, anterior
    up on axial slices). Structures outside the label mapping are drawn in grey.

    Args:
        subject_dir: a subject folder (``ct.nii.gz`` + ``segmentations/``).
        png_path: where to write the PNG.

    Returns:
        ``png_path`` as a Path.

    Raises:
        DataError: the folder lacks ``ct.nii.gz`` or ``segmentations/``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from agg2exp_lightning.data.nifti import load_nifti
    from agg2exp_lightning.labels import THORAX_CLASSES, load_structure_mapping

    subject_dir = Path(subject_dir)
    seg = subject_dir / "segmentations"
    if not seg.is_dir():
        raise DataError(f"subject {subject_dir}: expected a folder {seg} of structure masks")
    ct, affine = load_nifti(subject_dir / "ct.nii.gz", what=f"CT of subject {subject_dir.name}")
    owner = {s: THORAX_CLASSES.index(label) for label, ss in load_structure_mapping().items() for s in ss}
    labels = np.zeros(ct.shape, np.int16)
    for path in sorted(seg.glob("*.nii.gz")):
        mask, _ = load_nifti(path, what=str(path))
        labels[mask > 0] = owner.get(path.name[: -len(".nii.gz")], -1)
    spacing = np.abs(np.diag(affine)[:3])

    def centre(label: int, axis: int) -> int:
        hits = np.nonzero(labels == label)[axis]
        return int(np.median(hits)) if hits.size else ct.shape[axis] // 2

    cls = THORAX_CLASSES.index
    views = [  # (title, slicer, aspect)
        ("axial (thyroid)", lambda a: a[::-1, ::-1, centre(cls("thyroid_gland"), 2)].T, spacing[1] / spacing[0]),
        ("axial (carina)", lambda a: a[::-1, ::-1, np.nonzero(labels == cls("trachea"))[2].min() if (labels == cls("trachea")).any() else ct.shape[2] // 2].T, spacing[1] / spacing[0]),
        ("axial (heart)", lambda a: a[::-1, ::-1, centre(cls("heart"), 2)].T, spacing[1] / spacing[0]),
        ("coronal (trachea)", lambda a: a[::-1, centre(cls("trachea"), 1), ::-1].T, spacing[2] / spacing[0]),
        ("sagittal (midline)", lambda a: a[centre(cls("vertebrae"), 0), ::-1, ::-1].T, spacing[2] / spacing[1]),
        ("sagittal (right lung)", lambda a: a[centre(cls("lung_middle_lobe_right"), 0) if (labels == cls("lung_middle_lobe_right")).any() else centre(cls("lung_upper_lobe_right"), 0), ::-1, ::-1].T, spacing[2] / spacing[1]),
    ]
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[: len(THORAX_CLASSES) - 1]
    cmap = ListedColormap(np.vstack([[0.6, 0.6, 0.6, 1.0], colours]))
    fig, axes = plt.subplots(2, len(views), figsize=(3.2 * len(views), 7.2))
    for col, (title, view, aspect) in enumerate(views):
        axes[0, col].imshow(view(ct), cmap="gray", vmin=-1000, vmax=800, aspect=aspect)
        axes[0, col].set_title(title, fontsize=9)
        axes[1, col].imshow(view(ct), cmap="gray", vmin=-1000, vmax=800, aspect=aspect)
        lab = view(labels)
        shown = np.ma.masked_where(lab == 0, np.where(lab < 0, 0, lab))
        axes[1, col].imshow(shown, cmap=cmap, vmin=0, vmax=len(THORAX_CLASSES) - 1, alpha=0.6, interpolation="nearest", aspect=aspect)
        for ax in axes[:, col]:
            ax.axis("off")
    handles = [Patch(color=colours[i - 1], label=THORAX_CLASSES[i]) for i in range(1, len(THORAX_CLASSES))]
    handles.append(Patch(color=(0.6, 0.6, 0.6), label="unmapped structure"))
    fig.legend(handles=handles, loc="lower center", ncol=9, fontsize=7, frameon=False)
    fig.suptitle(f"{subject_dir.name}: HU window [-1000, 800] (top), labels (bottom); patient's right on the left", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return png_path


# ---- command line --------------------------------------------------------------------------------------
def _condition_arg(text: str) -> tuple[str, float]:
    name, sep, frac = text.partition("=")
    try:
        value = float(frac)
    except ValueError:
        value = float("nan")
    if not sep or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected NAME=FRACTION (e.g. pleural_effusion=0.1), got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``agg2exp-make-cohort`` (separate so tests and docs can inspect it)."""
    from agg2exp_lightning.cli_common import ArgumentParser, add_version_argument

    parser = ArgumentParser(prog="agg2exp-make-cohort", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="dataset folder to write")
    parser.add_argument("--n-subjects", type=int, default=36, help="number of subjects (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the anatomy, noise and planted conditions (default %(default)s)")
    parser.add_argument("--shape", type=int, nargs="+", default=[80, 80, 80], help="one or three sizes in voxels")
    parser.add_argument("--spacing", type=float, default=4.0, help="isotropic voxel size in mm")
    parser.add_argument("--condition", type=_condition_arg, action="append", default=[], metavar="NAME=FRACTION",
                        help=f"plant a condition in a fraction of subjects (repeatable); names: {', '.join(PLANTED_CONDITIONS[1:])}")
    parser.add_argument("--degraded-scanner", default=None, help=f"scanner model made noisier: {', '.join(s[2] for s in SCANNERS)}")
    parser.add_argument("--overwrite", action="store_true", help="regenerate an existing cohort")
    parser.add_argument("--preview", default=None, metavar="PNG", help="also save a montage of the first subject")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    add_version_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``agg2exp-make-cohort``: write a synthetic thorax cohort (see :func:`generate_cohort`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.shape) not in (1, 3):
        parser.error(f"--shape takes one or three sizes, got {args.shape}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    shape = args.shape * 3 if len(args.shape) == 1 else args.shape
    try:
        root = generate_cohort(
            args.root, args.n_subjects, seed=args.seed, shape=shape, spacing=args.spacing,
            conditions=dict(args.condition) or None, degraded_scanner=args.degraded_scanner,
            progress=not args.quiet, overwrite=args.overwrite,
        )
        if args.preview:
            save_preview(root / "s0000", args.preview)
    except ValueError as err:  # DataError included
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
