"""The Metrics panel's work, without Qt: checks, the job generator, table rows, export.

:func:`metrics_job` is a generator run in a napari thread worker (or synchronously in
tests): it yields :class:`MetricsProgress` and returns a :class:`MetricsOutcome`. Closing
it (the worker's quit) cancels at the next step, also in the middle of a TauFactor solve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np

from ..errors import PaserInputError

__all__ = ["MetricsRequest", "MetricsProgress", "MetricsOutcome", "check_request", "metrics_job", "table_rows",
           "export_targets", "export_metrics"]


@dataclass
class MetricsRequest:
    """What to compute.

    Attributes
    ----------
    labels : array (Z, Y, X) or (Y, X)
        The phases layer's data.
    axis : int
    voxel_size : three floats or None
    cb_diffusivity : float or None
        > 0 adds the pore + carbon-binder tortuosity.
    tortuosity : bool
    tortuosity_width : int or None
        Solve τ in columns this many voxels across (None: the whole volume when it fits
        in memory, else the widest columns that do).
    image : array or None
        The grey scan for the band (None: no band).
    bundle_path : Path or None
        Bundle folder for the band (None: the default bundle).
    band_lams : tuple of float or None
    band_methods : tuple of str
        Single models run everywhere in the band.
    band_mc : int
    band_precision : {"fp32", "bf16"}
        Of the band's f1/f2 patches (bf16: faster where it is native, refused elsewhere).
    band_blend_borders : bool
        Blend the band's patches across their borders (as the labels were, if they were).
    """

    labels: Any
    axis: int
    voxel_size: tuple[float, float, float] | None = None
    cb_diffusivity: float | None = None
    tortuosity: bool = True
    tortuosity_width: int | None = None
    image: Any = None
    bundle_path: Path | None = None
    band_lams: tuple = ()
    band_methods: tuple = ("f2",)
    band_mc: int = 0
    band_precision: str = "fp32"
    band_blend_borders: bool = False


@dataclass(frozen=True)
class MetricsProgress:
    """A step: text, share of the current stage done, band members done / total."""

    stage: str
    fraction: float
    done: int = 0
    total: int = 1


@dataclass
class MetricsOutcome:
    """Metrics of the labels, the band members, and every metric's range."""

    metrics: Any  # MicrostructureMetrics
    band: list
    ranges: dict[str, tuple[float, float]]
    profile_min: np.ndarray | None = None
    profile_max: np.ndarray | None = None


def check_request(req: MetricsRequest) -> None:
    """The checks that need no pixel, before a worker starts (the GUI thread reads none:
    the job checks the values a slab at a time, see :func:`metrics_job`).

    Raises
    ------
    PaserInputError
        With one line for the user: shape, dtype, axis out of range, voxel size, band
        image of another shape, a column width below the minimum.
    """
    from ..engine.microstructure import check_axis, check_voxel_size, phase_label_volume

    phase_label_volume(req.labels)  # shape and dtype, nothing read
    shape = tuple(int(n) for n in np.shape(req.labels))
    check_axis(req.axis, len(shape))
    check_voxel_size(req.voxel_size)
    if req.tortuosity and req.tortuosity_width is not None:
        from ..engine.tortuosity_columns import check_column_width

        check_column_width(req.tortuosity_width)
    if req.image is not None and tuple(np.shape(req.image)) != shape:
        raise PaserInputError(f"the band image has shape {tuple(np.shape(req.image))} but the labels have shape {shape}")


def metrics_job(req: MetricsRequest) -> Generator[MetricsProgress, None, MetricsOutcome]:
    """Compute the metrics (and the band); see the module docstring."""
    from ..engine.metrics_report import metric_ranges, profile_range
    from ..engine.microstructure import metrics_steps
    from ..engine.steps import relay_steps

    check_request(req)
    labels = req.labels  # as it is: the metrics and the band read it a slab at a time
    if req.tortuosity or req.image is not None:
        # TauFactor and the band run on torch: import it the way the PaSeR widget does
        # (no GUI stall) and leave one core to the GUI.
        from ._torch_loading import import_torch_quietly, worker_threads

        import_torch_quietly()
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), worker_threads()))
    kwargs: dict[str, Any] = dict(voxel_size=req.voxel_size, cb_diffusivity=req.cb_diffusivity or None,
                                  tortuosity=req.tortuosity, tortuosity_width=req.tortuosity_width)
    n_band = (len(req.band_lams) + len(req.band_methods) + req.band_mc) if req.image is not None else 0
    if n_band:  # the band's device (a GPU when there is one, as the PaSeR widget's runs), checked before any work
        from ..engine.devices import default_device
        from ..engine.precision import check_precision

        device = default_device()
        precision = check_precision(req.band_precision, device)
    gen = metrics_steps(labels, req.axis, **kwargs)
    metrics = yield from relay_steps(gen, lambda step: MetricsProgress(step.stage, step.fraction, 0, 1 + n_band))
    band: list = []
    envelope = None
    if n_band:
        from ..engine.bundle import load_bundle
        from ..engine.metrics_band import PhaseEnvelope, band_steps
        from ..engine.registry import resolve_bundle

        yield MetricsProgress("loading the bundle", 0.0, 1, 1 + n_band)
        bundle = load_bundle(resolve_bundle(req.bundle_path), device=device)
        envelope = PhaseEnvelope()
        band_gen = band_steps(req.image, bundle, req.axis, lams=req.band_lams, methods=req.band_methods, mc_samples=req.band_mc,
                              segment_device=device, segment_precision=precision, blend_borders=req.band_blend_borders,
                              shape=tuple(np.shape(labels)), labels=labels, envelope=envelope, **kwargs)

        def band_progress(step: tuple[str, int, int]) -> MetricsProgress:
            stage, done, total = step
            members = n_band * done / max(total, 1)  # the band's share of work, in members
            return MetricsProgress(stage, members - int(members), 1 + int(members), 1 + n_band)

        band = yield from relay_steps(band_gen, band_progress)
    if not band:
        return MetricsOutcome(metrics, [], {})
    members = [metrics] + [b.metrics for b in band]
    lo, hi = profile_range(members, envelope)
    return MetricsOutcome(metrics, band, metric_ranges(members, envelope), lo, hi)


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.4g}"


def table_rows(outcome: MetricsOutcome) -> list[tuple[str, str, str, str]]:
    """(metric, value, "[min, max]" or "", unit) for every metric."""
    m = outcome.metrics
    rows = []
    for k, v in m.values.items():
        rng = outcome.ranges.get(k)
        rows.append((k, _fmt(v), f"[{_fmt(rng[0])}, {_fmt(rng[1])}]" if rng else "", m.units.get(k, "")))
    return rows


def export_targets(base: str | Path) -> dict[str, Path]:
    """The JSON and CSV files of an export to ``base`` (any suffix is replaced)."""
    base = Path(base)
    stem = base.with_suffix("") if base.suffix.lower() in (".json", ".csv", ".tif", ".tiff") else base
    return {"json": stem.with_name(stem.name + ".json"), "csv": stem.with_name(stem.name + ".csv")}


def default_export_base(source_path: str | None, layer_name: str, image_path: str | None = None) -> Path:
    """Where an export goes by default: ``<phase volume>_metrics`` beside the phase
    volume's file; for a layer made in napari (the PaSeR widget's ``phases``), beside the
    scan it came from as ``<scan>_phases_metrics`` (the widget exports ``<scan>_phases``);
    else ``<layer>_metrics`` in the working folder."""
    if source_path:
        p = Path(source_path)
        return p.with_name(p.with_suffix("").name + "_metrics")
    if image_path:
        p = Path(image_path)
        return p.with_name(p.with_suffix("").name + "_phases_metrics")
    return Path(f"{layer_name}_metrics")


def export_metrics(outcome: MetricsOutcome, base: str | Path, *, overwrite: bool = False,
                   extra: dict | None = None) -> Sequence[Path]:
    """Write ``<base>.json`` and ``<base>.csv``; nothing is written if one exists (without ``overwrite``).

    Raises
    ------
    FileExistsError
        Naming the files that exist.
    """
    from ..engine.metrics_report import csv_text, report_dict, write_text_atomic

    targets = export_targets(base)
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s): not replaced")
    import json

    report = report_dict(outcome.metrics, band=[(b.name, b.metrics) for b in outcome.band], extra=extra)
    write_text_atomic(targets["json"], json.dumps(report, indent=2), overwrite=True)
    write_text_atomic(targets["csv"], csv_text(outcome.metrics, outcome.ranges), overwrite=True)
    return list(targets.values())
