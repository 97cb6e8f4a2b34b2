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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle name or folder (default: the bundled default)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png", help="PNG to write")
    parser.add_argument("--lam", type=float, default=None, help="λ to show (default: the bundle's)")
    parser.add_argument("--slice", type=int, default=None, help="slice to show (default: the middle one)")
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 900), metavar=("W", "H"), help="window size")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing picture")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"{args.out} exists: pass --overwrite to replace it", file=sys.stderr)
        return 1
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_paser.engine.registry import resolve_bundle
    from napari_paser.napari_ui._widget import bundle_patch_size

    try:
        bundle = resolve_bundle(args.bundle)
    except FileNotFoundError as err:
        print(f"no bundle: {err}", file=sys.stderr)
        return 1
    viewer = napari.Viewer(show=True, title="napari-paser")
    viewer.window._qt_window.resize(*args.size)
    image, truth = viewer.open_sample("napari-paser", "electrode")
    _, widget = viewer.window.add_plugin_dock_widget("napari-paser", "PaSeR segmentation")
    if not widget.add_bundle_folder(bundle):
        return 1
    widget.ground_truth_layer = truth
    if args.lam is not None:
        widget.lam = args.lam
    else:
        import json

        widget.lam = float(json.loads((Path(bundle) / "manifest.json").read_text()).get("default_lam", 0.5))
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
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    shot = viewer.screenshot(path=None, canvas_only=False, flash=False)
    rgb = np.asarray(shot)[..., :3]
    if rgb.std() < 5 or len(np.unique(rgb.reshape(-1, 3), axis=0)) < 50:
        print("the screenshot looks blank: is a (virtual) display with OpenGL available?", file=sys.stderr)
        return 1
    import imageio.v3 as iio

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp.png")
    iio.imwrite(tmp, np.asarray(shot))
    tmp.replace(args.out)  # atomic: never a half-written picture
    patch = bundle_patch_size(Path(bundle))
    stats = widget.stats.stats
    print(
        f"wrote {args.out} ({shot.shape[1]}x{shot.shape[0]}); bundle {Path(bundle).name}, patch {patch}, "
        f"λ {outcome.lam:.3f}, f2 patches {100 * stats['route_fraction']['f2']:.0f} %, "
        f"GFLOPs {stats['gflops_percent_of_f2']:.0f} % of f2, mean IoU {stats.get('mean_iou', float('nan')):.3f}"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
