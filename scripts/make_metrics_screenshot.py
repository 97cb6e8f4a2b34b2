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

import sys
import time

from _shots import open_sample, picture_parser, settle, write_shot


def main(argv: list[str] | None = None) -> int:
    parser = picture_parser(__doc__, "metrics_panel.png", (1500, 1000), "bundle to segment with")
    parser.add_argument("--axis", type=int, default=0, help="axis of the profile and of τ (default 0, across the planes)")
    parser.add_argument("--dock-width", type=int, default=580, help="width of the metrics panel in pixels")
    from qtpy.QtCore import Qt

    args = parser.parse_args(argv)
    opened = open_sample(args)
    if opened is None:
        return 1
    viewer, image, truth, widget_dock, widget = opened
    truth.visible = False
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
    if panel.compute(blocking=True) is None:
        return 1
    # The two panels as tabs, the metrics in front: stacked, neither would show whole.
    viewer.window._qt_window.tabifyDockWidget(widget_dock, panel_dock)
    panel_dock.raise_()
    viewer.window._qt_window.resizeDocks([panel_dock], [args.dock_width], Qt.Orientation.Horizontal)  # the whole table
    settle()
    viewer.reset_view()  # fit the stack to the canvas the wider panel left
    settle(10)
    viewer.layers.selection.active = viewer.layers["phases"]
    size = write_shot(viewer, args.out)
    if size is None:
        return 1
    print(f"wrote {args.out} ({size[0]}x{size[1]}) after {time.perf_counter() - t0:.0f} s (segmentation, metrics and band)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
