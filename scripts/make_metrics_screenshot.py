"""Make the docs picture of the metrics panel: the sample stack segmented by PaSeR, its
microstructure metrics and their band over cheaper and dearer segmentations.

Run under a virtual display::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_metrics_screenshot.py

The sample is segmented with the bundle at its default λ, then *Microstructure metrics*
computes the metrics of the ``phases`` layer along the plane axis with the grey scan as
*Band image* (the default band), synchronously, so the picture shows the finished table
and porosity band. Refuses to replace an existing picture unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle to segment with (default: the bundled default)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "metrics_panel.png", help="PNG to write")
    parser.add_argument("--axis", type=int, default=0, help="axis of the profile and of τ (default 0, across the planes)")
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 1000), metavar=("W", "H"), help="window size")
    parser.add_argument("--dock-width", type=int, default=580, help="width of the metrics panel in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing picture")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"{args.out} exists: pass --overwrite to replace it", file=sys.stderr)
        return 1
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_paser.engine.registry import resolve_bundle

    viewer = napari.Viewer(show=True, title="napari-paser")
    viewer.window._qt_window.resize(*args.size)
    image, truth = viewer.open_sample("napari-paser", "electrode")
    truth.visible = False
    widget_dock, widget = viewer.window.add_plugin_dock_widget("napari-paser", "PaSeR segmentation")
    if not widget.add_bundle_folder(resolve_bundle(args.bundle)):
        return 1
    widget.image_layer = image
    t0 = time.perf_counter()
    if widget.run(blocking=True) is None:
        return 1
    viewer.layers["routing"].visible = False
    viewer.layers["entropy"].visible = False
    panel_dock, panel = viewer.window.add_plugin_dock_widget("napari-paser", "Microstructure metrics")
    panel.refresh_layers()
    panel.labels_combo.setCurrentText("phases")
    panel.image_combo.setCurrentText(image.name)
    panel.axis_spin.setValue(args.axis)
    outcome = panel.compute(blocking=True)
    if outcome is None:
        return 1
    # The two panels as tabs, the metrics in front: stacked, neither would show whole.
    viewer.window._qt_window.tabifyDockWidget(widget_dock, panel_dock)
    panel_dock.raise_()
    viewer.window._qt_window.resizeDocks([panel_dock], [args.dock_width], Qt.Orientation.Horizontal)  # the whole table
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    viewer.reset_view()  # fit the stack to the canvas the wider panel left
    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)
    viewer.layers.selection.active = viewer.layers["phases"]
    shot = viewer.screenshot(path=None, canvas_only=False, flash=False)
    rgb = np.asarray(shot)[..., :3]
    if rgb.std() < 5 or len(np.unique(rgb.reshape(-1, 3), axis=0)) < 50:
        print("the screenshot looks blank: is a (virtual) display with OpenGL available?", file=sys.stderr)
        return 1
    import imageio.v3 as iio

    tmp = args.out.with_name(f".{args.out.name}.tmp.png")
    iio.imwrite(tmp, np.asarray(shot))
    tmp.replace(args.out)  # atomic: never a half-written picture
    print(f"wrote {args.out} ({shot.shape[1]}x{shot.shape[0]}) after {time.perf_counter() - t0:.0f} s "
          f"(segmentation, metrics and band)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
