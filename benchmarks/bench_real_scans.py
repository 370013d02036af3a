"""Real chest CTs at full size through a checkpoint: time and peak memory of each step, and the memory estimate.

Usage:
    python benchmarks/bench_real_scans.py --checkpoint runs/demo/checkpoints/best.ckpt \\
        --scans ../shared/data/real_ct/chest_cta.nii.gz ../shared/data/real_ct/lung2_image.nrrd

Per scan, each step runs in its own fresh process (glibc keeps freed memory, which would hide a later
peak), with the inputs it needs prepared before the clock starts:
    read      ``read_volume`` + the audit's preprocessing (RAS, the checkpoint's spacing, HU window, body crop)
    predict   sliding-window inference (the checkpoint's window), under ``torch.inference_mode``
    vg        ``explain(..., method="vanilla_gradient")``, every class, the checkpoint's window
    sg        ``explain(..., method="smoothgrad", n_samples=N)`` (reduced samples)
    maps      the vg step's maps and prediction written back onto the file's grid (``write_scan_maps``) and
              the three-view figures of one class (``draw_scan_figures``)
Peak memory is the resident set size's rise over the step (sampled every 5 ms). The explanation steps
also give :func:`~agg2exp_lightning.explain.memory.explain_memory_estimate` with the per-voxel constant
probed for this model in another fresh process (what ``explain`` uses), and estimate / measured.
Last, the refusal: the first scan at its own voxel size without sliding windows, under a memory budget
(``--budget-gib``), must be refused by ``explain`` with the estimate before any model pass.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
STEPS = ("read", "predict", "vg", "sg", "maps")


def _prepare(args: argparse.Namespace):
    """The model, and the scan as the audit preprocesses it (``[1, 1, *S]`` MetaTensor)."""
    import dataclasses

    from agg2exp_lightning.audit.scan_audit import PerScanTransform
    from agg2exp_lightning.data.subjects import SubjectRecord
    from agg2exp_lightning.labels import load_structure_mapping
    from agg2exp_lightning.model_loading import load_model

    loaded = load_model(args.checkpoint)
    spacing = tuple(args.spacing or loaded.spacing or (1.5, 1.5, 1.5))
    record = SubjectRecord(Path(args.scan).name.split(".")[0], str(args.scan), None, "manifest", "test", {})
    transform = PerScanTransform(load_structure_mapping(), loaded.num_classes, spacing, loaded.class_names)
    return loaded, spacing, record, lambda: transform(dataclasses.asdict(record))


def _child(args: argparse.Namespace) -> dict:
    from bench_explain import PeakRSS

    torch.set_num_threads(args.threads)
    loaded, spacing, record, load = _prepare(args)
    model = loaded.model
    if args.stage == "read":
        with PeakRSS() as mem:
            t = time.perf_counter()
            item = load()
            wall = time.perf_counter() - t
        return {"wall": wall, "peak_mib": mem.peak_mib, "shape": list(item["image"].shape[1:])}
    item = load()
    image = item["image"][None]
    if args.stage == "probe":
        from agg2exp_lightning.explain.memory import probe_pass_bytes_per_voxel
        from agg2exp_lightning.explain.precision import resolve_precision, with_precision

        used = resolve_precision("auto", "cpu")  # as explain's default runs the model
        probed = probe_pass_bytes_per_voxel(with_precision(model, used, "cpu")[0], tuple(image.shape[2:]), loaded.roi_size)
        return {"bytes_per_voxel": probed, "precision": used}
    from agg2exp_lightning.explain import explain

    if args.stage == "predict":
        from monai.inferers import sliding_window_inference

        with PeakRSS() as mem, torch.inference_mode():
            t = time.perf_counter()
            logits = sliding_window_inference(image.as_tensor(), loaded.roi_size, loaded.sw_batch_size, model,
                                              overlap=loaded.overlap, mode=loaded.sw_mode)
            labels = logits.argmax(1)
            wall = time.perf_counter() - t
        counts = torch.bincount(labels.flatten(), minlength=loaded.num_classes)
        return {"wall": wall, "peak_mib": mem.peak_mib,
                "predicted": {loaded.class_names[i]: int(c) for i, c in enumerate(counts.tolist()) if c}}
    if args.stage == "refuse":
        from agg2exp_lightning.explain.memory import ExplanationTooLarge

        t = time.perf_counter()
        try:
            explain(model, image, method="vanilla_gradient", max_memory=args.budget_gib * 2**30,
                    pass_bytes_per_voxel=args.bytes_per_voxel)
        except ExplanationTooLarge as err:
            return {"wall": time.perf_counter() - t, "refused": str(err).splitlines()[0], "shape": list(image.shape[2:])}
        return {"wall": time.perf_counter() - t, "refused": None, "shape": list(image.shape[2:])}
    opts = {"n_samples": args.sg_samples} if args.stage == "sg" else {}
    method = "smoothgrad" if args.stage == "sg" else "vanilla_gradient"
    if args.stage == "maps":  # the vg step's maps (saved by it)
        saved = torch.load(Path(args.out_dir) / f"{record.subject_id}_vg.pt", weights_only=True)
        from agg2exp_lightning.audit.maps import ScanGeometry, write_scan_maps
        from agg2exp_lightning.audit.scan_figures import draw_scan_figures

        out = Path(args.out_dir)
        with PeakRSS() as mem:
            t = time.perf_counter()
            geometry = ScanGeometry.from_meta(item["image"].meta)
            paths = write_scan_maps(out / "maps", record.subject_id, geometry, saved["attributions"], saved["prediction"],
                                    list(loaded.class_names))
            t_maps = time.perf_counter() - t
            figures = draw_scan_figures(out / "maps", out / "figures", record.subject_id, record.image, [args.figure_class])
            wall = time.perf_counter() - t
        return {"wall": wall, "maps_wall": t_maps, "figures_wall": wall - t_maps, "peak_mib": mem.peak_mib,
                "files": [str(p) for p in paths.values()][:2], "figures": [str(f["figure"]) for f in figures]}
    from agg2exp_lightning.explain.memory import explain_memory_estimate
    from agg2exp_lightning.utils import plain_tensor

    with PeakRSS() as mem:
        t = time.perf_counter()
        result = explain(model, image, method=method, pass_bytes_per_voxel=args.bytes_per_voxel, **loaded.window, **opts)
        wall = time.perf_counter() - t
    if method == "vanilla_gradient":  # for the maps step
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        torch.save({"attributions": torch.as_tensor(plain_tensor(result.attributions)).detach().cpu(),
                    "prediction": torch.as_tensor(plain_tensor(result.prediction)).detach().cpu()},
                   Path(args.out_dir) / f"{record.subject_id}_vg.pt")
    est = explain_memory_estimate(tuple(image.shape[2:]), method, num_classes=loaded.num_classes, num_targets=loaded.num_classes,
                                  roi_size=loaded.roi_size, sw_batch_size=loaded.sw_batch_size, batch_size=4,
                                  pass_bytes_per_voxel=args.bytes_per_voxel)
    return {"wall": wall, "peak_mib": mem.peak_mib, "estimate_mib": est.total / 2**20, "estimate": est.describe(),
            "classes_predicted": int(len(torch.unique(torch.as_tensor(result.prediction)))),
            "precision": result.diagnostics.get("precision")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--scans", nargs="+", default=[])
    parser.add_argument("--spacing", type=float, nargs=3, help="default: the checkpoint's")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--sg-samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-gib", type=float, default=16.0, help="memory budget of the refusal check")
    parser.add_argument("--figure-class", default="heart")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_real_scans"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "real_scans.md")
    parser.add_argument("--scan", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--bytes-per-voxel", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(_child(args)))
        return
    if not args.scans:
        parser.error("--scans: give at least one scan")
    from agg2exp_lightning.utils import atomic_write_text
    from agg2exp_lightning.utils.hardware import hardware_line

    base = [sys.executable, __file__, "--checkpoint", args.checkpoint, "--threads", str(args.threads), "--sg-samples", str(args.sg_samples),
            "--out-dir", str(args.out_dir), "--figure-class", args.figure_class, "--budget-gib", str(args.budget_gib)]
    if args.spacing:
        base += ["--spacing", *map(str, args.spacing)]

    def run(scan: str, stage: str, *extra: str) -> dict:
        proc = subprocess.run([*base, "--scan", scan, "--stage", stage, *extra], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(scan).name} {stage}: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(Path(scan).name, stage, result, flush=True)
        return result

    rows = []
    for scan in args.scans:
        bpv = run(scan, "probe")["bytes_per_voxel"]
        for step in args.steps:
            r = run(scan, step, "--bytes-per-voxel", str(bpv))
            rows.append({"scan": Path(scan).name, "step": step, **r})
    refusal = None
    if args.scans:
        scan = args.scans[0]
        # spacing 0: MONAI's Spacingd keeps the file's own voxel size; the fixed 8 KiB per voxel (no probe at this size)
        native = subprocess.run([sys.executable, __file__, "--checkpoint", args.checkpoint, "--threads", str(args.threads),
                                 "--budget-gib", str(args.budget_gib), "--scan", scan, "--stage", "refuse", "--bytes-per-voxel", "8192",
                                 "--spacing", "0", "0", "0"], capture_output=True, text=True)
        refusal = (json.loads(native.stdout.strip().splitlines()[-1]) if native.returncode == 0
                   else {"error": (native.stderr.strip().splitlines() or ["?"])[-1]})
        print("refusal", refusal, flush=True)
    lines = ["# Real chest CTs at full size: time and peak memory per step\n",
             f"Command: `python benchmarks/bench_real_scans.py {' '.join(sys.argv[1:])}`\n",
             f"{hardware_line()}; {args.threads} threads. Each step in a fresh process; "
             "peak = RSS rise over the step.\n",
             "| scan | step | model grid | wall s | peak MiB | estimate MiB | estimate / measured | notes |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    shapes = {r["scan"]: "x".join(map(str, r["shape"])) for r in rows if r["step"] == "read"}
    for r in rows:
        est = r.get("estimate_mib")
        note = ""
        if r["step"] == "predict":
            note = "predicted voxels: " + ", ".join(f"{k} {v}" for k, v in sorted(r["predicted"].items(), key=lambda kv: -kv[1]))
        elif r["step"] == "maps":
            note = f"maps {r['maps_wall']:.1f} s, figures {r['figures_wall']:.1f} s"
        elif est:
            note = f"{r['classes_predicted']} classes predicted; precision {r.get('precision')}"
        est_text = "" if est is None else f"{est:.0f}"
        ratio_text = "" if est is None else f"{est / max(r['peak_mib'], 1e-9):.2f}"
        lines.append(f"| {r['scan']} | {r['step']} | {shapes.get(r['scan'], '')} | {r['wall']:.1f} | {r['peak_mib']:.0f} | "
                     f"{est_text} | {ratio_text} | {note} |")
    if refusal:
        lines.append(f"\nRefusal: {Path(args.scans[0]).name} at its own voxel size, whole volume (no windows), budget "
                     f"{args.budget_gib:g} GiB: " + (f"refused after {refusal['wall']:.2f} s, before any model pass: "
                                                      f"`{refusal['refused']}`" if refusal.get("refused") else f"{refusal}"))
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
