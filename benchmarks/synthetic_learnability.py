"""Is the synthetic cohort learnable? A per-voxel baseline with no learned spatial context.

Gradient boosting (scikit-learn) on HU at four smoothing scales plus the voxel position relative to
the body's centre, on 64^3 volumes at 5 mm (the demo's training grid): trained on 6 subjects, Dice
per thorax label on 3 others. A segmentation network sees far more context than this, so the
per-label Dice here is a floor on what the data allow, not a prediction of the network's score.

Usage: python benchmarks/synthetic_learnability.py
"""
from __future__ import annotations

import time

import numpy as np
from scipy import ndimage
from sklearn.ensemble import HistGradientBoostingClassifier

from agg2exp_lightning.data.phantom import generate_subject
from agg2exp_lightning.data.synthetic import SCANNERS
from agg2exp_lightning.labels import THORAX_CLASSES, load_structure_mapping
from agg2exp_lightning.utils.hardware import hardware_line


def features(index: int) -> tuple[np.ndarray, np.ndarray]:
    owner = {s: THORAX_CLASSES.index(label) for label, ss in load_structure_mapping().items() for s in ss}
    hu, masks, _ = generate_subject(
        np.random.default_rng([7, index]), (64, 64, 64), 5.0, sex="mf"[index % 2], age=25 + 7 * (index % 10),
        noise_sd=SCANNERS[index % len(SCANNERS)][4],
    )
    labels = np.zeros(hu.shape, np.uint8)
    for name, mask in masks.items():
        if name in owner:
            labels[mask > 0] = owner[name]
    h = hu.astype(np.float32)
    cols = [h] + [ndimage.gaussian_filter(h, s) for s in (1.0, 2.5, 5.0)]
    body = ndimage.binary_fill_holes(cols[1] > -500)
    centre = ndimage.center_of_mass(body)
    cols += [g - c for g, c in zip(np.meshgrid(*[np.arange(64, dtype=np.float32)] * 3, indexing="ij"), centre)]
    return np.stack([c.ravel() for c in cols], 1), labels.ravel()


def main() -> None:
    print(hardware_line(), flush=True)
    start = time.perf_counter()
    train = [features(i) for i in range(6)]
    test = [features(i) for i in range(100, 103)]
    x = np.concatenate([f for f, _ in train])
    y = np.concatenate([lab for _, lab in train])
    keep = (y > 0) | (np.random.default_rng(0).random(y.size) < 0.15)
    clf = HistGradientBoostingClassifier(max_iter=250, learning_rate=0.1, max_leaf_nodes=63, random_state=0)
    clf.fit(x[keep], y[keep])
    dice = np.zeros((len(test), len(THORAX_CLASSES) - 1))
    for i, (f, lab) in enumerate(test):
        pred = clf.predict(f)
        for c in range(1, len(THORAX_CLASSES)):
            dice[i, c - 1] = 2 * np.sum((pred == c) & (lab == c)) / max(np.sum(pred == c) + np.sum(lab == c), 1)
    for name, d in zip(THORAX_CLASSES[1:], dice.mean(0)):
        print(f"{name:26s} {d:.3f}")
    print(f"mean foreground Dice {dice.mean():.3f}  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
