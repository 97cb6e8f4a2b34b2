"""``napari-paser finetune``: adapt a bundle to one scan from a few (sparse) labels, in minutes.

Examples
--------
Paint some pixels of a few slices (0 pore, 1 carbon-binder, 2 nickel, 255 unlabelled),
adapt the default bundle to the scan and segment it with the result::

    napari-paser finetune scan.tif --labels scan_strokes.tif            # writes ./scan-paser-ft/
    napari-paser segment scan.tif -o scan_phases.tif --bundle scan-paser-ft
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .segment import bar_options, bundle_help

if TYPE_CHECKING:
    from ..io_sources import Volume

__all__ = ["add_parser", "run"]

HELP = "adapt a bundle to one scan from sparse labels (255 = unlabelled) within a time budget"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("finetune", help=HELP, description=HELP + ". The result is a new bundle folder.")
    p.add_argument("image", metavar="IMG.tif",
                   help="the scan: grayscale (Z,Y,X) stack or (Y,X) slice; any input `segment` reads (TIFF, folder of "
                        "slices, HDF5, Zarr), read a plane at a time: only the painted planes and their neighbours are kept")
    p.add_argument("--dataset", metavar="PATH", help="dataset of an HDF5 file or array of a Zarr store (default: found)")
    p.add_argument("--labels", required=True, metavar="LAB.tif",
                   help="same shape: 0 pore, 1 carbon-binder, 2 nickel, 255 unlabelled (whole unlabelled slices allowed); "
                        "any input `segment` reads")
    p.add_argument("--bundle", default=None, metavar="NAME|DIR", help=bundle_help("bundle to start from: registry name or folder"))
    p.add_argument("--out", metavar="BUNDLE_DIR",
                   help="output bundle folder (default: IMAGE-STEM-paser-ft beside the image, -2, -3... if taken)")
    p.add_argument("--name", help="bundle name in the manifest (default: the folder's name)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="wall-clock budget (default: scaled with the labelled area, 60 s to at most 180 s)")
    p.add_argument("--planes", type=int, default=None, metavar="N",
                   help="neighbouring planes the adapted networks read (odd; 1 keeps them 2-D; default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import PaserInputError
    from ..io_sources import open_volume, scan_under_labels

    if args.budget is not None and args.budget <= 0:
        raise PaserInputError("--budget must be positive")
    if args.threads is not None and args.threads < 1:
        raise PaserInputError("--threads must be at least 1")
    if args.planes is not None and (args.planes < 1 or args.planes % 2 == 0):
        raise PaserInputError(f"--planes must be an odd number of planes (1, 3, 5, ...), got {args.planes}")
    # Both are read when fine-tuning needs them: the labels a slab at a time, keeping
    # the painted slices; the scan's painted planes and their neighbours.
    with open_volume(args.labels) as labels, open_volume(args.image, args.dataset) as image:
        image, recorded = scan_under_labels(image, labels, args.labels)
        if recorded:  # labels of a run over a region (segment --roi), corrected: adapt on that region
            print(f"the labels are the box {recorded} of the scan (segment --roi): fine-tuning reads that box", file=sys.stderr)
        return _finetune(args, image, labels)


def _finetune(args: argparse.Namespace, image: Volume, labels: Volume) -> int:
    from ..io_sources import input_path
    from ..train.sparse_labels import PaintedSlices, read_labelled_slices
    from .segment import load_bundle_arg

    shape = image.input_shape
    # Checked and read once, before loading torch; fine-tuning gets only the painted slices.
    painted = PaintedSlices(shape, *read_labelled_slices(labels, shape))
    out = Path(args.out) if args.out else None
    if out is not None and (out / "manifest.json").exists():
        raise FileExistsError(f"{out} already holds a bundle; choose another --out")
    bundle = load_bundle_arg(args.bundle)

    from tqdm import tqdm

    from ..train.finetune import FinetuneConfig, finetune, save_finetuned, unique_bundle_folder

    cfg = FinetuneConfig(budget_s=args.budget, seed=args.seed, threads=args.threads)
    if args.planes is not None:
        cfg.planes = args.planes
    bar = tqdm(total=100, desc="finetune", unit="%", disable=args.quiet, bar_format="{l_bar}{bar}| {elapsed} {postfix}",
               **bar_options())

    def show(msg: Any) -> None:
        bar.set_postfix_str(msg.text, refresh=False)
        bar.update(int(100 * msg.fraction) - bar.n)  # drawn when bar_options' interval has passed

    try:
        result = finetune(bundle, image, painted, cfg, callback=show)
    finally:
        bar.close()
    if out is None:
        source = input_path(args.image).resolve()  # scan.h5 of scan.h5:/exchange/data, recon/ of recon/*.tif
        out = unique_bundle_folder(source.parent, f"{source.stem}-paser-ft")
    folder = save_finetuned(result, out, args.name)
    held = result.held_out_iou
    print(
        f"wrote {folder} in {result.seconds:.0f} s; held-out mean IoU f2 {held['start']['f2']:.4f} -> {held['best']['f2']:.4f}, "
        f"f1 {held['start']['f1']:.4f} -> {held['best']['f1']:.4f}, f0 {held['start']['f0']:.4f} -> {held['best']['f0']:.4f}; "
        f"default lambda {result.bundle.default_lam:.3f}"
    )
    return 0
