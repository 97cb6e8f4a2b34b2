"""``napari-paser evaluate``: IoU and cost of PaSeR and of f0 / f1 / f2 alone on a labelled stack.

All methods share one segmenter: the f0 analysis runs once and every patch output is
computed once, so f1 / f2 everywhere reuse what PaSeR already ran. IoU is dataset
level (one confusion matrix over the whole stack, see :mod:`napari_paser.engine.metrics`);
GFLOPs and seconds are what each method costs when run alone.
"""

from __future__ import annotations

import argparse
import time

from ..errors import PaserInputError
from .segment import (
    add_blend_argument,
    add_bundle_arguments,
    check_knobs,
    check_writable,
    load_bundle_arg,
    make_segmenter,
    progress_bar,
    read_image,
    write_json,
)

HELP = "score PaSeR and f0 / f1 / f2 alone against ground-truth labels"
DEFAULT_METHODS = ("paser", "f0", "f1", "f2", "idk", "random")
RF = "rf"  # the classical baseline: a random forest trained on --rf-train-labels


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help=HELP, description=HELP + ".")
    p.add_argument("--images", required=True, metavar="IMG.tif", help="grayscale (Z,Y,X) stack or (Y,X) slice")
    p.add_argument("--labels", required=True, metavar="LAB.tif", help="labels 0 pore, 1 carbon-binder, 2 nickel")
    knob = p.add_mutually_exclusive_group()
    knob.add_argument("--lam", type=float, help="PaSeR cost weight λ in [0, 1] (default: the bundle's)")
    knob.add_argument("--tvd", type=float, help="choose PaSeR's λ for this TVD from λ=0")
    add_bundle_arguments(p)
    add_blend_argument(p)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated methods (default: " + ",".join(DEFAULT_METHODS) + "); "
                        "'rf': a random forest on multi-scale filter features, trained on --rf-train-labels")
    p.add_argument("--rf-train-labels", metavar="LAB.tif",
                   help="training labels of the random forest (method rf): same shape as the image, "
                        "0 pore, 1 carbon-binder, 2 nickel, 255 unlabelled")
    p.add_argument("--rf-trees", type=int, default=100, help="trees of the random forest (default 100)")
    p.add_argument("--rf-features", choices=("2d", "3d"), default="2d",
                   help="filters of the random forest: per slice (2d, default) or over the volume (3d, as ilastik on a 3-D dataset)")
    p.add_argument("--json", metavar="OUT.json", help="also write the scores as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def format_table(rows: list[dict], class_names: tuple[str, ...]) -> str:
    """Plain-text table of the per-method scores."""
    head = ["method", "mean IoU", *[f"IoU {n}" for n in class_names], "GFLOPs", "IoU/GFLOP", "seconds"]
    body = []
    for r in rows:
        per = [("-" if r["iou_per_class"][n] is None else f"{r['iou_per_class'][n]:.4f}") for n in class_names]
        gflops = "-" if r["gflops"] is None else f"{r['gflops']:.3f}"
        per_gflop = "-" if r["iou_per_gflop"] is None else f"{r['iou_per_gflop']:.4g}"
        body.append([r["method"], f"{r['mean_iou']:.4f}", *per, gflops, per_gflop, f"{r['seconds']:.2f}"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def _random_forest_row(image, train_labels, truth, names: tuple[str, ...], args) -> dict:
    """Fit the random forest on its training labels, segment the stack, score it (no GFLOPs: not a network)."""
    from ..engine.metrics import evaluate
    from ..engine.random_forest import RandomForestSegmenter

    t0 = time.perf_counter()
    update, close = progress_bar("evaluate (rf)", args.quiet)
    try:
        rf = RandomForestSegmenter(n_estimators=args.rf_trees, features=args.rf_features).fit(image, train_labels)
        pred = rf.predict(image, progress=update)
    finally:
        close()
    scores = evaluate(pred, truth, names)
    return {
        "method": RF,
        "mean_iou": scores["mean_iou"],
        "iou_per_class": scores["iou_per_class"],
        "gflops": None,
        "iou_per_gflop": None,
        "seconds": time.perf_counter() - t0,
        "lam": None,
        "tvd": None,
        "route_fraction": None,
        "confusion": scores["confusion"],
        "train_labels": args.rf_train_labels,
        "features": args.rf_features,
        "labelled_pixels": int((train_labels != 255).sum()),
    }


def run(args: argparse.Namespace) -> int:
    from ..engine.bundle import blend_width, bundle_record, choose_blend
    from ..engine.metrics import evaluate, iou_per_gflop
    from ..engine.normalize import validate_labels
    from ..engine.pipeline import drain, get_method
    from ..engine.precision import check_precision

    check_knobs(args.lam, args.tvd, args.mc_passes, args.batch_size)
    check_precision(args.precision, "cpu")  # the engine here runs on the CPU
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise PaserInputError("--methods is empty")
    for m in methods:
        if m != RF:
            get_method(m)
    if RF in methods and not args.rf_train_labels:
        raise PaserInputError("method rf needs --rf-train-labels (the random forest's training labels, 255 = unlabelled)")
    if args.rf_trees < 1:
        raise PaserInputError("--rf-trees must be at least 1")
    if args.json:
        check_writable(args.json, args.overwrite)
    image, _ = read_image(args.images)
    truth, _ = read_image(args.labels)
    truth = validate_labels(truth, image.shape)
    rf_labels = None
    if RF in methods:
        from ..train.sparse_labels import validate_training_labels

        rf_labels, _ = read_image(args.rf_train_labels)
        rf_labels = validate_training_labels(rf_labels, image.shape)
    bundle = load_bundle_arg(args.bundle)
    args.blend_borders = choose_blend(args.blend_borders, bundle)
    seg = make_segmenter(args, bundle)
    seg.set_volume(image)
    if truth.ndim == 2:
        truth = truth[None]
    names = bundle.class_names
    rows, lam_used = [], None
    t0 = time.perf_counter()
    for method in methods:
        if method == RF:
            rows.append(_random_forest_row(image, rf_labels, truth, names, args))
            continue
        uses_lam = get_method(method).uses_lam
        update, close = progress_bar(f"evaluate ({method})", args.quiet)
        try:
            res = drain(
                seg.run(lam=args.lam if uses_lam else None, tvd=args.tvd if uses_lam else None, method=method), update
            )
        finally:
            close()
        if uses_lam:
            lam_used = res.lam
        scores = evaluate(res.labels, truth, names)
        rows.append(
            {
                "method": method,
                "mean_iou": scores["mean_iou"],
                "iou_per_class": scores["iou_per_class"],
                "gflops": res.gflops_total,
                "iou_per_gflop": iou_per_gflop(scores["mean_iou"], res.gflops_total),
                "seconds": res.compute_seconds,
                "lam": res.lam,
                "tvd": res.tvd,
                "route_fraction": res.route_fraction,
                "confusion": scores["confusion"],
            }
        )
    print(format_table(rows, names))
    blended = f", patches blended across their borders over {blend_width(bundle)} pixels" if args.blend_borders else ""
    print(
        f"{seg.num_slices} slices, bundle {bundle.name}, lam={'-' if lam_used is None else f'{lam_used:.4g}'}{blended}; "
        "IoU: one confusion matrix over the stack; seconds: measured compute of the calls each method runs"
    )
    if args.json:
        write_json(
            args.json,
            {
                "images": args.images,
                "labels": args.labels,
                "bundle": bundle_record(bundle, fused=True, blend_borders=args.blend_borders),  # f0 fused into the methods that run its analysis
                "num_slices": seg.num_slices,
                "mc_passes": seg.mc_passes,
                "mc_estimate": seg.mc_estimate,
                "precision": args.precision,
                "wall_seconds": time.perf_counter() - t0,
                "methods": rows,
            },
            overwrite=args.overwrite,
        )
    return 0
