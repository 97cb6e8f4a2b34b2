"""``napari-paser train``: train a PaSeR bundle, or fine-tune one on your own labelled scans.

Examples
--------
Train from scratch on synthetic volumes (the bundled model)::

    napari-paser train --data data/synth_train --out runs/paser-synth-quick --preset quick --seed 0

Fine-tune the bundled model on one labelled stack of your scanner::

    napari-paser train --images scan.tif --labels scan_labels.tif --init paser-synth-v2.29 --out my-bundle
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a PaSeR bundle (or fine-tune one with --init)",
        description=(
            "Train f2/f1 (patches), f0 (whole slices, distilled from f2), the routing policy "
            "(REINFORCE over cached rewards, one policy for every lambda) and fine-tune them "
            "jointly; volumes are split into pretrain/RL/fine-tune/validation sets by volume. "
            "Rerunning the same command resumes from OUT/checkpoints."
        ),
    )
    src = p.add_argument_group("data (either --images/--labels or --data)")
    src.add_argument("--images", nargs="+", metavar="TIF", help="image stacks (TIFF)")
    src.add_argument("--labels", nargs="+", metavar="TIF",
                     help="label stacks (0 pore, 1 carbon-binder, 2 nickel; 255 unlabelled: sparse labels), same order")
    src.add_argument("--data", metavar="DIR", help="folder of NAME_image.tif/NAME_labels.tif pairs, or the paper's PNG layout")
    src.add_argument("--extra-pretrain", metavar="DIR",
                     help="folder of more NAME_image.tif/NAME_labels.tif pairs for pre-training f2/f1/f0 only; the "
                          "RL and validation volumes stay those of --data")
    src.add_argument("--extra-rl", metavar="DIR",
                     help="folder of more NAME_image.tif/NAME_labels.tif pairs for fitting the routing policy only "
                          "(volumes no network was trained on); the other splits stay those of --data")
    p.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="output bundle folder (also report and checkpoints)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="training recipe: quick (CPU, ~30 min), paper (the paper's schedule, GPU), init "
                        "(short fine-tuning of the --init bundle) or a bundle's own recipe, v2 to v2.25 "
                        "(default: quick, or init with --init; --list-presets describes each)")
    p.add_argument("--list-presets", action=_ListPresets, help="describe every preset and exit")
    p.add_argument("--init", metavar="BUNDLE", help="start from this bundle (registry name or folder)")
    p.add_argument("--warm-start", metavar="BUNDLE",
                   help="fresh networks of the preset, but each one whose weights fit starts from this bundle's")
    p.add_argument("--teacher", metavar="BUNDLE",
                   help="for a preset that trains f1 on another f1 as a teacher (v2.25): that f1's bundle "
                        "(default: the --warm-start bundle, where its f1 has another shape)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count (to fit a time budget)")
    p.add_argument("--tvd", type=float, default=None, metavar="TAU",
                   help="paper's TVD mode: default lambda = largest whose routing is within TVD TAU of lambda=0")
    p.add_argument("--name", help="bundle name in the manifest (default: the output folder's name)")
    p.add_argument("--description", help="bundle description in the manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.set_defaults(func=run)
    return p


class _ListPresets(argparse.Action):
    """``--list-presets``: print the presets and exit, like ``--help`` (no --out needed)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from ..train.presets import describe_presets

        print(describe_presets())
        parser.exit()


def _scaled(cfg, scale: float):
    if scale == 1.0:
        return cfg
    if scale <= 0:
        from ..errors import PaserInputError

        raise PaserInputError("--scale must be positive")
    # Every stage's step count, the refiner's too.
    keys = [f.name for f in dataclasses.fields(cfg) if f.name.endswith("_steps")]
    # A stage the preset switches off (0 steps) stays off.
    return cfg.replace(**{k: max(1, int(round(getattr(cfg, k) * scale))) if getattr(cfg, k) > 0 else 0 for k in keys})


def run(args: argparse.Namespace) -> int:
    from ..errors import PaserInputError

    if bool(args.data) == bool(args.images or args.labels):
        raise PaserInputError("give either --images with --labels, or --data")
    if args.images and (not args.labels or len(args.images) != len(args.labels)):
        raise PaserInputError("--images and --labels need the same number of files")

    import torch

    from ..engine.bundle import load_bundle
    from ..engine.devices import resolve_device
    from ..engine.registry import resolve_bundle
    from ..train.datasets import load_data_dir, load_tiff_pairs
    from ..train.presets import get_preset
    from ..train.runner import train

    if args.threads is not None:
        if args.threads < 1:
            raise PaserInputError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    init = load_bundle(resolve_bundle(args.init)) if args.init else None
    if init is not None and args.warm_start:
        raise PaserInputError("give --init (fine-tune a bundle) or --warm-start (new networks), not both")
    warm = load_bundle(resolve_bundle(args.warm_start)) if args.warm_start else None
    teacher = load_bundle(resolve_bundle(args.teacher)) if args.teacher else None
    try:
        cfg = get_preset(args.preset or ("init" if init is not None else "quick"))
    except ValueError as err:  # an unknown name: the message lists the presets
        raise PaserInputError(f"--preset: {err}") from None
    cfg = _scaled(cfg, args.scale)
    if args.tvd is not None:
        if not 0 <= args.tvd <= 1:
            raise PaserInputError("--tvd must be in [0, 1]")
        cfg = cfg.replace(tvd=args.tvd)
    norm = init.normalization if init is not None else None
    if args.data:
        volumes, validation = load_data_dir(args.data, norm)
    else:
        volumes, validation = load_tiff_pairs(args.images, args.labels, norm), None
    extra = load_data_dir(args.extra_pretrain, norm)[0] if args.extra_pretrain else ()
    extra_rl = load_data_dir(args.extra_rl, norm)[0] if args.extra_rl else ()
    command = "napari-paser " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and sys.argv[0].endswith("napari-paser") else ""
    if not command:
        command = "napari-paser train " + _describe(args)
    result = train(
        volumes,
        args.out,
        cfg,
        validation=validation,
        extra_pretrain=extra,
        extra_rl=extra_rl,
        init=init,
        warm_start=warm,
        teacher=teacher,
        device=args.device,
        seed=args.seed,
        command=command,
        name=args.name,
        description=args.description,
        progress=not args.no_progress,
    )
    v = result.report.get("validation")
    summary = f"wrote {result.bundle_dir} (default lambda {result.bundle.default_lam:.3f})"
    if v:
        summary += f"; validation mean IoU f2 {v['models']['f2']['mean_iou']:.4f}, PaSeR {v['paser']['mean_iou']:.4f}"
    print(summary)
    return 0


def _describe(args: argparse.Namespace) -> str:
    """The command line rebuilt from parsed arguments (when not run as the console script)."""
    parts = []
    if args.data:
        parts += ["--data", args.data]
    if args.images:
        parts += ["--images", *args.images, "--labels", *args.labels]
    if args.extra_pretrain:
        parts += ["--extra-pretrain", args.extra_pretrain]
    if args.extra_rl:
        parts += ["--extra-rl", args.extra_rl]
    parts += ["--out", args.out]
    for opt in ("preset", "init", "warm_start", "teacher", "tvd", "name"):
        if getattr(args, opt) is not None:
            parts += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    if args.device != "cpu":
        parts += ["--device", args.device]
    if args.scale != 1.0:
        parts += ["--scale", str(args.scale)]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    parts += ["--seed", str(args.seed)]
    return " ".join(shlex.quote(p) for p in parts)
