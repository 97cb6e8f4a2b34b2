"""The fine-tuning panel in a real napari viewer: paint, adapt, the new bundle runs; cancel; bad input."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SHAPE = (2, 112, 128)  # 2 slices of a 2x2 grid of 56x64 patches


def _scan(seed=0):
    """Toy scan and its truth: bright discs (nickel), dark stripes (carbon-binder), pore elsewhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    lab = np.zeros(SHAPE, np.uint8)
    for z in range(SHAPE[0]):
        for cy, cx in rng.integers(0, 112, size=(6, 2)):
            lab[z][(yy - cy) ** 2 + (xx - cx) ** 2 < 200] = 2
        lab[z][((yy + 5 * z) % 22) < 3] = 1
    img = np.choose(lab, [9000.0, 20000.0, 40000.0]) + rng.normal(0, 2000, lab.shape)
    return np.clip(img, 0, 65535).astype(np.uint16), lab


@pytest.fixture
def notes(monkeypatch):
    """Notifications of the panel (and of the PaSeR widget), as (level, message)."""
    from napari_paser.napari_ui import _finetune_panel, _widget

    got: list[tuple[str, str]] = []
    for module in (_finetune_panel, _widget):
        for level in ("error", "warning", "info"):
            monkeypatch.setattr(module, f"show_{level}", lambda m, level=level: got.append((level, str(m))))
    return got


@pytest.fixture
def setup(make_napari_viewer, tiny_bundle_dir, tmp_path):
    from napari_paser.napari_ui._finetune_panel import FinetunePanel
    from napari_paser.napari_ui._widget import PaserWidget

    viewer = make_napari_viewer()
    img, truth = _scan()
    viewer.add_image(img, name="ct")
    widget = PaserWidget(viewer)
    viewer.window.add_dock_widget(widget, name="PaSeR segmentation")
    assert widget.add_bundle_folder(tiny_bundle_dir)
    widget.mc_spin.setValue(2)
    panel = FinetunePanel(viewer)
    viewer.window.add_dock_widget(panel, name="Adapt PaSeR to this scan")
    panel.output_folder = str(tmp_path / "bundles")  # the image has no file to put it beside
    return viewer, widget, panel, truth


def _paint_strokes(layer, truth, seed=0):
    """Short horizontal strokes through the labels layer's paint API, each in the phase under it."""
    rng = np.random.default_rng(seed)
    layer.brush_size = 3
    for z in range(truth.shape[0]):
        for _ in range(40):
            y, x = int(rng.integers(4, 108)), int(rng.integers(4, 116))
            label = int(truth[z, y, x])
            for dx in range(0, 8, 2):
                layer.paint((z, y, x + dx), label, refresh=False)
    layer.refresh()


def test_paint_adapt_select_and_run_with_the_new_bundle(setup, notes, qtbot):
    viewer, widget, panel, truth = setup
    layer = panel.new_training_layer()
    assert layer is not None and layer.name == "training labels" and layer.data.shape == SHAPE
    assert layer.axis_labels == ("plane", "row", "column")
    assert np.all(layer.data == 255)  # nothing painted: transparent everywhere
    _paint_strokes(layer, truth)
    painted = layer.data != 255
    assert 0.01 < painted.mean() < 0.5 and len(np.unique(layer.data[painted])) == 3
    panel.budget_s = 3
    outcome = panel.start(blocking=True)
    assert outcome is not None and not outcome.cancelled, notes
    folder = outcome.folder
    assert (folder / "manifest.json").is_file() and folder.parent.name == "bundles" and folder.name == "ct-paser-ft"
    assert widget.bundle_path == folder  # selected in the PaSeR widget
    assert any(level == "info" and "ct-paser-ft" in m for level, m in notes)
    assert panel.iou_ax.lines and panel.loss_ax.lines  # the plot was drawn
    ran = widget.run(blocking=True)
    assert ran is not None and ran.result.bundle["name"] == "ct-paser-ft"
    # A second adaptation never replaces the first bundle.
    again = panel.start(blocking=True)
    assert again.folder.name == "ct-paser-ft-2" and (folder / "manifest.json").is_file()


def test_a_stack_too_big_for_memory_gets_its_training_labels_on_disk(setup, notes, monkeypatch, tmp_path):
    zarr = pytest.importorskip("zarr")
    from napari_paser.napari_ui import _jobs

    viewer, widget, panel, truth = setup
    monkeypatch.setattr(_jobs, "STREAM_BYTES", 1)  # treat this small stack as one too big for memory
    layer = panel.new_training_layer()
    assert isinstance(layer.data, zarr.Array) and layer.data.shape == SHAPE
    store = next((tmp_path / "bundles").glob("napari-paser-labels-*/training_labels.zarr"))  # beside where the bundle goes
    assert str(store) in panel.status.text()
    _paint_strokes(layer, truth)  # napari paints into the store
    painted = np.asarray(layer.data[:]) != 255
    assert 0.01 < painted.mean() < 0.5
    request = panel._request()
    assert request.labels.slices == list(range(SHAPE[0]))
    np.testing.assert_array_equal(request.labels.read(0, SHAPE[0]), np.asarray(layer.data[:]))


def test_cancel_mid_training_saves_a_usable_bundle_and_the_viewer_stays_responsive(setup, notes, qtbot):
    from qtpy.QtCore import QTimer

    from napari_paser.engine.bundle import load_bundle

    viewer, widget, panel, truth = setup
    layer = panel.new_training_layer()
    _paint_strokes(layer, truth)
    panel.budget_s = 300
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    worker = panel.start()
    assert worker is not None and panel.busy
    qtbot.waitUntil(lambda: panel.status.text().startswith("train"), timeout=120_000)
    qtbot.wait(1500)  # training for a while, the event loop turning beside it
    t0 = time.perf_counter()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        panel.cancel()
    timer.stop()
    assert time.perf_counter() - t0 < 60
    assert panel.outcome is not None and panel.outcome.cancelled and not panel.busy
    bundle = load_bundle(panel.outcome.folder)
    assert bundle.meta["finetune"]["cancelled"] is True
    assert widget.bundle_path == panel.outcome.folder
    gaps = np.diff(ticks)
    assert len(ticks) > 10 and gaps.max() < 3.0  # the event loop kept turning while training ran
    viewer.dims.set_point(0, 1)  # the viewer still reacts
    assert panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert widget.run(blocking=True) is not None


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda truth: np.where(truth == 2, 2, 255).astype(np.uint8), "only nickel"),
        (lambda truth: np.where(truth == 1, 7, truth).astype(np.uint8), "outside {0, 1, 2, 255}"),
        (lambda truth: truth[:, :100].copy(), "do not match the image shape"),
        (lambda truth: np.full_like(truth, 255), "no labelled pixel"),
    ],
)
def test_bad_training_input_is_one_notification_not_a_crash(setup, notes, make, message):
    viewer, widget, panel, truth = setup
    layer = viewer.add_labels(make(truth), name="my labels")
    panel.labels_layer = layer
    assert panel.start(blocking=True) is None
    errors = [m for level, m in notes if level == "error"]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]
    assert not panel.busy and panel.start_button.isEnabled()
    assert not (panel.output_folder and __import__("pathlib").Path(panel.output_folder).exists())


@pytest.mark.parametrize("name, metadata", [
    ("phases", {"napari_paser_layer": "phases"}),  # a run's layer
    ("phases (edited)", {"napari_paser": {"bundle": "b", "edited": True}}),  # the user's fork of it (ResultLayers.fork_phases)
])
def test_a_corrected_phases_layer_trains_on_reviewed_slices_only(setup, notes, name, metadata):
    viewer, widget, panel, truth = setup
    opened = viewer.add_labels(truth.copy(), name="truth from a file", metadata={"napari_paser": {"kind": "phases"}})
    panel.labels_layer = opened
    assert not panel.reviewed_check.isChecked()  # labels from elsewhere: every painted pixel counts
    phases = viewer.add_labels(truth.copy(), name=name, metadata=metadata)
    panel.labels_layer = phases
    assert panel.reviewed_check.isChecked()  # PaSeR's labels: reviewed slices by default
    assert panel.start(blocking=True) is None
    assert "reviewed" in [m for level, m in notes if level == "error"][0]
    viewer.dims.set_point(0, 1)
    panel.mark_reviewed()
    assert panel.reviewed == {1} and panel.reviewed_label.text() == "1"
    request = panel._request()
    assert request.labels.slices == [1] and request.labels.shape == truth.shape
    labels = request.labels.read(0, len(truth))
    assert np.all(labels[0] == 255) and np.array_equal(labels[1], truth[1]) and np.all(labels[2:] == 255)


def test_without_a_paser_widget_the_panel_opens_one_with_the_new_bundle(make_napari_viewer, tiny_bundle_dir, tmp_path, notes):
    from napari_paser.napari_ui._finetune_panel import FinetunePanel
    from napari_paser.napari_ui._widget import PaserWidget

    viewer = make_napari_viewer()
    img, truth = _scan()
    viewer.add_image(img, name="ct")
    panel = FinetunePanel(viewer)
    viewer.window.add_dock_widget(panel, name="Adapt PaSeR to this scan")
    panel.set_start_bundle(tiny_bundle_dir)
    panel.output_folder = str(tmp_path)
    panel.labels_layer = viewer.add_labels(np.where(np.arange(truth.size).reshape(truth.shape) % 7 == 0, truth, 255).astype(np.uint8))
    panel.budget_s = 2
    outcome = panel.start(blocking=True)
    assert outcome is not None, notes
    assert outcome.result.bundle.meta["finetune"]["from"] == "tiny-test"
    widgets = [w for w in viewer.window.dock_widgets.values() if isinstance(w, PaserWidget)]
    assert len(widgets) == 1 and widgets[0].bundle_path == outcome.folder


def test_corrections_of_a_region_run_train_on_that_region_of_the_image(setup, qtbot, notes):
    viewer, widget, panel, truth = setup
    widget.roi_edit.setText("1:2, 0:112, 4:-4")  # the region's slice 0 is the image's plane 1
    assert widget.run(blocking=True) is not None
    phases = viewer.layers["phases"]
    assert phases.data.shape == (1, 112, 120) and phases.metadata["napari_paser"]["roi"] == [[1, 2], [0, 112], [4, 124]]
    phases.paint((0, 50, 50), int((phases.data[0, 50, 50] + 1) % 3))
    edited = viewer.layers["phases (edited)"]
    panel.labels_layer = edited
    assert panel.reviewed_check.isChecked()
    viewer.dims.set_point(0, 1)  # the plane on screen, counted in the image
    panel.mark_reviewed()
    request = panel._request()
    np.testing.assert_array_equal(np.asarray(request.image), viewer.layers["ct"].data[1:2, :, 4:124])
    assert request.labels.shape == (1, 112, 120) and request.labels.slices == [0]
    np.testing.assert_array_equal(request.labels.read(0, 1)[0], edited.data[0])


def test_a_pyramid_is_painted_and_adapted_to_at_full_resolution(setup, notes):
    """A multiscale image (an OME-Zarr pyramid opened with napari-ome-zarr, say)."""
    viewer, widget, panel, truth = setup
    img = viewer.layers["ct"].data
    viewer.layers.remove("ct")
    viewer.add_image([img, img[:, ::2, ::2]], multiscale=True, name="ct", scale=(2.0, 0.5, 0.5))
    panel.image_layer = viewer.layers["ct"]
    layer = panel.new_training_layer()
    assert layer.data.shape == SHAPE and tuple(layer.scale) == (2.0, 0.5, 0.5)
    _paint_strokes(layer, truth)
    viewer.dims.set_point(0, 1 * 2.0)
    assert panel._visible_slice() == 1
    request = panel._request()
    np.testing.assert_array_equal(np.asarray(request.image), img)
    np.testing.assert_array_equal(request.labels.read(0, SHAPE[0]), layer.data)
    assert not [m for level, m in notes if level == "error"], notes
