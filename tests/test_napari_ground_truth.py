"""Mean IoU against a ground-truth layer: per slice, in the background, lazily read, also for big stacks."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SHAPE = (4, 120, 150)


def _volume(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(30000, 4000, SHAPE)
    img[..., 30:70, 40:100] -= 15000
    return np.clip(img, 0, 65535).astype(np.uint16)


def _truth(seed=1):
    return np.random.default_rng(seed).integers(0, 3, SHAPE).astype(np.uint8)


class CountingArray:
    """A lazily read labels array that records which planes are read."""

    def __init__(self, data):
        self.data, self.reads = data, []
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole ground truth was read")


def expected_iou(phases, truth, slices):
    from napari_paser.engine import metrics

    cm = sum(metrics.confusion_matrix(phases[z], truth[z]) for z in slices)
    return metrics.mean_iou(cm)


@pytest.fixture
def widget(make_napari_viewer, tiny_bundle_dir):
    from napari_paser.napari_ui._widget import PaserWidget

    viewer = make_napari_viewer()
    viewer.add_image(_volume(), name="ct")
    w = PaserWidget(viewer)
    w.blocking = True
    assert w.add_bundle_folder(tiny_bundle_dir)
    w.mc_spin.setValue(1)
    w.image_layer = viewer.layers["ct"]
    return w


def test_a_ground_truth_chosen_after_the_run_is_compared_slice_by_slice(widget):
    widget.run()
    assert "mean_iou" not in widget.stats.stats
    truth = _truth()
    layer = widget.viewer.add_labels(truth, name="truth")
    widget._refresh_layer_choices()
    widget.ground_truth_layer = layer  # starts the comparison
    phases = widget.viewer.layers["phases"].data
    assert widget.stats.stats["mean_iou"] == pytest.approx(expected_iou(phases, truth, range(SHAPE[0])))
    assert widget.stats.stats["iou_slices"] == SHAPE[0]
    widget.ground_truth_layer = None
    assert "mean_iou" not in widget.stats.stats


def test_a_lazy_ground_truth_is_read_a_slice_at_a_time_and_bad_slices_are_left_out(widget, monkeypatch):
    from napari_paser.napari_ui import _jobs

    monkeypatch.setattr(_jobs, "STREAM_BYTES", 1)  # segmented through a Zarr store, as a big stack
    truth = _truth()
    truth[2, 0, 0] = 7  # not a phase: slice 2 cannot be compared
    lazy = CountingArray(truth)
    layer = widget.viewer.add_labels(truth, name="truth")
    monkeypatch.setattr(type(widget), "_ground_truth", lambda self, shape, warn=True, box=None: lazy)
    widget.ground_truth_layer = layer
    outcome = widget.run()
    assert widget._layers.store is not None  # the big-stack path
    assert all(isinstance(k, (int, np.integer)) for k in lazy.reads) and sorted(lazy.reads) == list(range(SHAPE[0]))
    phases = widget.viewer.layers["phases"].data
    assert outcome.stats["iou_slices"] == 3
    assert outcome.stats["mean_iou"] == pytest.approx(expected_iou(phases, truth, [0, 1, 3]))
    assert "over 3 of 4 slices" in widget.stats.summary.text()


def test_a_ground_truth_chosen_during_a_run_is_compared_when_it_ends(widget, qtbot):
    truth = _truth()
    layer = widget.viewer.add_labels(truth, name="truth")
    widget.blocking = False
    widget.run()
    assert widget.busy
    widget.ground_truth_layer = layer  # the run compares nothing: it started without a truth
    qtbot.waitUntil(lambda: not widget.busy and "mean_iou" in widget.stats.stats, timeout=60_000)
    phases = widget.viewer.layers["phases"].data
    assert widget.stats.stats["mean_iou"] == pytest.approx(expected_iou(phases, truth, range(SHAPE[0])))


def test_the_iou_follows_the_lambda_slider_including_the_slice_on_screen(make_napari_viewer, qtbot):
    """The visible slice is re-routed on the GUI thread at once; it is compared too."""
    from pathlib import Path

    from napari_paser import io
    from napari_paser.napari_ui._widget import PaserWidget

    sample = Path(__file__).parents[1] / "sample_data"
    image, _ = io.read_stack(sample / "electrode_image.tif")
    truth, _ = io.read_stack(sample / "electrode_labels.tif")
    viewer = make_napari_viewer()
    viewer.add_image(image[:3], name="ct")
    widget = PaserWidget(viewer)  # the bundled default bundle: its models' labels change with λ
    widget.blocking = True
    widget.image_layer = viewer.layers["ct"]
    widget.ground_truth_layer = viewer.add_labels(truth[:3], name="truth")
    widget.lam = 0.0
    widget.run()
    phases = viewer.layers["phases"].data
    before = np.array(phases)
    widget.blocking = False
    widget.lam = 1.0  # f0 everywhere, cached: the visible slice on this thread, the others in the job
    qtbot.waitUntil(lambda: not widget.busy and not widget._debounce.isActive()
                    and widget.stats.stats.get("lam") == pytest.approx(1.0), timeout=60_000)
    assert widget.reroute_ms, "the visible slice was not re-routed on the GUI thread"
    assert not np.array_equal(phases[widget._visible_slice()], before[widget._visible_slice()])
    assert widget.stats.stats["mean_iou"] == pytest.approx(expected_iou(phases, truth[:3], range(3)))
