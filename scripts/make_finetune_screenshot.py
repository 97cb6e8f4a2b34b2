"""Make the docs picture of the fine-tuning panel mid-training (napari, sample stack, painted strokes).

Run under a virtual display::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_finetune_screenshot.py

Strokes are painted from the sample's ground truth (``simulate_strokes``) into a new
"training labels" layer of slices 0-3, fine-tuning starts in its worker as a user's would,
and the picture is taken once the held-out IoU has been scored a few times; then the
training is cancelled (its bundle goes to a temporary folder). Refuses to replace an
existing picture unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle to start from (default: the bundled default)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "finetune_panel.png", help="PNG to write")
    parser.add_argument("--evaluations", type=int, default=3, help="held-out scores to wait for before the picture")
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 950), metavar=("W", "H"), help="window size")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing picture")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"{args.out} exists: pass --overwrite to replace it", file=sys.stderr)
        return 1
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_paser.engine.registry import resolve_bundle
    from napari_paser.train.sparse_labels import simulate_strokes

    viewer = napari.Viewer(show=True, title="napari-paser")
    viewer.window._qt_window.resize(*args.size)
    image, truth = viewer.open_sample("napari-paser", "electrode")
    truth.visible = False
    _, widget = viewer.window.add_plugin_dock_widget("napari-paser", "PaSeR segmentation")
    if not widget.add_bundle_folder(resolve_bundle(args.bundle)):
        return 1
    _, panel = viewer.window.add_plugin_dock_widget("napari-paser", "Adapt PaSeR to this scan")
    panel.output_folder = tempfile.mkdtemp(prefix="napari-paser-shot-")
    panel.image_layer = image
    layer = panel.new_training_layer()
    strokes = np.full(layer.data.shape, 255, np.uint8)
    strokes[:4] = simulate_strokes(np.asarray(truth.data[:4]), 0.15, seed=0)
    layer.data = strokes
    viewer.dims.set_point(0, 2 * image.scale[0] + image.translate[0])
    panel.budget_s = 600
    worker = panel.start()
    if worker is None:
        return 1
    app = QApplication.instance()
    t0 = time.perf_counter()
    while panel.busy and time.perf_counter() - t0 < 900:
        app.processEvents()
        time.sleep(0.05)
        history = panel.history
        if history and len(history["eval_time"]) >= args.evaluations and len(history["time"]) >= 5:
            break
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    viewer.layers.selection.active = layer
    shot = viewer.screenshot(path=None, canvas_only=False, flash=False)
    panel.cancel()
    while panel.busy and time.perf_counter() - t0 < 1200:
        app.processEvents()
        time.sleep(0.05)
    rgb = np.asarray(shot)[..., :3]
    if rgb.std() < 5 or len(np.unique(rgb.reshape(-1, 3), axis=0)) < 50:
        print("the screenshot looks blank: is a (virtual) display with OpenGL available?", file=sys.stderr)
        return 1
    import imageio.v3 as iio

    tmp = args.out.with_name(f".{args.out.name}.tmp.png")
    iio.imwrite(tmp, np.asarray(shot))
    tmp.replace(args.out)  # atomic: never a half-written picture
    print(f"wrote {args.out} ({shot.shape[1]}x{shot.shape[0]}) after {time.perf_counter() - t0:.0f} s of fine-tuning")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
