"""Mixed precision on a trained model: attribution error against fp32 and the speed ratio.

Usage:
    python benchmarks/bench_precision.py --checkpoint runs/demo/checkpoints/best-epoch=15.ckpt \
        --data data/synthetic_thorax --scans s0001 s0002 [--precisions fp32 bf16 fp16] [--device cpu]

Each validation scan is preprocessed as the demo validates it (RAS, the checkpoint's spacing, the HU
window scaled to [0, 1]; no body crop), then explained for all classes with each method, once per
precision, through the checkpoint's sliding windows. Reported per method and precision: process CPU
seconds (CUDA: wall seconds, synchronised) summed over the scans and their ratio to fp32, the largest
absolute difference of the RoI mass shares from fp32's (over targets x regions, regions with a share
in both), and the share of voxels whose predicted label differs from fp32's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from agg2exp_lightning.utils import atomic_write_text
from agg2exp_lightning.utils.hardware import hardware_line

SETTINGS = {"vanilla_gradient": {}, "smoothgrad": {"n_samples": 4, "seed": 0}, "integrated_gradients": {"n_steps": 4},
            "kernelshap_semantic": {"n_samples": 40, "seed": 0}}


def load_scan(path: Path, spacing) -> torch.Tensor:
    from monai import transforms as T

    from agg2exp_lightning.data.transforms import HU_WINDOW

    tf = T.Compose([T.LoadImaged("image", image_only=True), T.EnsureChannelFirstd("image"), T.Orientationd("image", axcodes="RAS"),
                    T.Spacingd("image", pixdim=tuple(spacing), mode="bilinear"),
                    T.ScaleIntensityRanged("image", a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True)])
    return torch.as_tensor(tf({"image": str(path)})["image"]).float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="cohort root (<root>/<scan>/ct.nii.gz)")
    p.add_argument("--scans", nargs="+", required=True)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--methods", nargs="+", default=list(SETTINGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "precision_cpu.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from agg2exp_lightning.explain import explain
    from agg2exp_lightning.model_loading import load_model

    loaded = load_model(str(args.checkpoint))
    net = loaded.model.to(args.device)
    window = {"roi_size": loaded.roi_size, "sw_batch_size": loaded.sw_batch_size, "overlap": loaded.overlap, "mode": loaded.sw_mode}
    images = [load_scan(args.data / s / "ct.nii.gz", loaded.spacing).to(args.device) for s in args.scans]
    cuda = args.device.startswith("cuda")
    rows = []
    for method in args.methods:
        ref = None
        for precision in ["fp32"] + [q for q in args.precisions if q != "fp32"]:
            secs, used, results = 0.0, None, []
            explain(net, images[0], method="vanilla_gradient", precision=precision, keep_attributions=False, **window)  # warm-up
            for image in images:
                if cuda:
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                res = explain(net, image, method=method, precision=precision, keep_attributions=False, **window, **SETTINGS[method])
                if cuda:
                    torch.cuda.synchronize()
                secs += (time.perf_counter() - t0) if cuda else (time.process_time() - c0)
                used = res.diagnostics["precision"]
                results.append(res)
            if precision == "fp32":
                ref, ref_s = results, secs
            err = max(float((r.roi - f.roi)[torch.isfinite(r.roi) & torch.isfinite(f.roi)].abs().max()) for r, f in zip(results, ref))
            flips = sum(float((r.prediction != f.prediction).float().mean()) for r, f in zip(results, ref)) / len(ref)
            rows.append((method, precision, used, secs, ref_s / secs, err, flips))
            print(rows[-1], flush=True)
    clock = "wall s (CUDA)" if cuda else "CPU s"
    lines = ["# Mixed precision vs fp32\n", f"Command: `python benchmarks/bench_precision.py {' '.join(sys.argv[1:])}`\n",
             f"Model: {args.checkpoint} ({type(net).__name__}), scans {', '.join(args.scans)}, windows {window}, device {args.device}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}. Settings: "
             + "; ".join(f"{m} {s or '-'}" for m, s in SETTINGS.items() if m in args.methods) + ".\n",
             f"| method | precision asked | ran as | {clock} | speed-up vs fp32 | max abs RoI share difference | predicted labels changed |",
             "|---|---|---|---:|---:|---:|---:|"]
    for m, q, u, s, sp, e, f in rows:
        lines.append(f"| {m} | {q} | {u} | {s:.1f} | {sp:.2f}x | {e:.4f} | {100 * f:.2f}% |")
    text = "\n".join(lines) + "\n"
    text = hardware_line() + "\n\n" + text
    print(text)
    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
