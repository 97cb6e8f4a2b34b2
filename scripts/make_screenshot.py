"""Make the README screenshot: napari with the PaSeR widget run on the sample stack.

Run under a virtual display::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshot.py
    xvfb-run -a python scripts/make_screenshot.py --bundle path/to/bundle --out docs/screenshot.png

The run is synchronous (the widget's blocking mode) so the picture shows finished layers.
It refuses to replace an existing picture unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _shots import open_sample, picture_parser, settle, write_shot


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = picture_parser(__doc__, "screenshot.png", (1500, 900), "bundle name or folder")
    parser.add_argument("--lam", type=float, default=None, help="λ to show (default: the bundle's)")
    parser.add_argument("--slice", type=int, default=None, help="slice to show (default: the middle one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from napari_paser.engine.registry import bundle_patch_size

    args = parse_args(argv)
    opened = open_sample(args)
    if opened is None:
        return 1
    viewer, image, truth, _, widget = opened
    widget.ground_truth_layer = truth
    if args.lam is not None:  # else the bundle's own, which the widget starts at
        widget.lam = args.lam
    z = image.data.shape[0] // 2 if args.slice is None else args.slice
    viewer.dims.set_point(0, z * image.scale[0] + image.translate[0])
    outcome = widget.run(blocking=True)
    if outcome is None:
        print("the run failed (see the notification above)", file=sys.stderr)
        return 1
    viewer.layers["entropy"].visible = False
    viewer.layers.selection.active = viewer.layers["phases"]
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9 : older
    camera.zoom *= 0.95
    settle(20, 0.0)
    size = write_shot(viewer, args.out)
    if size is None:
        return 1
    bundle = Path(widget.bundle_path)
    stats = widget.stats.stats
    print(
        f"wrote {args.out} ({size[0]}x{size[1]}); bundle {bundle.name}, patch {bundle_patch_size(bundle)}, "
        f"λ {outcome.lam:.3f}, f2 patches {100 * stats['route_fraction']['f2']:.0f} %, "
        f"GFLOPs {stats['gflops_percent_of_f2']:.0f} % of f2, mean IoU {stats.get('mean_iou', float('nan')):.3f}"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
