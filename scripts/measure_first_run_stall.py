"""Measure event-loop stalls during the FIRST threaded run of a napari session.

The first run also imports torch and creates the result layers, the one-off steps that
used to freeze the viewer (see ``napari_ui/_torch_loading.py`` and ``ResultLayers``).
Run under a display: ``xvfb-run -a python scripts/measure_first_run_stall.py``.
Prints the largest gap of a 10 ms heartbeat timer during the run.
"""

from __future__ import annotations

import time

import numpy as np


def main() -> None:
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_paser.io import read_stack
    from napari_paser.napari_ui._sample_data import sample_dir
    from napari_paser.napari_ui._widget import PaserWidget

    viewer = napari.Viewer(show=True)
    image, voxel = read_stack(sample_dir() / "electrode_image.tif")
    viewer.add_image(image, name="electrode", scale=voxel or (1, 1, 1))
    widget = PaserWidget(viewer)
    viewer.window.add_dock_widget(widget)
    app = QApplication.instance()
    deadline = time.perf_counter() + 3.0  # let the widget's background warm-up finish
    while time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.01)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    start = time.perf_counter()
    worker = widget.run()
    done = []
    worker.finished.connect(lambda: done.append(True))
    while not done:
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    gaps = np.diff(ticks) * 1000
    worst = np.argsort(gaps)[::-1][:5]
    print("largest gaps (ms, at s after start):", ", ".join(f"{gaps[i]:.0f} @ {ticks[i] - start:.2f}" for i in sorted(worst)))
    print(
        f"first threaded run ({image.shape[0]} slices, layers created): {time.perf_counter() - start:.1f} s; "
        f"heartbeat max gap {gaps.max():.0f} ms, p99 {np.percentile(gaps, 99):.0f} ms over {len(gaps)} ticks"
    )
    viewer.close()


if __name__ == "__main__":
    main()
