"""``napari-paser segment``: label a TIFF stack with PaSeR (or one of its models alone)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ..errors import PaserInputError

HELP = "segment a TIFF stack into pore / carbon-binder / nickel labels"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("segment", help=HELP, description=HELP + ".")
    p.add_argument("input", metavar="INPUT.tif", help="grayscale (Z,Y,X) stack or (Y,X) slice")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tif", help="uint8 label stack to write")
    knob = p.add_mutually_exclusive_group()
    knob.add_argument("--lam", type=float, help="cost weight λ in [0, 1] (default: the bundle's)")
    knob.add_argument("--tvd", type=float, help="pick the largest λ whose routing stays within this TVD of λ=0")
    add_bundle_arguments(p)
    p.add_argument("--method", default="paser", help="paser (default), f0, f1 or f2 (one model everywhere)")
    p.add_argument("--report", metavar="REPORT.json", help="write a JSON report (FLOPs, routing, timing)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def add_bundle_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that run a bundle."""
    p.add_argument("--bundle", metavar="NAME|DIR", help="bundled model name or bundle folder (default: the default bundle)")
    p.add_argument("--mc-passes", type=int, metavar="N", help="MC-dropout passes of f0 (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dropout masks (default 0)")
    p.add_argument("--batch-size", type=int, metavar="N", help="patches per f1/f2 call")


def load_bundle_arg(name_or_path: str | None):
    """Resolve and load ``--bundle``; a missing bundle becomes a one-line input error."""
    from ..engine.registry import DEFAULT_BUNDLE, resolve_bundle

    try:
        folder = resolve_bundle(name_or_path)
    except FileNotFoundError as err:
        if name_or_path in (None, ""):
            raise PaserInputError(
                f"the default bundle {DEFAULT_BUNDLE!r} is not installed; pass --bundle NAME|DIR"
            ) from None
        raise PaserInputError(str(err)) from None
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
    with tempfile.NamedTemporaryFile("w", dir=p.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(data, tmp, indent=2)
    os.replace(tmp.name, p)
    return p


def progress_bar(desc: str, quiet: bool):
    """A tqdm bar on stderr driven by ``(done, total)`` callbacks; returns (callback, close)."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="step", file=sys.stderr, disable=quiet, leave=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def read_image(path: str | os.PathLike):
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
    except Exception as err:  # tifffile raises IndexError/KeyError/struct.error on corrupt files
        raise PaserInputError(f"not a readable TIFF file: {path} ({type(err).__name__}: {err})") from None
    finally:
        log.setLevel(level)


def make_segmenter(args, bundle):
    from ..engine.pipeline import DEFAULT_BATCH_SIZE, PaserSegmenter

    return PaserSegmenter(bundle, mc_passes=args.mc_passes, seed=args.seed, batch_size=args.batch_size or DEFAULT_BATCH_SIZE)


def run(args) -> int:
    from .. import io
    from ..engine.pipeline import drain, get_method

    t0 = time.perf_counter()
    check_knobs(args.lam, args.tvd, args.mc_passes, args.batch_size)
    get_method(args.method)  # fail on a typo before reading anything
    out = check_writable(args.output, args.overwrite)
    if args.report:
        check_writable(args.report, args.overwrite)
    image, voxel_size = read_image(args.input)
    bundle = load_bundle_arg(args.bundle)
    seg = make_segmenter(args, bundle)
    seg.set_volume(image)
    update, close = progress_bar(f"segment ({args.method})", args.quiet)
    try:
        result = drain(seg.run(lam=args.lam, tvd=args.tvd, method=args.method), update)
    finally:
        close()
    labels = result.labels[0] if image.ndim == 2 else result.labels
    report = result.report()
    report.update(
        {
            "input": str(Path(args.input).resolve()),
            "output": str(out.resolve()),
            "voxel_size": list(voxel_size) if voxel_size else None,
            "seconds_total": time.perf_counter() - t0,
        }
    )
    meta = {k: report[k] for k in ("method", "lam", "tvd", "bundle", "gflops_total", "route_fraction")}
    io.write_tiff(out, labels, voxel_size=voxel_size, metadata={"napari_paser": meta}, overwrite=args.overwrite)
    if args.report:
        write_json(args.report, report, overwrite=args.overwrite)
    lam = "-" if result.lam is None else f"{result.lam:.4g}"
    frac = " ".join(f"{k}={v:.1%}" for k, v in result.route_fraction.items())
    print(
        f"wrote {out} {tuple(labels.shape)} method={result.method} lam={lam} "
        f"GFLOPs={result.gflops_total:.3g} ({result.gflops_total / result.gflops_f2_everywhere:.1%} of f2 everywhere) "
        f"routing: {frac} in {result.seconds:.1f} s"
    )
    return 0
