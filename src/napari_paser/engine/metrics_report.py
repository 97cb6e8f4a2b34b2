"""Metrics with ranges, as JSON-ready dicts and CSV rows (no torch, no Qt).

A *band* is a list of metric sets of the same scan segmented in different ways (several
λ, f0's MC-dropout samples); every metric is then reported as the value of the main
segmentation and the [min, max] over the main one and the band. With a
:class:`~napari_paser.engine.metrics_band.PhaseEnvelope`, the ranges of the volume
fractions and of the porosity profile also span the envelope's voxel-wise bounds.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .microstructure import MicrostructureMetrics
from .tortuosity import TortuosityResult

if TYPE_CHECKING:
    from .metrics_band import PhaseEnvelope

__all__ = ["metric_ranges", "profile_range", "report_dict", "csv_text", "tortuosity_notes", "write_text_atomic"]


def metric_ranges(members: Sequence[MicrostructureMetrics], envelope: PhaseEnvelope | None = None) -> dict[str, tuple[float, float]]:
    """[min, max] of every metric over ``members`` (keys present in all of them); the
    volume fractions' ranges widened to ``envelope``'s bounds when one is given."""
    if not members:
        return {}
    keys = [k for k in members[0].values if all(k in m.values for m in members)]
    out = {k: (float(min(m.values[k] for m in members)), float(max(m.values[k] for m in members))) for k in keys}
    if envelope is not None and envelope.count:
        for k, (lo, hi) in envelope.fraction_ranges().items():
            if k in out:
                out[k] = (min(out[k][0], lo), max(out[k][1], hi))
    return out


def profile_range(members: Sequence[MicrostructureMetrics], envelope: PhaseEnvelope | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Plane-wise min and max of the porosity profiles of ``members`` (and of ``envelope``'s
    pore bounds along the members' axis)."""
    stack = np.stack([m.porosity_profile for m in members])
    lo, hi = stack.min(axis=0), stack.max(axis=0)
    if envelope is not None and envelope.count:
        env_lo, env_hi = envelope.profile_range(members[0].axis)
        lo, hi = np.minimum(lo, env_lo), np.maximum(hi, env_hi)
    return lo, hi


def _num(x: float) -> float | None:
    """JSON has no inf / NaN: those become null (τ of a non-percolating phase is inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _tortuosity_details(r: TortuosityResult) -> dict[str, Any]:
    details: dict[str, Any] = {"tau": _num(r.tau), "converged": r.converged, "iterations": r.iterations,
                               "volume_fraction": r.volume_fraction}
    if r.column_width is not None:  # solved in columns: how, and each column's own τ
        details["column_width"] = r.column_width
        details["column_tau"] = [_num(t) for t in r.column_taus]
    return details


def report_dict(
    metrics: MicrostructureMetrics,
    *,
    band: Sequence[tuple[str, MicrostructureMetrics]] = (),
    envelope: PhaseEnvelope | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-serialisable report.

    Top-level keys are the metric keys (``"volume_fraction.pore": 0.31``, ...; null for
    an infinite τ), plus ``units``, ``ranges`` (``{key: [min, max]}`` over the main
    segmentation and ``band``, only with a band; volume fractions also over ``envelope``), ``porosity_profile`` (axis, positions,
    values and, with a band, min / max), ``tortuosity`` (convergence details and, for a
    volume solved in columns, their width and each one's τ),
    ``band`` (each member's name and metrics), ``axis``, ``voxel_size`` and ``extra``.
    """
    out: dict[str, Any] = {k: _num(v) for k, v in metrics.values.items()}
    out["units"] = dict(metrics.units)
    profile: dict[str, Any] = {
        "axis": metrics.axis,
        "position": [float(p) for p in metrics.positions],
        "position_unit": "µm" if metrics.voxel_size is not None else "voxel",
        "porosity": [float(v) for v in metrics.porosity_profile],
    }
    if band:
        members = [metrics] + [m for _, m in band]
        out["ranges"] = {k: [_num(lo), _num(hi)] for k, (lo, hi) in metric_ranges(members, envelope).items()}
        lo, hi = profile_range(members, envelope)
        profile["min"] = [float(v) for v in lo]
        profile["max"] = [float(v) for v in hi]
        out["band"] = [{"name": name, **{k: _num(v) for k, v in m.values.items()}} for name, m in band]
    out["porosity_profile"] = profile
    out["tortuosity"] = {name: _tortuosity_details(r) for name, r in metrics.tortuosity.items()}
    out["axis"] = metrics.axis
    out["voxel_size"] = list(metrics.voxel_size) if metrics.voxel_size is not None else None
    if extra:
        out.update(extra)
    return out


def tortuosity_notes(metrics: MicrostructureMetrics) -> list[str]:
    """One sentence for every τ solved in columns rather than whole: how many, how wide,
    and the range of their own τ."""
    notes = []
    for name, r in metrics.tortuosity.items():
        if r.column_width is None:
            continue
        finite = [t for t in r.column_taus if math.isfinite(t)]
        spread = f"; their own τ {min(finite):.4g} to {max(finite):.4g}" if finite else ""
        blocked = len(r.column_taus) - len(finite)
        spread += f"; {blocked} not percolating" if blocked else ""
        notes.append(f"τ ({name}) solved in {len(r.column_taus)} columns up to {r.column_width} voxels across, "
                     f"combined in parallel{spread}")
    return notes


def csv_text(metrics: MicrostructureMetrics, ranges: dict[str, tuple[float, float]] | None = None) -> str:
    """CSV with columns ``metric, value, min, max, unit``: the scalar metrics, then one
    row per plane of the porosity profile (``porosity_profile[i]``, unit: the position)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", "value", "min", "max", "unit"])
    ranges = ranges or {}
    for k, v in metrics.values.items():
        lo, hi = ranges.get(k, (v, v))
        w.writerow([k, f"{v:.8g}", f"{lo:.8g}", f"{hi:.8g}", metrics.units.get(k, "")])
    unit = "µm" if metrics.voxel_size is not None else "voxel"
    for i, (pos, v) in enumerate(zip(metrics.positions, metrics.porosity_profile)):
        w.writerow([f"porosity_profile[{i}]", f"{v:.8g}", "", "", f"at {pos:.6g} {unit} along axis {metrics.axis}"])
    return buf.getvalue()


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists (use --overwrite)")
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
