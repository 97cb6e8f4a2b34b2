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

import numpy as np

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou", "pixel_agreement", "iou_per_gflop", "evaluate", "dataset_iou_gains", "dataset_iou_weights"]


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
