"""Segmentation metrics: confusion matrix, IoU per class, mean IoU, IoU per GFLOP (no torch).

Definitions used throughout the project
---------------------------------------
- IoU of class c = TP_c / (TP_c + FP_c + FN_c) from a confusion matrix.
- A class whose union ``TP + FP + FN`` is zero (absent from both prediction and truth)
  has an undefined IoU (NaN) and is left out of the mean.
- Mean IoU (macro) = mean of the defined per-class IoUs.
- *Per image* (``mean_iou(pred, truth)`` on one slice or patch): the confusion matrix of
  that image; this is the paper's per-patch reward IoU.
- *Dataset level* (evaluation): one confusion matrix summed over all slices, then IoU
  per class and their mean. This is what ``napari-paser evaluate`` reports.
- IoU per GFLOP = mean IoU / GFLOPs spent on the same data.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou", "pixel_agreement", "iou_per_gflop", "evaluate", "dataset_iou_gains", "dataset_iou_weights",
           "seam_edges", "SEAM_REGIONS"]


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int = 3) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows are truth, columns prediction."""
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    idx = truth.astype(np.int64).reshape(-1) * num_classes + pred.astype(np.int64).reshape(-1)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU of every class from a confusion matrix; NaN where the class is absent in both."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    out = np.full(tp.shape, np.nan)
    np.divide(tp, union, out=out, where=union > 0)
    return out


def mean_iou(pred_or_cm: np.ndarray, truth: np.ndarray | None = None, num_classes: int = 3) -> float:
    """Macro mean IoU over the classes present in prediction or truth.

    Called with ``(pred, truth)`` it scores that one image; with a confusion matrix it
    scores whatever the matrix was summed over. NaN only if no class is present at all.
    """
    cm = pred_or_cm if truth is None else confusion_matrix(pred_or_cm, truth, num_classes)
    ious = iou_per_class(cm)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def dataset_iou_weights(pooled: np.ndarray) -> np.ndarray:
    """First-order change of the mean IoU of confusion ``pooled`` per pixel added to each entry.

    Parameters
    ----------
    pooled : array (C, C)
        The confusion matrix the derivative is taken at (rows truth, columns prediction).

    Returns
    -------
    array (C, C)
        Entry (t, p): the change of the mean IoU when one pixel of truth t predicted as p
        is added. With intersection I_c and union U_c, such a pixel changes them by dI_c,
        dU_c and the mean IoU by about ``mean_c (dI_c - IoU_c dU_c) / U_c``. Moving a
        pixel from one prediction to another changes the mean IoU by the difference of
        two entries, so a router's gain is linear in the pixels it changes.
    """
    pooled = np.asarray(pooled, dtype=np.float64)
    c = pooled.shape[0]
    inter = np.diag(pooled)
    union = np.maximum(pooled.sum(0) + pooled.sum(1) - inter, 1.0)
    eye = np.eye(c)
    d_inter = eye[:, :, None] * eye[:, None, :]  # (t, p, class): t == p == class
    d_union = eye[:, None, :] + eye[None, :, :] - d_inter  # t == class or p == class
    return ((d_inter - (inter / union) * d_union) / union).mean(-1)


def dataset_iou_gains(conf: np.ndarray) -> np.ndarray:
    """First-order change of the dataset mean IoU when one patch moves from f0 to f1 / f2.

    Parameters
    ----------
    conf : array (N, 3, GY, GX, C, C)
        Per-patch confusion matrices (rows truth, columns prediction) of f0, f1 and f2.

    Returns
    -------
    array (N, 2, GY, GX)
        With f0 everywhere, class c has intersection I_c and union U_c over all patches;
        a patch changes them by dI_c, dU_c and the mean IoU by about
        ``mean_c (dI_c - IoU_c dU_c) / U_c`` (:func:`dataset_iou_weights`). This is the
        gain a router should learn (what users measure is the volume's IoU) and what
        oracle routing uses.
    """
    conf = np.asarray(conf, dtype=np.float64)
    weights = dataset_iou_weights(conf[:, 0].sum((0, 1, 2)))
    return np.einsum("ngyxtp,tp->ngyx", conf[:, 1:] - conf[:, :1], weights)


SEAM_REGIONS = ("interior", "same_model_borders", "mixed_borders")
"""Where :func:`seam_edges` counts: pairs of neighbouring pixels away from every patch
border, across a border between patches of the same model, across a border between
patches of different models."""


def seam_edges(labels: np.ndarray, truth: np.ndarray, routing: np.ndarray, patch_size: tuple[int, int],
               margin: int = 8) -> dict[str, tuple[int, int]]:
    """False edges across the borders between patches, and away from them, of one slice.

    Patch models see a halo of the slice around their patch, so that a border between
    two patches, routed to the same model or to different ones, does not show
    (``benchmarks/seams.py`` measures it on the test sets).
    Where it shows, a phase boundary that does not line up across it puts a label change
    between two neighbouring pixels of one true phase: a false edge. This counts them
    over pairs of neighbouring pixels of the same true phase, by where the pair lies.
    The patch grid does not follow the microstructure, so without seams the share of
    false edges differs between the regions only by sampling error.

    Parameters
    ----------
    labels, truth : ndarray (rows, columns)
        The slice's labels and its ground truth.
    routing : ndarray (GY, GX)
        The model of every patch.
    patch_size : (rows, columns)
        Patch shape; patch (gy, gx) covers rows ``gy * rows`` to ``(gy + 1) * rows``.
    margin : int
        Interior pairs meet at least ``margin`` pixels from every patch border, and on a
        multiple of the greatest common divisor of the patch's rows and columns, as the
        borders do: a network that works on pixel blocks (a space-to-depth stem, pooling)
        places its block edges there too, and would show them as if they were seams.
        Pairs within ``margin`` pixels of the slice's own edge count nowhere (every model
        pads there).

    Returns
    -------
    dict
        For each of :data:`SEAM_REGIONS`, (false edges, pairs of pixels of one true
        phase). Pairs of rows count across the borders between patch rows, pairs of
        columns across the borders between patch columns.
    """
    labels, truth, routing = np.asarray(labels), np.asarray(truth), np.asarray(routing)
    if labels.shape != truth.shape or labels.ndim != 2:
        raise ValueError(f"labels and truth must be one slice of the same shape, got {labels.shape} and {truth.shape}")
    ph, pw = (int(s) for s in patch_size)
    gy, gx = routing.shape
    h, w = labels.shape
    if not ((gy - 1) * ph < h <= gy * ph and (gx - 1) * pw < w <= gx * pw):
        raise ValueError(f"a {routing.shape} routing of {patch_size} patches does not tile a {labels.shape} slice")
    counts = {region: np.zeros(2, np.int64) for region in SEAM_REGIONS}
    align = math.gcd(ph, pw)
    # Pairs of columns in every row, then pairs of rows: the same count on the transposes.
    for part in (_pair_counts(labels, truth, routing, (ph, pw), margin, align),
                 _pair_counts(labels.T, truth.T, routing.T, (pw, ph), margin, align)):
        for region in SEAM_REGIONS:
            counts[region] += part[region]
    return {region: (int(c[0]), int(c[1])) for region, c in counts.items()}


def _pair_counts(labels: np.ndarray, truth: np.ndarray, routing: np.ndarray, patch_size: tuple[int, int],
                 margin: int, align: int) -> dict[str, tuple[int, int]]:
    """:func:`seam_edges` over the pairs of neighbouring columns (x, x + 1) of every row."""
    ph, pw = patch_size
    h, w = labels.shape
    edge = np.arange(1, w)  # the pair (x, x + 1) meets at column edge x + 1
    border_dist = np.min(np.abs(edge[:, None] - pw * np.arange(1, routing.shape[1])[None]), axis=1, initial=w)
    inside = (edge >= margin) & (edge <= w - margin)
    left_model = routing[:, np.minimum((edge - 1) // pw, routing.shape[1] - 1)]
    right_model = routing[:, np.minimum(edge // pw, routing.shape[1] - 1)]
    patch_row = np.minimum(np.arange(h) // ph, routing.shape[0] - 1)
    mixed = left_model[patch_row] != right_model[patch_row]  # (h, w - 1)
    same_truth = truth[:, :-1] == truth[:, 1:]
    same_truth[:margin] = same_truth[h - margin :] = False  # the slice's own edge counts nowhere
    false_edge = same_truth & (labels[:, :-1] != labels[:, 1:])
    across = inside & (border_dist == 0)
    regions = {"interior": inside & (border_dist >= margin) & (edge % align == 0), "same_model_borders": across & ~mixed, "mixed_borders": across & mixed}
    return {region: (int(false_edge[same_truth & where].sum()), int((same_truth & where).sum())) for region, where in regions.items()}


def pixel_agreement(cm: np.ndarray) -> float:
    """Share of the pixels a confusion matrix counts on its diagonal (labelled alike)."""
    return float(np.trace(cm) / cm.sum())


def iou_per_gflop(iou: float, gflops: float) -> float:
    """Mean IoU divided by GFLOPs (NaN for zero cost)."""
    return float(iou) / float(gflops) if gflops > 0 else float("nan")


def evaluate(pred: np.ndarray, truth: np.ndarray, class_names: tuple[str, ...] = ("pore", "carbon-binder", "nickel")) -> dict:
    """Dataset-level scores of a labelled stack: ``mean_iou``, ``iou_per_class``, ``confusion``."""
    cm = confusion_matrix(pred, truth, len(class_names))
    ious = iou_per_class(cm)
    return {
        "mean_iou": mean_iou(cm),
        "iou_per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, ious)},
        "confusion": cm.tolist(),
    }
