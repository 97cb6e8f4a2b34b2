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

import sys
import tempfile
import time

import numpy as np
from _shots import open_sample, picture_parser, settle, write_shot


def main(argv: list[str] | None = None) -> int:
    parser = picture_parser(__doc__, "finetune_panel.png", (1500, 950), "bundle to start from")
    parser.add_argument("--evaluations", type=int, default=3, help="held-out scores to wait for before the picture")
    from napari_paser.train.sparse_labels import simulate_strokes

    args = parser.parse_args(argv)
    opened = open_sample(args)
    if opened is None:
        return 1
    viewer, image, truth, _, _ = opened
    truth.visible = False
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
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t0 = time.perf_counter()
    while panel.busy and time.perf_counter() - t0 < 900:
        app.processEvents()
        time.sleep(0.05)
        history = panel.history
        if history and len(history["eval_time"]) >= args.evaluations and len(history["time"]) >= 5:
            break
    settle()
    viewer.layers.selection.active = layer
    size = write_shot(viewer, args.out)
    panel.cancel()
    while panel.busy and time.perf_counter() - t0 < 1200:
        app.processEvents()
        time.sleep(0.05)
    if size is None:
        return 1
    print(f"wrote {args.out} ({size[0]}x{size[1]}) after {time.perf_counter() - t0:.0f} s of fine-tuning")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
