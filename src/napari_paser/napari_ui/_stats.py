"""Run statistics (pure NumPy) and the panel that shows them.

What a materials scientist reads after a run: patches per model, compute (GFLOPs, also
as a share of running f2 everywhere), phase volume fractions of the stack and along
its depth (per slice), and, against a ground truth, mean IoU and IoU per GFLOP.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QLabel, QTableWidgetItem, QVBoxLayout, QWidget

from .. import CLASS_NAMES
from ._qt_rows import read_only_table
from ._tooltips import TOOLTIPS

__all__ = ["slice_fractions", "slice_confusion", "no_comparison", "summarize", "StatsPanel"]

MODELS = ("f0", "f1", "f2")


def slice_fractions(labels: np.ndarray) -> np.ndarray:
    """Phase fractions (pore, carbon-binder, nickel) of one slice; NaN if not segmented."""
    counts = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=256)[: len(CLASS_NAMES)]
    total = counts.sum()
    return counts / total if total else np.full(len(CLASS_NAMES), np.nan)


def slice_confusion(labels: np.ndarray, truth: Any) -> np.ndarray:
    """(3, 3) confusion of one slice against its ground truth (rows truth, columns
    prediction), read here (a lazy layer reads one plane); -1 everywhere if the truth
    holds values other than 0, 1, 2 (it is then left out of the IoU)."""
    from ..engine import metrics

    truth = np.asarray(truth)
    if not np.issubdtype(truth.dtype, np.integer) or truth.min() < 0 or truth.max() > 2:
        return np.full((3, 3), -1, np.int64)
    return metrics.confusion_matrix(labels, truth)


def no_comparison(planes: int) -> np.ndarray:
    """Per-slice confusions of a stack not compared yet (-1: no slice compared)."""
    return np.full((planes, 3, 3), -1, np.int64)


def summarize(
    *,
    per_slice: np.ndarray,
    routing: np.ndarray,
    done: np.ndarray,
    result: Any | None = None,
    confusion: np.ndarray | None = None,
) -> dict:
    """Statistics of a (possibly partial) run as a JSON-serialisable dict.

    Parameters
    ----------
    per_slice : (Z, 3) float
        Phase fractions per slice (NaN rows for slices not segmented).
    routing : (Z, GY, GX) uint8
        Model per patch, :data:`PENDING` where not routed.
    done : (Z,) bool
        Slices segmented.
    result : SegmentationResult, optional
        The engine's result for the whole stack (GFLOPs, route fractions, λ, TVD).
    confusion : (Z, 3, 3) int, optional
        Every slice's confusion against a ground truth (:func:`slice_confusion`; -1 where
        not compared): mean IoU over the segmented slices compared.
    """
    from ..engine import metrics

    stats: dict[str, Any] = {"slices_done": int(done.sum()), "slices_total": int(done.size)}
    routed = routing[done]
    counts = np.bincount(routed.ravel(), minlength=256)[:3] if routed.size else np.zeros(3)
    total = counts.sum()
    stats["route_fraction"] = {m: float(c / total) if total else float("nan") for m, c in zip(MODELS, counts)}
    rows = per_slice[done]
    stack = rows.mean(0) if len(rows) else np.full(len(CLASS_NAMES), np.nan)
    stats["phase_fraction"] = {n: float(v) for n, v in zip(CLASS_NAMES, stack)}
    stats["porosity"] = stats["phase_fraction"][CLASS_NAMES[0]]
    stats["phase_fraction_per_slice"] = [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in per_slice]
    if result is not None:
        stats["route_fraction"] = {k: float(v) for k, v in result.route_fraction.items()}
        stats["lam"] = float(result.lam) if result.lam is not None else None
        stats["tvd"] = float(result.tvd) if result.tvd is not None else None
        stats["gflops_total"] = float(result.gflops_total)
        stats["gflops_f2_everywhere"] = float(result.gflops_f2_everywhere)
        stats["gflops_percent_of_f2"] = (
            100.0 * stats["gflops_total"] / stats["gflops_f2_everywhere"] if stats["gflops_f2_everywhere"] else float("nan")
        )
    compared = done & (confusion[:, 0, 0] >= 0) if confusion is not None else np.zeros_like(done)
    if confusion is not None and compared.any():
        cm = confusion[compared].sum(0)
        stats["iou_slices"] = int(compared.sum())
        ious = metrics.iou_per_class(cm)
        stats["iou_per_class"] = {n: float(v) for n, v in zip(CLASS_NAMES, ious)}
        stats["mean_iou"] = metrics.mean_iou(cm)
        if "gflops_total" in stats:
            stats["iou_per_gflop"] = metrics.iou_per_gflop(stats["mean_iou"], stats["gflops_total"])
    return stats


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}%"


class StatsPanel(QWidget):
    """A text summary and a per-slice phase-fraction table."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setToolTip(TOOLTIPS["stats"])
        self.summary = QLabel("No run yet.")
        self.summary.setWordWrap(True)
        self.table = read_only_table(["slice", "pore", "carbon", "nickel"], stretch=True)
        self.table.setMaximumHeight(160)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        self.stats: dict = {}

    def clear(self, text: str = "No run yet.") -> None:
        self.stats = {}
        self.summary.setText(text)
        self.table.setRowCount(0)

    def show_stats(self, stats: dict, note: str = "") -> None:
        """Fill the panel from :func:`summarize`'s dict."""
        self.stats = stats
        rf = stats.get("route_fraction", {})
        pf = stats.get("phase_fraction", {})
        lines = [
            "<b>Patches</b>: " + ", ".join(f"{m} {_pct(rf.get(m))}" for m in MODELS),
        ]
        if "gflops_total" in stats:
            lines.append(
                f"<b>Compute</b>: {stats['gflops_total']:.3g} GFLOPs = {stats['gflops_percent_of_f2']:.1f} % "
                f"of f2 everywhere ({stats['gflops_f2_everywhere']:.3g} GFLOPs)"
            )
        lines.append(
            f"<b>Porosity</b> {_pct(pf.get(CLASS_NAMES[0]))}, <b>carbon-binder</b> {_pct(pf.get(CLASS_NAMES[1]))}, "
            f"<b>nickel</b> {_pct(pf.get(CLASS_NAMES[2]))}"
        )
        if "mean_iou" in stats:
            iou = f"<b>Mean IoU</b> {stats['mean_iou']:.3f}"
            if "iou_per_gflop" in stats:
                iou += f", IoU/GFLOP {stats['iou_per_gflop']:.3g}"
            if stats.get("iou_slices", 0) < stats.get("slices_done", 0):
                iou += f" (over {stats['iou_slices']} of {stats['slices_done']} slices: the others not compared, or their truth not 0, 1, 2)"
            lines.append(iou)
        check = stats.get("f2_check")
        if check:
            lines.append(f"<b>vs f2 on every patch</b> (slice {check['slice']}): {100 * check['agreement']:.2f} % of pixels "
                         f"alike, mean IoU {check['mean_iou']:.3f}")
        if stats.get("slices_done", 0) < stats.get("slices_total", 0):
            lines.append(f"<i>{stats['slices_done']} of {stats['slices_total']} slices segmented</i>")
        if note:
            lines.append(f"<i>{note}</i>")
        self.summary.setText("<br>".join(lines))
        rows = stats.get("phase_fraction_per_slice", [])
        self.table.setRowCount(len(rows))
        for z, row in enumerate(rows):
            self.table.setItem(z, 0, QTableWidgetItem(str(z)))
            for c, v in enumerate(row):
                self.table.setItem(z, c + 1, QTableWidgetItem(_pct(v)))
