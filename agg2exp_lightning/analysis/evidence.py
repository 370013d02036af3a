"""Evidence families of the scan-level score beside the explanation's shares (pure functions).

The paper's aggregates (the **shares** ``e_{b->a}`` of each class's attribution mass over the regions)
stay within clean variation for faults that change *how much* the model predicts or attributes
rather than *where*: a missing lobe, a metal artefact. Every audit computes the evidence for that
and used to throw it away. Three more families, per explained class ``a``:

- **prediction**: predicted volume (ml), number of connected components (26-connected), mean
  softmax confidence (the predicted class's probability) and mean softmax entropy (nats) over the
  voxels predicted as ``a``;
- **attribution**: total attribution mass ``sum |attribution|`` of ``a``'s map, and the share of
  it outside the body (voxels at or below :data:`~agg2exp_lightning.data.transforms.BODY_THRESHOLD`);
- **image**: the mean and the standard deviation of the model's input (after its preprocessing) over
  the voxels predicted as ``a``: what the model was given where it saw ``a``. A model can absorb an
  acquisition or density change (an artefact, noise, contrast, fluid) without changing its output or
  its explanation; the input inside its own prediction still shows it. Beside them, the number of
  those voxels whose input is the scan's lowest or highest value: where the preprocessing clips
  intensities to a window (``[-1024, 1024]`` HU here, percentiles in nnU-Net), everything beyond it
  reaches the model as one value, so this counts what the model cannot tell apart (an implant, a
  wrong rescale, contrast above the window); without clipping it is about one voxel. For the
  background (label 0) only its voxels **inside the body** count: the tissue the model assigned to no
  structure (an unlabelled organ, fluid, a foreign object), not the air around the patient, whose
  amount depends on the field of view.

Each family is scored like the shares (:func:`~agg2exp_lightning.analysis.anomaly.scan_anomaly_scores`:
one set of cross-fitted detectors per family and class, the scan-level score's detector, by default the
robust distance; a p-value per family and class), and all p-values are combined and calibrated together. Scale-like features (volume, mass) enter the
detectors as ``log1p`` so that a halving counts the same for a small and a large structure (a general
choice, made before any benchmark). Counts of things (connected components, voxels at the input's
bounds) enter through Anscombe's transform ``2 sqrt(n + 3/8)``, under which a Poisson count has a
standard deviation of about 1 whatever its mean: a count that is constant in the reference (no
spread to scale by, so :class:`~agg2exp_lightning.analysis.detectors.RobustDistance` falls back to a
scale of 1) is then measured in its own counting noise, where ``log1p`` made 1 -> 47 voxels worth
only 3.2 such units.

Missing evidence. A class that is not predicted has no confidence, entropy or components to speak of,
and a scan without body voxels has no outside-the-body share: the family is **left out** for that scan
and class (NaN, no p-value, not a zero) and the reason is named in the scan's row
(:func:`missing_evidence`). The shares keep their own rule (a class the scan lacks is most anomalous).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALL_EVIDENCE",
    "FAMILIES",
    "PAPER_EVIDENCE",
    "TRANSFORMS",
    "EvidenceFeature",
    "anscombe",
    "attribution_evidence",
    "family_matrix",
    "forest_features",
    "image_evidence",
    "missing_evidence",
    "parse_evidence",
    "prediction_evidence",
    "scan_evidence",
    "voxel_ml_from_affine",
    "softmax_summary",
]


@dataclass(frozen=True)
class EvidenceFeature:
    """One feature of a family: its key in the records, how a person names it, its unit, its transform."""

    key: str
    words: str  # "{cls} volume": the class name goes in
    unit: str  # "ml", "" (a count or plain number), "nats" or "share" (a fraction in [0, 1])
    transform: str  # how the detectors see it: "log1p", "anscombe" (a count) or "none" (see TRANSFORMS)


#: The families beside the shares, and their features in record order.
FAMILIES: dict[str, tuple[EvidenceFeature, ...]] = {
    "prediction": (
        EvidenceFeature("volume_ml", "{cls} volume", "ml", "log1p"),
        EvidenceFeature("components", "{cls} connected components", "", "anscombe"),
        EvidenceFeature("confidence", "{cls} mean softmax confidence", "", "none"),
        EvidenceFeature("entropy", "{cls} mean softmax entropy", "nats", "none"),
    ),
    "attribution": (
        EvidenceFeature("mass", "{cls} attribution mass", "", "log1p"),
        EvidenceFeature("outside_body", "{cls} attribution share outside the body", "share", "none"),
    ),
    "image": (
        EvidenceFeature("intensity_mean", "{cls} mean input intensity", "", "none"),
        EvidenceFeature("intensity_sd", "{cls} input intensity standard deviation", "", "none"),
        EvidenceFeature("at_input_bounds", "{cls} voxels at the input's lowest or highest value", "", "anscombe"),
    ),
}
#: Every family, the default of ``--evidence``.
ALL_EVIDENCE = ("shares", "prediction", "attribution", "image")
#: The paper protocol's evidence: the shares alone.
PAPER_EVIDENCE = ("shares",)


def parse_evidence(value: str | Sequence[str] | None, *, default: Sequence[str] = ALL_EVIDENCE) -> tuple[str, ...]:
    """``"shares,prediction"`` (or a list) as a tuple of family names in canonical order.

    Raises:
        ValueError: naming the unknown family and the known ones, or an empty selection.
    """
    if value is None:
        return tuple(default)
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v and v.strip()]
    unknown = [v for v in items if v not in ALL_EVIDENCE]
    if unknown or not items:
        raise ValueError(f"Expected `evidence` to be a comma-separated selection of {', '.join(ALL_EVIDENCE)}, got {value!r}")
    return tuple(f for f in ALL_EVIDENCE if f in items)


def softmax_summary(logits, labels, num_classes: int, *, chunk_voxels: int = 1 << 18):
    """Per class, the mean softmax confidence and entropy over the voxels predicted as that class.

    Args:
        logits: ``[1, C, *S]`` (or ``[C, *S]``) logits, any float dtype (a torch tensor).
        labels: ``[*S]`` predicted labels (the argmax of ``logits``).
        num_classes: ``C``.
        chunk_voxels: voxels per softmax chunk (memory stays ``O(C chunk)`` for any volume).

    Returns:
        ``(confidence [C], entropy [C])`` float64 numpy arrays; NaN for a class with no voxel.
    """
    import torch

    x = logits.detach().reshape(num_classes, -1)
    lab = labels.detach().reshape(-1).to(x.device).long()
    conf = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    ent = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    count = torch.bincount(lab, minlength=num_classes).double()
    for start in range(0, x.shape[1], chunk_voxels):
        part = x[:, start : start + chunk_voxels].float()
        logp = torch.log_softmax(part, dim=0)
        p = logp.exp()
        top = p.max(dim=0).values.double()
        h = -(p * logp).sum(dim=0).double()
        idx = lab[start : start + chunk_voxels]
        conf.index_add_(0, idx, top)
        ent.index_add_(0, idx, h)
    with np.errstate(invalid="ignore", divide="ignore"):
        c, n = conf.cpu().numpy(), count.cpu().numpy()
        return np.where(n > 0, c / np.maximum(n, 1), np.nan), np.where(n > 0, ent.cpu().numpy() / np.maximum(n, 1), np.nan)


def prediction_evidence(labels: np.ndarray, class_ids: Sequence[int], voxel_ml: float, confidence: Sequence[float] | None = None,
                        entropy: Sequence[float] | None = None) -> dict[str, list[float]]:
    """The prediction family of one scan, per explained class (NaN where not computable).

    Args:
        labels: ``[*S]`` predicted labels.
        class_ids: the explained classes' label ids (row order).
        voxel_ml: volume of one voxel in ml.
        confidence, entropy: ``[C]`` from :func:`softmax_summary` (``None``: not available, NaN).

    Returns:
        ``{feature key: [T]}``; a class with no predicted voxel gets NaN throughout (not computable).
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=max(class_ids, default=0) + 1)
    out: dict[str, list[float]] = {f.key: [] for f in FAMILIES["prediction"]}
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for c in class_ids:
        n = int(counts[c]) if c < len(counts) else 0
        if n == 0:
            for key in out:
                out[key].append(math.nan)
            continue
        out["volume_ml"].append(n * float(voxel_ml))
        out["components"].append(float(ndimage.label(labels == c, structure=structure)[1]))
        out["confidence"].append(math.nan if confidence is None else float(confidence[c]))
        out["entropy"].append(math.nan if entropy is None else float(entropy[c]))
    return out


def attribution_evidence(attribution: np.ndarray, body: np.ndarray) -> dict[str, list[float]]:
    """The attribution family of one scan: per map, ``sum |a|`` and the share of it outside the body.

    Args:
        attribution: ``[T, *S]`` maps.
        body: ``[*S]`` bool, the body's voxels.

    Returns:
        ``{"mass": [T], "outside_body": [T]}``; NaN throughout when the body is empty, and a NaN share
        for a map with no mass (not computable).
    """
    a = np.abs(np.asarray(attribution, dtype=np.float64)).reshape(len(attribution), -1)
    body = np.asarray(body, dtype=bool).reshape(-1)
    if not body.any():
        return {"mass": [math.nan] * len(a), "outside_body": [math.nan] * len(a)}
    total = a.sum(axis=1)
    outside = a[:, ~body].sum(axis=1)
    share = np.where(total > 0, outside / np.where(total > 0, total, 1.0), np.nan)
    return {"mass": [float(v) for v in total], "outside_body": [float(v) for v in share]}


def image_evidence(image: np.ndarray, labels: np.ndarray, class_ids: Sequence[int], body: np.ndarray | None = None,
                   background_id: int = 0) -> dict[str, list[float]]:
    """The image family of one scan: per explained class, the mean and standard deviation of the input over its
    predicted voxels (the background's: those inside the body).

    Args:
        image: ``[*S]`` the model's input (one channel, after preprocessing).
        labels: ``[*S]`` predicted labels.
        class_ids: the explained classes' label ids (row order).
        body: ``[*S]`` bool body mask: the background class counts only its voxels inside it (``None``: all).
        background_id: the background's label id.

    Returns:
        ``{"intensity_mean": [T], "intensity_sd": [T], "at_input_bounds": [T]}`` (population sd; the number of the
        class's voxels whose input equals the scan's minimum or maximum); NaN for a class with no predicted voxel
        (the background: none inside the body).
    """
    x = np.asarray(image, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    if x.shape != lab.shape:
        raise ValueError(f"Expected the image and the prediction on one grid, got {np.shape(image)} and {np.shape(labels)}")
    bound = (x == x.min(initial=np.inf)) | (x == x.max(initial=-np.inf))  # the whole scan's range, before the body is cut
    if body is not None:
        inside = np.asarray(body, dtype=bool).reshape(-1)
        if inside.shape != lab.shape:
            raise ValueError(f"Expected the body mask on the prediction's grid, got {np.shape(body)} and {np.shape(labels)}")
        lab = np.where((lab == background_id) & ~inside, -1, lab)  # background outside the body: in no class
        keep = lab >= 0
        x, lab, bound = x[keep], lab[keep], bound[keep]
    k = max(max(class_ids, default=0), int(lab.max(initial=0))) + 1
    n = np.bincount(lab, minlength=k).astype(np.float64)
    s1 = np.bincount(lab, weights=x, minlength=k)
    at_bounds = np.bincount(lab, weights=bound.astype(np.float64), minlength=k)
    out: dict[str, list[float]] = {f.key: [] for f in FAMILIES["image"]}
    for c in class_ids:
        if n[c] == 0:
            for key in out:
                out[key].append(math.nan)
            continue
        mean = s1[c] / n[c]
        values = x[lab == c]
        out["intensity_mean"].append(float(mean))
        out["intensity_sd"].append(float(np.sqrt(np.mean((values - mean) ** 2))))
        out["at_input_bounds"].append(float(at_bounds[c]))
    return out


def scan_evidence(result, image, class_ids: Sequence[int], voxel_ml: float | None, body=None) -> dict[str, dict[str, list[float]]]:
    """The families beside the shares of one scan from an :class:`~agg2exp_lightning.explain.ExplanationResult` (the audit's and the
    monitors' one way of computing them).

    Args:
        result: what ``explain`` returned (``prediction``, ``diagnostics`` with the softmax summary,
            ``attributions`` or ``None`` when they were not kept).
        image: ``[1, 1, *S]`` (or ``[*S]``) the preprocessed scan (intensities scaled to [0, 1]).
        class_ids: the explained classes' label ids (the rows of the maps).
        voxel_ml: volume of one voxel in ml (``None``: volumes not computable).
        body: ``[*S]`` body mask on the model's grid, for a model source whose intensities are not the
            toolkit's window (:meth:`~agg2exp_lightning.model_loading.ScanRunner.scan_item`); ``None``:
            ``image`` above :data:`~agg2exp_lightning.data.transforms.BODY_THRESHOLD`.

    Returns:
        ``{"prediction": {feature: [T]}, "attribution": {feature: [T]}, "image": {feature: [T]}}`` with NaN where
        not computable (no maps kept, an empty body, a class not predicted).
    """
    import torch

    from agg2exp_lightning.data.transforms import BODY_THRESHOLD

    spatial = tuple(torch.as_tensor(image).shape[-3:])  # one 3D volume
    prediction = torch.as_tensor(result.prediction).detach().cpu().long().reshape(spatial)
    diag = getattr(result, "diagnostics", None) or {}
    t = len(class_ids)
    pred = prediction_evidence(prediction.numpy(), class_ids, math.nan if voxel_ml is None else float(voxel_ml),
                               diag.get("prediction_confidence"), diag.get("prediction_entropy"))
    maps = getattr(result, "attributions", None)
    maps = getattr(result, "attribution", None) if maps is None else maps
    image_t = torch.as_tensor(image).detach().float().cpu()
    one_channel = image_t.numel() == math.prod(spatial)
    if body is not None:
        body = torch.as_tensor(body).detach().cpu().reshape(spatial).numpy() > 0.5
    elif one_channel:  # the toolkit's intensities: the body is above the threshold of its HU window
        body = image_t.reshape(spatial).numpy() > BODY_THRESHOLD
    if maps is None or body is None:
        attr = {"mass": [math.nan] * t, "outside_body": [math.nan] * t}
    else:
        maps = torch.as_tensor(maps).detach().float().cpu().reshape(t, *spatial).numpy()
        attr = attribution_evidence(maps, body)
    if one_channel:
        img = image_evidence(image_t.reshape(spatial).numpy(), prediction.numpy(), class_ids, body=body)
    else:  # several input channels: no one intensity to summarise
        img = {f.key: [math.nan] * t for f in FAMILIES["image"]}
    return {"prediction": pred, "attribution": attr, "image": img}


def voxel_ml_from_affine(affine) -> float | None:
    """Volume of one voxel in ml from a ``4 x 4`` affine in mm (``|det|`` of its 3 x 3 part / 1000); ``None`` without one."""
    if affine is None:
        return None
    a = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=float).reshape(-1, 4, 4)[0]
    return float(abs(np.linalg.det(a[:3, :3]))) / 1000.0


def family_matrix(values: Mapping[str, Sequence[float]] | None, family: str, n_classes: int) -> np.ndarray:
    """``[T, F]`` features of one scan and family from its record's ``{key: [T]}`` (NaN where absent)."""
    feats = FAMILIES[family]
    if not values:
        return np.full((n_classes, len(feats)), np.nan)
    return np.stack([np.asarray([np.nan if v is None else v for v in values.get(f.key, [None] * n_classes)], dtype=float)
                     for f in feats], axis=1)


def anscombe(n: np.ndarray) -> np.ndarray:
    """Anscombe's variance-stabilising transform of counts, ``2 sqrt(n + 3/8)`` (negative counts read as 0).

    A Poisson count with mean ``lam`` has a standard deviation of ``1 + O(1/lam)`` after it (0.96 at
    ``lam = 2``, 1.00 from 5 on), so one unit is one count's worth of noise at any mean.
    """
    return 2.0 * np.sqrt(np.clip(np.asarray(n, dtype=float), 0.0, None) + 0.375)


#: How a feature's ``transform`` maps its raw values before the detectors see them.
TRANSFORMS = {"none": lambda v: v, "log1p": lambda v: np.log1p(np.clip(v, 0.0, None)), "anscombe": anscombe}


def forest_features(x: np.ndarray, family: str) -> np.ndarray:
    """``[..., F]`` features as the detectors see them (each feature through its ``transform``; NaN stays NaN)."""
    x = np.array(x, dtype=float, copy=True)
    for j, f in enumerate(FAMILIES[family]):
        x[..., j] = TRANSFORMS[f.transform](x[..., j])
    return x


def missing_evidence(evidence: Mapping[str, np.ndarray], classes: Sequence[str], families: Sequence[str]) -> list[str]:
    """Per scan, which family was left out for which classes, in words (``""`` when nothing was).

    Args:
        evidence: family -> ``[N, A, F]`` features (NaN where not computable).
        classes: the ``A`` class names.
        families: the families in use.

    Returns:
        ``N`` strings such as ``"prediction left out for heart, trachea (not computable: class not
        predicted or no softmax); attribution left out for every class (empty body or no maps)"``.
    """
    rows: list[list[str]] = []
    n = next((len(v) for v in evidence.values()), 0)
    for k in range(n):
        parts = []
        for fam in families:
            if fam not in evidence:
                continue
            bad = ~np.isfinite(evidence[fam][k]).all(axis=1)
            if not bad.any():
                continue
            who = "every class" if bad.all() else ", ".join(c for c, b in zip(classes, bad) if b)
            why = {"prediction": "class not predicted or no softmax", "image": "class not predicted or several input channels"}.get(fam, "empty body, no maps or no mass")
            parts.append(f"{fam} left out for {who} (not computable: {why})")
        rows.append(parts)
    return ["; ".join(p) for p in rows]
