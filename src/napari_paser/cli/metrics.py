"""``napari-paser metrics``: microstructure metrics of a phase-label volume, with ranges.

Volume fractions, the porosity profile along an axis, nickel's specific surface area and
the interfacial areas (marching cubes), tortuosity factor and effective diffusivity of the
pore network (TauFactor; optional extra ``metrics``; in columns when the whole volume's
solve would not fit, see :mod:`~napari_paser.engine.tortuosity_columns`). ``--band IMAGE``
segments the grey scan again at several λ, with f2 everywhere and as f0 MC-dropout samples,
and reports every metric's [min, max] over those segmentations. Labels and scan are read a
slab of planes at a time. ``--workers`` / ``--scheduler`` run τ's columns, the band's slabs
and its members' metrics on a dask cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings
from pathlib import Path

from ..errors import PaserInputError
from .segment import add_bundle_arguments, bar_options, check_writable, executor_from_args, load_bundle_arg, write_json

HELP = "microstructure metrics (fractions, porosity profile, surface areas, tortuosity) of a label volume"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("metrics", help=HELP, description=HELP + ".")
    p.add_argument("labels", metavar="LABELS", help="phase labels (0 pore, 1 carbon-binder, 2 nickel): any input segment reads")
    p.add_argument("--axis", type=int, default=0, help="axis of the porosity profile and the tortuosity (0 plane, 1 row, 2 column; default 0)")
    p.add_argument("--json", metavar="OUT.json", help="write the metrics as JSON")
    p.add_argument("--csv", metavar="OUT.csv", help="write the metrics as CSV (metric, value, min, max, unit)")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"), help="voxel size in µm (default: from the file)")
    p.add_argument("--cb-diffusivity", type=float, metavar="X",
                   help="carbon-binder diffusivity relative to the pore's; adds τ of pore + carbon-binder")
    p.add_argument("--diffusivity", type=float, default=1.0, metavar="D",
                   help="bulk diffusivity D; effective diffusivity D·ε/τ is in its units (default 1)")
    p.add_argument("--no-tortuosity", action="store_true", help="skip the TauFactor solves")
    p.add_argument("--tau-iter-limit", type=int, default=20000, metavar="N",
                   help="TauFactor's iteration limit per solve (default 20000; τ is flagged when it stops unconverged)")
    p.add_argument("--tau-width", type=int, metavar="N",
                   help="solve τ in columns N voxels across that span the volume along --axis, one at a time, combined "
                        "in parallel (default: the whole volume when its solve fits in half the memory, else the widest "
                        "columns that do)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="run the band (its slabs, then its members' metrics) and τ's columns on a local dask "
                            "cluster of N processes")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run the band and τ's columns on a running dask scheduler (tcp://host:8786); the workers "
                            "need the band's temporary folder (TMPDIR) on a file system they share")
    p.add_argument("--surface-method", choices=("marching_cubes", "faces"), default="marching_cubes",
                   help="surface area estimator (default marching_cubes)")
    p.add_argument("--device", help="torch device of TauFactor (default: cuda if available, else cpu)")
    band = p.add_argument_group("sensitivity band (segment the grey scan again)")
    band.add_argument("--band", metavar="IMAGE", help="the grey scan LABELS came from: report every metric's [min, max] over its segmentations")
    band.add_argument("--band-roi", metavar="Z0:Z1,Y0:Y1,X0:X1",
                      help="the box of IMAGE that LABELS cover (default: the box segment --roi recorded in LABELS)")
    band.add_argument("--band-lams", default="0,default,0.1,0.3,1", metavar="L1,L2,...",
                      help="λ values of the band ('default' is the bundle's; default 0,default,0.1,0.3,1)")
    band.add_argument("--band-methods", default="f2", metavar="M1,M2",
                      help="single models run on every patch in the band: f0, f1, f2 ('' for none; default f2)")
    band.add_argument("--band-mc", type=int, default=4, metavar="N", help="single-pass f0 MC-dropout samples in the band (default 4)")
    band.add_argument("--band-slab", type=int, metavar="N",
                      help="planes the band segments at a time, one task each on a cluster (default: about 128 MB of engine state)")
    band.add_argument("--blend-borders", action=argparse.BooleanOptionalAction, default=None,
                      help="blend the band's patches across their borders, as segment does by default (default: as "
                           "LABELS record they were made, blended if segment or the napari panel blended them)")
    add_bundle_arguments(band)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _format(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.4g}"


def _table(metrics, ranges: dict) -> str:
    rows = []
    for k, v in metrics.values.items():
        rng = f" [{_format(ranges[k][0])}, {_format(ranges[k][1])}]" if k in ranges else ""
        rows.append(f"{k:44s} {_format(v):>10s}{rng} {metrics.units.get(k, '')}")
    return "\n".join(rows)


def _compute(args, labels, axis: int, image, lams, methods, kwargs: dict):
    """Metrics of ``labels`` and, with a band image, of its band, with a tqdm status line."""
    from tqdm import tqdm

    from ..engine.microstructure import metrics_steps
    from ..engine.steps import run_steps

    bar = tqdm(total=None, desc="metrics", disable=args.quiet, leave=False, bar_format="{desc} {elapsed}", **bar_options())

    def status(text: str) -> None:
        bar.set_description_str(text, refresh=False)
        bar.update(0)  # drawn when bar_options' interval has passed

    try:
        metrics = run_steps(metrics_steps(labels, axis, **kwargs), lambda step: status(f"metrics: {step.stage} {step.fraction:.0%}"))
        band, envelope = [], None
        if image is not None:
            from ..engine.metrics_band import PhaseEnvelope, band_steps

            bundle = load_bundle_arg(args.bundle)
            envelope = PhaseEnvelope()
            gen = band_steps(image, bundle, axis, lams=lams, methods=methods, mc_samples=args.band_mc, mc_passes=args.mc_passes,
                             seed=args.seed, segment_device=args.device or "cpu", batch_size=args.batch_size,
                             segment_precision=args.precision, labels=labels,
                             envelope=envelope, slab=args.band_slab, blend_borders=bool(args.blend_borders), **kwargs)

            def show(step: tuple[str, int, int]) -> None:
                stage, done, total = step
                status(f"band {done / max(total, 1):.0%}: {stage}")

            band = run_steps(gen, show)
    finally:
        bar.close()
    return metrics, band, envelope


def run(args: argparse.Namespace) -> int:
    from ..engine.metrics_band import parse_lams, parse_methods
    from ..engine.metrics_report import csv_text, metric_ranges, report_dict, tortuosity_notes, write_text_atomic
    from ..engine.microstructure import check_axis, check_voxel_size
    from ..io_sources import labels_file_blend, open_volume, scan_under_labels

    t0 = time.perf_counter()
    # Fail on every cheap check before reading or computing anything.
    outs = [check_writable(p, args.overwrite) for p in (args.json, args.csv) if p]
    if args.json and args.csv and Path(args.json).resolve() == Path(args.csv).resolve():
        raise PaserInputError("--json and --csv name the same file")
    voxel = check_voxel_size(args.voxel_size)
    lams = parse_lams(args.band_lams) if args.band else ()
    methods = parse_methods(args.band_methods) if args.band else ()
    if args.band and args.band_mc < 0:
        raise PaserInputError(f"--band-mc must be >= 0, got {args.band_mc}")
    if args.band_slab is not None and args.band_slab < 1:
        raise PaserInputError(f"--band-slab must be at least 1, got {args.band_slab}")
    if args.workers is not None and args.workers < 1:
        raise PaserInputError(f"--workers must be at least 1, got {args.workers}")
    if args.tau_iter_limit < 1:
        raise PaserInputError(f"--tau-iter-limit must be >= 1, got {args.tau_iter_limit}")
    if args.cb_diffusivity is not None and not (math.isfinite(args.cb_diffusivity) and args.cb_diffusivity >= 0):
        raise PaserInputError(f"--cb-diffusivity must be a number >= 0, got {args.cb_diffusivity}")
    if args.device is not None:
        from ..engine.devices import resolve_device

        args.device = resolve_device(args.device)
    if args.band and args.precision != "fp32":
        from ..engine.precision import check_precision

        check_precision(args.precision, args.device or "cpu")
    with contextlib.ExitStack() as opened:
        # Labels and the band's scan are read a slab of planes at a time (τ's columns: a column at a time).
        source = opened.enter_context(open_volume(args.labels))
        axis = check_axis(args.axis, source.input_ndim)
        voxel = voxel or source.voxel_size
        scan = opened.enter_context(open_volume(args.band)) if args.band else None
        if scan is not None:
            scan, recorded = scan_under_labels(scan, source, args.labels, args.band_roi)
            if recorded:
                print(f"the labels are the box {recorded} of their scan (segment --roi): the band reads that box", file=sys.stderr)
            if args.blend_borders is None:
                blended = labels_file_blend(args.labels)
                args.blend_borders = blended is not None
                if blended:
                    print(f"the labels' patches were blended across their borders over {blended} pixels: so are the "
                          "band's (--no-blend-borders crops them)", file=sys.stderr)
        if scan is not None and scan.input_shape != source.input_shape:
            raise PaserInputError(f"--band image has shape {scan.input_shape} but the labels have shape {source.input_shape}")
        kwargs = dict(voxel_size=voxel, cb_diffusivity=args.cb_diffusivity, diffusivity=args.diffusivity,
                      tortuosity=not args.no_tortuosity, surface_method=args.surface_method, device=args.device,
                      tortuosity_width=args.tau_width, iter_limit=args.tau_iter_limit)
        if (args.band or not args.no_tortuosity) and (args.scheduler or (args.workers or 1) > 1):
            kwargs["executor"] = executor_from_args(args)
            opened.callback(kwargs["executor"].close)
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", UserWarning)
            metrics, band, envelope = _compute(args, source, axis, scan, lams, methods, kwargs)
    # Engine warnings (e.g. cubic voxels assumed) become one line each.
    for msg in dict.fromkeys(str(w.message) for w in notes if issubclass(w.category, UserWarning)):
        print(f"napari-paser metrics: warning: {msg}", file=sys.stderr)
    ranges = metric_ranges([metrics] + [m.metrics for m in band], envelope) if band else {}
    extra = {
        "labels": str(Path(args.labels).resolve()) if Path(args.labels).exists() else args.labels,
        "surface_method": args.surface_method,
        "cb_diffusivity": args.cb_diffusivity,
        "diffusivity": args.diffusivity,
        "seconds": time.perf_counter() - t0,
    }
    if band:
        extra["band_image"] = str(Path(args.band).resolve())
        extra["band_members"] = [{"name": m.name, "lam": m.lam, "gflops": m.gflops} for m in band]
        extra["band_precision"] = args.precision
        extra["band_blend_borders"] = bool(args.blend_borders)
    if args.json:
        write_json(args.json, report_dict(metrics, band=[(m.name, m.metrics) for m in band], envelope=envelope, extra=extra), overwrite=args.overwrite)
    if args.csv:
        write_text_atomic(args.csv, csv_text(metrics, ranges), overwrite=args.overwrite)
    print(_table(metrics, ranges))
    for note in tortuosity_notes(metrics):
        print(f"napari-paser metrics: {note}", file=sys.stderr)
    for name, res in metrics.tortuosity.items():
        if not res.converged:
            print(f"napari-paser metrics: warning: τ ({name}) did not converge in {res.iterations} iterations", file=sys.stderr)
    if outs:
        print("wrote " + ", ".join(str(o) for o in outs))
    return 0
