"""``napari-paser synth``: write synthetic electrode micro-CT volumes with labels."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import PaserInputError


def _size(text: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 224x256, got {text!r}") from None
    if y < 16 or x < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return y, x


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``synth`` and its options."""
    p = subparsers.add_parser(
        "synth",
        help="generate synthetic battery-electrode micro-CT volumes and labels",
        description=(
            "Write volK_image.tif (Z,Y,X, as the simulated scanner exports it: uint16, uint8 or "
            "float32 attenuation), volK_labels.tif (uint8: 0 pore, 1 carbon-binder, "
            "2 nickel) with the voxel size in the TIFF metadata, and volK.json (generation "
            "parameters and phase fractions). Deterministic per --seed."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--volumes", type=int, default=1, help="number of volumes (default 1)")
    p.add_argument("--slices", type=int, default=16,
                   help="slices per volume (default 16; fewer are cut from the middle of a 16-slice volume)")
    p.add_argument("--size", type=_size, default=(224, 256), help="slice size YxX (default 224x256)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--format", choices=("tiff", "paper"), default="tiff",
                   help="tiff stacks (default) or the paper's PNG folders: the last volume is the "
                        "test split, the one before it validation (3+ volumes), the rest train")
    p.add_argument("--name", default=None,
                   help="file stem instead of volK (one volume: NAME_image.tif, NAME.json; "
                        "several: NAMEK_...)")
    p.add_argument("--distribution", choices=("v1", "v2", "oof"), default="v2",
                   help="parameter distribution: v2 (wide training distribution, default), v1 (the first "
                        "generator: the in-family test), oof (held-out family and scanner: the out-of-family test)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes generating volumes at once (default 1; the files are the same for any number)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--resume", action="store_true",
                   help="keep the volumes already written by this generator with these arguments; write the rest")
    p.set_defaults(func=run)
    return p


def paper_splits(volumes: int) -> list[str]:
    """Split of each volume for ``--format paper``."""
    splits = ["train"] * volumes
    if volumes >= 2:
        splits[-1] = "test"
    if volumes >= 3:
        splits[-2] = "validation"
    return splits


def run(args: argparse.Namespace) -> int:
    """Generate and write the volumes; prints one line per volume."""
    if args.volumes < 1 or args.slices < 1 or args.workers < 1:
        raise PaserInputError("--volumes, --slices and --workers must be at least 1")
    from ..train.synth import generate_volume, volume_seed, write_dataset

    start = time.perf_counter()
    if args.format == "tiff":
        files = write_dataset(args.out, args.volumes, args.slices, args.size, args.seed,
                              name=args.name, overwrite=args.overwrite, distribution=args.distribution,
                              skip_current=args.resume, workers=args.workers)
        for f in files:
            print(f)
    else:
        from ..train.paper_layout import write_paper_layout

        out = Path(args.out)
        if not args.overwrite and any(out.glob("*_images/*.png")):
            raise FileExistsError(f"{out} already holds PNG images (use --overwrite)")
        groups: dict[str, list] = {}
        prefix = args.name or "vol"
        for k, split in enumerate(paper_splits(args.volumes)):
            image, labels, _ = generate_volume(volume_seed(args.seed, k), args.slices, args.size, distribution=args.distribution)
            groups.setdefault(split, []).append((image, labels))
        files = write_paper_layout(out, {s: groups[s] for s in ("train", "validation", "test") if s in groups},
                                   prefix=prefix)
        print(f"{len(files)} image/label PNG pairs in {out}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
