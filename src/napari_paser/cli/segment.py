"""``napari-paser segment``: label a stack with PaSeR (or one of its models alone), slab by slab.

The input is read lazily (TIFF, a folder of TIFF slices or a glob, HDF5, Zarr / OME-Zarr)
and the labels are written as each slab finishes (TIFF or OME-Zarr), so memory does not
grow with the number of slices. ``--workers`` / ``--scheduler`` run the slabs on a
dask.distributed cluster; an unfinished Zarr output is resumed by the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import PaserInputError

if TYPE_CHECKING:  # torch-free at import: the CLI parses arguments before loading anything
    import numpy as np

    from ..engine.bundle import Bundle
    from ..engine.pipeline import PaserSegmenter
    from ..io import VoxelSize

HELP = "segment a stack into pore / carbon-binder / nickel labels"
INPUT_HELP = (
    "grayscale stack: TIFF file, folder of 2-D TIFF slices or a glob ('scan/*.tif'), HDF5 file "
    "('scan.h5' or 'scan.h5:/exchange/data'), or Zarr / OME-Zarr store"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("segment", help=HELP, description=HELP + ".")
    p.add_argument("input", metavar="INPUT", help=INPUT_HELP)
    p.add_argument("--dataset", metavar="PATH", help="dataset of an HDF5 file or array of a Zarr store (default: found)")
    p.add_argument("--roi", metavar="Z0:Z1,Y0:Y1,X0:X1",
                   help="segment only this box (e.g. inside the field of view): planes, rows, columns as Python ranges, "
                        "a bound left out is the axis' end (':,100:-100,100:-100'); rows and columns for a 2-D image")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tif|OUT.zarr",
                   help="uint8 labels: TIFF (BigTIFF when over 4 GiB) or OME-Zarr (resumable)")
    knob = p.add_mutually_exclusive_group()
    knob.add_argument("--lam", type=float, help="cost weight λ in [0, 1] (default: the bundle's)")
    knob.add_argument("--tvd", type=float, help="pick the largest λ whose routing stays within this TVD of λ=0")
    add_bundle_arguments(p)
    add_blend_argument(p)
    p.add_argument("--method", default="paser", help="paser (default), f0, f1 or f2 (one model everywhere), idk, random")
    p.add_argument("--entropy", action="store_true", help="also write f0's entropy map (Zarr: in the store; TIFF: OUT_entropy.tif)")
    p.add_argument("--routing", action="store_true", help="also write the model per patch (Zarr: in the store; TIFF: OUT_routing.tif)")
    p.add_argument("--slab", type=int, metavar="N", help="slices per slab (default: about 128 MB of engine state)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N", help="run slabs on a local dask cluster of N processes")
    where.add_argument("--scheduler", metavar="ADDRESS", help="run slabs on a running dask scheduler (tcp://host:8786)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="torch device: cpu, cuda, cuda:N or auto (default: cuda if there is one, else cpu)")
    p.add_argument("--check-planes", type=int, default=0, metavar="N",
                   help="also segment N evenly spaced planes with every patch on f2 and report how many of their pixels "
                        "the run labelled alike: what the λ costs in quality, without a ground truth (default 0)")
    p.add_argument("--report", metavar="REPORT.json", help="write a JSON report (FLOPs, routing, timing)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def bundle_help(what: str) -> str:
    """Help of a ``--bundle`` option: ``what``, then the default and the installed bundles'
    names (the registry reads their manifests without torch)."""
    from ..engine.registry import DEFAULT_BUNDLE, list_bundles

    names = ", ".join(b.name for b in list_bundles()) or "none"
    return f"{what} (default: {DEFAULT_BUNDLE}; installed: {names})"


def add_bundle_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that run a bundle."""
    p.add_argument("--bundle", metavar="NAME|DIR", help=bundle_help("bundled model name or bundle folder"))
    p.add_argument("--mc-passes", type=int, metavar="N", help="sample this many MC-dropout passes of f0 (default: the bundle's way: its passes, or their "
                   "closed-form limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dropout masks (default 0)")
    p.add_argument("--batch-size", type=int, metavar="N", help="patches per f1/f2 call")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="of the f1/f2 patches: bf16 is faster on a GPU or a CPU with AVX-512 BF16 or AMX, its labels "
                        "differ from fp32's on 0.08-0.15 %% of pixels (default: fp32)")


def add_blend_argument(p: argparse.ArgumentParser) -> None:
    """``--blend-borders`` / ``--no-blend-borders``, for the commands whose labels are composed from patches."""
    p.add_argument("--blend-borders", action=argparse.BooleanOptionalAction, default=None,
                   help="blend neighbouring patches across their borders with what f1 and f2 predict in their halos: "
                        "no seams between patches and no extra FLOPs, for about 10 more bytes of memory a pixel; "
                        "labels further than the halo (8 pixels) from a border do not change (default: blend when the "
                        "bundle's f1 and f2 read a halo, as the bundled models do)")


def resolve_bundle_arg(name_or_path: str | None) -> Path:
    """The folder of ``--bundle``; a missing bundle becomes a one-line input error."""
    from ..engine.registry import DEFAULT_BUNDLE, resolve_bundle

    try:
        return Path(resolve_bundle(name_or_path))
    except FileNotFoundError as err:
        if name_or_path in (None, ""):
            raise PaserInputError(
                f"the default bundle {DEFAULT_BUNDLE!r} is not installed; pass --bundle NAME|DIR"
            ) from None
        raise PaserInputError(str(err)) from None


def load_bundle_arg(name_or_path: str | None) -> Bundle:
    """Resolve and load ``--bundle``; a missing bundle becomes a one-line input error."""
    folder = resolve_bundle_arg(name_or_path)
    from ..engine.bundle import load_bundle

    return load_bundle(folder)


def check_knobs(lam: float | None, tvd: float | None, mc_passes: int | None = None, batch_size: int | None = None) -> None:
    """Range checks of the numeric options, as one-line input errors."""
    for name, value in (("--lam", lam), ("--tvd", tvd)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise PaserInputError(f"{name} must be in [0, 1], got {value}")
    for name, value in (("--mc-passes", mc_passes), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise PaserInputError(f"{name} must be at least 1, got {value}")


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail before any work if ``path`` cannot be written."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists (use --overwrite)")
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder")
    return p


def write_json(path: str | os.PathLike, data: dict, overwrite: bool = False) -> Path:
    """Write ``data`` as JSON atomically (temporary file in the same folder, then rename)."""
    p = check_writable(path, overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    from ..io import FILE_MODE

    with tempfile.NamedTemporaryFile("w", dir=p.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(data, tmp, indent=2)
    os.chmod(tmp.name, FILE_MODE)  # NamedTemporaryFile makes 0600: use the user's umask
    os.replace(tmp.name, p)
    return p


LOG_INTERVAL_S = 30.0
"""Seconds between progress lines when stderr is not a terminal (a cluster job's log)."""


def bar_options() -> dict[str, Any]:
    """tqdm's output options of every command's progress: stderr, redrawn up to ten times
    a second on a terminal; written to a file (a batch job's log), a line at most every
    :data:`LOG_INTERVAL_S` seconds, so a run of hours leaves a readable log rather than one
    redraw per plane. Draw with ``update`` (or ``refresh=False``), which keep to this."""
    return {"file": sys.stderr, "mininterval": 0.1 if sys.stderr.isatty() else LOG_INTERVAL_S}


def progress_bar(desc: str, quiet: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A tqdm bar (:func:`bar_options`) driven by ``(done, total)`` callbacks; returns
    (callback, close)."""
    from tqdm import tqdm

    # delay: a run that fails at once (bad input) prints only its one error line.
    bar = tqdm(total=0, desc=desc, unit="step", disable=quiet, leave=False, delay=1.0, **bar_options())

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)  # drawn when mininterval has passed, unlike refresh()

    return update, bar.close


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, VoxelSize | None]:
    """``io.read_stack`` with every failure on a damaged file reported as one input error."""
    import logging

    from .. import io

    # tifffile logs its own warnings about damaged files to stderr: the error line says it.
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return io.read_stack(path)
    except (PaserInputError, FileNotFoundError):
        raise
    except io.TIFF_READ_ERRORS as err:  # tifffile raises IndexError/KeyError/struct.error on corrupt files
        raise PaserInputError(f"not a readable TIFF file: {path} ({type(err).__name__}: {err})") from None
    finally:
        log.setLevel(level)


def make_segmenter(args: argparse.Namespace, bundle: Bundle) -> PaserSegmenter:
    """The engine for ``bundle`` with the command's MC passes, seed, batch size, precision
    and border blending."""
    from ..engine.pipeline import DEFAULT_BATCH_SIZE, PaserSegmenter

    return PaserSegmenter(bundle, mc_passes=args.mc_passes, seed=args.seed, batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
                          precision=args.precision, blend_borders=args.blend_borders)


def _beside(out: Path, kind: str) -> Path:
    return out.with_name(f"{out.stem}_{kind}{out.suffix}")


def _tiff_meta(meta: dict, kind: str, patch: tuple[int, int], voxel_size: Any) -> dict:
    """TIFF metadata: the labels carry the run's summary; the maps beside them say what
    they are, and the routing map (one pixel a patch, no voxel size of its own) where its
    patches lie, so that napari places it over the scan."""
    if kind == "labels":
        return {"napari_paser": meta}
    out: dict[str, Any] = {"napari_paser": meta, "kind": kind}
    if kind == "routing":
        out["patch_size"] = list(patch)
        out["voxel_size_um"] = list(voxel_size) if voxel_size else None
    return out


def _run_key(args, volume, bundle_path: Path, bundle, slab: int, device: str) -> dict:
    """What makes two runs the same run: an unfinished Zarr output is resumed only by it."""
    from ..engine.bundle import bundle_record
    from ..engine.pipeline import get_method

    # A GPU may label a near-tie pixel differently from a CPU, so a run resumes on the
    # device it began on; "cpu" adds nothing, so stores begun before --device resume.
    on: dict[str, Any] = {} if device == "cpu" else {"device": device}
    if args.precision != "fp32":  # other labels too; fp32 adds nothing, as the CPU does
        on["precision"] = args.precision
    if args.blend_borders:  # other labels near the borders; without it stores begun before the option resume
        on["blend_borders"] = True
    return {
        **on,
        "input": volume.source,
        "shape": [int(v) for v in volume.shape],
        "dtype": str(volume.dtype),
        "method": args.method,
        "lam": args.lam,
        "tvd": args.tvd,
        "bundle": {"path": str(bundle_path.resolve()), **bundle_record(bundle, fused=get_method(args.method).analyse)},
        "mc_passes": args.mc_passes,
        "seed": args.seed,
        "slab": slab,
        "entropy": bool(args.entropy),
        "routing": bool(args.routing),
    }


def executor_from_args(args: argparse.Namespace):
    """A dask executor for ``--workers N`` (N > 1) or ``--scheduler``, else a local one."""
    from ..engine.streaming import LocalExecutor, dask_executor

    if args.scheduler or (args.workers or 1) > 1:
        return dask_executor(workers=args.workers, scheduler=args.scheduler)
    return LocalExecutor()


def run(args: argparse.Namespace) -> int:
    from ..engine.bundle import bundle_record
    from ..engine.devices import resolve_device
    from ..engine.patches import grid_shape
    from ..engine.pipeline import DEFAULT_BATCH_SIZE, get_method
    from ..engine.precision import check_precision
    from ..engine.streaming import check_volume, default_slab, stream_segment
    from ..io_sources import CroppedVolume, box_ranges, open_volume, parse_roi
    from ..io_writers import OmeZarrOutput, is_zarr_path

    t0 = time.perf_counter()
    check_knobs(args.lam, args.tvd, args.mc_passes, args.batch_size)
    if args.slab is not None and args.slab < 1:
        raise PaserInputError(f"--slab must be at least 1, got {args.slab}")
    if args.workers is not None and args.workers < 1:
        raise PaserInputError(f"--workers must be at least 1, got {args.workers}")
    if args.check_planes < 0:
        raise PaserInputError(f"--check-planes must be at least 0, got {args.check_planes}")
    get_method(args.method)  # fail on a typo before reading anything
    device = resolve_device(args.device)
    precision = check_precision(args.precision, device)
    out = Path(args.output)
    zarr_out = is_zarr_path(out)
    extra = [k for k in ("entropy", "routing") if getattr(args, k)]
    if not zarr_out:
        for p in [out] + [_beside(out, k) for k in extra]:
            check_writable(p, args.overwrite)
    if args.report:
        check_writable(args.report, args.overwrite)
    volume = open_volume(args.input, args.dataset)
    roi = None
    if args.roi:
        try:
            roi = parse_roi(args.roi, volume.shape, volume.input_ndim)
        except PaserInputError:
            volume.close()
            raise
        volume = CroppedVolume(volume, roi)
    bundle_path = resolve_bundle_arg(args.bundle).resolve()  # absolute: dask workers load it too
    from ..engine.bundle import choose_blend, load_bundle

    bundle = load_bundle(bundle_path)
    args.blend_borders = choose_blend(args.blend_borders, bundle)
    ph, pw = bundle.patch_size
    patch = (int(ph), int(pw))
    check_volume(volume, patch)
    slab = int(args.slab or default_slab(volume.shape, patch, blend_borders=args.blend_borders))
    plane_shape = volume.input_shape
    provenance = {"method": args.method, "lam": args.lam, "tvd": args.tvd,
                  "bundle": bundle_record(bundle, fused=get_method(args.method).analyse, blend_borders=args.blend_borders)}
    if roi is not None:  # where the labels lie in the input: (start, stop) per axis of the input
        provenance["roi"] = box_ranges(roi, volume.input_ndim)
    if precision != "fp32":
        provenance["precision"] = precision

    store = writers = None
    todo = None
    if zarr_out:
        store = OmeZarrOutput(out)
        todo = store.prepare(shape=volume.shape, grid=grid_shape(volume.shape[1:], patch), patch_size=patch, slab=slab,
                             run_key=_run_key(args, volume, bundle_path, bundle, slab, device), voxel_size=volume.voxel_size,
                             entropy=args.entropy, routing=args.routing, overwrite=args.overwrite)
    else:
        writers = _tiff_writers(out, ["labels"] + extra, volume, patch, provenance, args.overwrite)
    executor = None
    update, close = progress_bar(f"segment ({args.method})", args.quiet)
    try:
        executor = executor_from_args(args)
        summary = stream_segment(
            volume, str(bundle_path), method=args.method, lam=args.lam, tvd=args.tvd, mc_passes=args.mc_passes,
            seed=args.seed, batch_size=args.batch_size or DEFAULT_BATCH_SIZE, slab=slab,
            writer=(lambda kind, arr: writers[kind].write(arr)) if writers else None,
            zarr_output=store, todo=todo, entropy=args.entropy, routing=args.routing,
            executor=executor, progress=update, bundle=bundle, device=device, precision=precision,
            f2_check_planes=args.check_planes, blend_borders=args.blend_borders,
        )
    except BaseException:
        for w in (writers or {}).values():
            w.abort()
        raise
    finally:
        close()
        if executor is not None:
            executor.close()
        volume.close()
    # Coarser levels for viewers: one more read of the labels, before the run counts as done.
    pyramid = store.write_pyramid() if store is not None else None
    report = summary.report
    report.update(
        {
            "input": volume.source,
            "output": str(out.resolve()),
            "voxel_size": list(volume.voxel_size) if volume.voxel_size else None,
            "device": device,
            "precision": precision,
            "roi": provenance.get("roi"),
            "seconds_total": time.perf_counter() - t0,
            "resumed_slabs_skipped": (-(-volume.shape[0] // slab)) - len(summary.done_slabs),
        }
    )
    if pyramid is not None:
        report["pyramid_levels"] = [list(shape) for shape in pyramid]
    meta = {k: report[k] for k in ("method", "lam", "tvd", "bundle", "gflops_total", "route_fraction")}
    if roi is not None:
        meta["roi"] = report["roi"]
    if precision != "fp32":
        meta["precision"] = precision
    if writers:
        for kind, w in writers.items():
            w.close(_tiff_meta(meta, kind, patch, volume.voxel_size))
    else:
        assert store is not None  # no writers: the output is a Zarr store
        store.finish(report)
    if args.report:
        write_json(args.report, report, overwrite=args.overwrite)
    _print_summary(report, out, plane_shape)
    return 0


def _tiff_writers(out: Path, kinds: list[str], volume: Any, patch: tuple[int, int], provenance: dict, overwrite: bool) -> dict:
    """One TIFF writer per output ``kinds`` (labels, entropy, routing), each beside ``out``."""
    import numpy as np

    from ..engine.patches import grid_shape
    from ..io_writers import TiffSliceWriter

    plane_shape = volume.input_shape
    grid = grid_shape(volume.shape[1:], patch)
    routing_shape = grid if volume.input_ndim == 2 else (volume.shape[0], *grid)
    specs = {"labels": (out, plane_shape, np.uint8), "entropy": (_beside(out, "entropy"), plane_shape, np.float32),
             "routing": (_beside(out, "routing"), routing_shape, np.uint8)}
    writers = {}
    for kind in kinds:
        path, shape, dtype = specs[kind]
        writers[kind] = TiffSliceWriter(path, shape, dtype, voxel_size=volume.voxel_size if kind != "routing" else None,
                                        metadata=_tiff_meta(provenance, kind, patch, volume.voxel_size), overwrite=overwrite)
    return writers


def _print_summary(report: dict, out: Path, plane_shape: tuple[int, ...]) -> None:
    """The run in a line (and the check against f2 in another, if asked for)."""
    lam = "-" if report["lam"] is None else f"{report['lam']:.4g}"
    fractions = report["route_fraction"]
    frac = " ".join(f"{k}={v:.1%}" for k, v in fractions.items())
    px = report["bundle"].get("blended_borders_px")
    blended = f", borders blended over {px} pixels" if px else ""
    if px and fractions.get("f1", 0) == 0 and fractions.get("f2", 0) == 0:
        blended = ", no border blended (every patch on f0)"  # engine.blending leaves f0 beside f0 as it is
    check = report.get("f2_check")
    if check:
        print(f"against f2 on every patch of {len(check['planes'])} planes: {check['agreement']:.2%} of pixels alike, "
              f"mean IoU {check['mean_iou']:.4f} ({check['seconds']:.1f} s)")
    print(
        f"wrote {out} {plane_shape} method={report['method']} lam={lam} "
        f"GFLOPs={report['gflops_total']:.3g} ({report['flops_ratio_vs_f2']:.1%} of f2 everywhere) "
        f"routing: {frac}{blended} in {report['seconds']:.1f} s"
    )
