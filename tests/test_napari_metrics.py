"""The Metrics dock widget in a real napari viewer (pytest-qt under Xvfb)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import channels

pytestmark = pytest.mark.gui
pytest.importorskip("taufactor")

SCALE = (0.5, 0.25, 0.25)


@pytest.fixture
def notes(monkeypatch):
    """Notifications raised by the panel, as (level, message)."""
    from napari_paser.napari_ui import _metrics_panel

    got: list[tuple[str, str]] = []
    for level in ("error", "info"):
        monkeypatch.setattr(_metrics_panel, f"show_{level}", lambda m, level=level: got.append((level, str(m))))
    return got


@pytest.fixture
def viewer_panel(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_labels(channels(), name="phases", scale=SCALE)
    _, panel = viewer.window.add_plugin_dock_widget("napari-paser", "Microstructure metrics")
    return viewer, panel


def test_panel_shows_known_answers_profile_and_exports(viewer_panel, tmp_path, notes):
    viewer, panel = viewer_panel
    assert panel.labels_combo.currentText() == "phases"
    outcome = panel.compute(blocking=True)
    assert outcome is not None, notes
    v = outcome.metrics.values
    assert v["volume_fraction.pore"] == np.count_nonzero(channels() == 0) / channels().size
    assert abs(v["tortuosity_factor.pore"] - 1) <= 0.02
    assert outcome.metrics.voxel_size == SCALE  # from the layer's scale
    texts = [panel.table.item(i, 0).text() for i in range(panel.table.rowCount())]
    assert "tortuosity_factor.pore" in texts and "specific_surface_area.nickel" in texts
    line = panel.figure.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), outcome.metrics.porosity_profile)
    assert panel.figure.axes[0].get_xlabel() == "position along the plane axis (µm)"
    assert panel.export_button.isEnabled()

    base = tmp_path / "phases_metrics"
    written = panel.export(base)
    assert [p.name for p in written] == ["phases_metrics.json", "phases_metrics.csv"]
    assert json.loads(written[0].read_text())["volume_fraction.pore"] == v["volume_fraction.pore"]
    before = written[0].read_text()
    assert panel.export(base) is None  # never replaced silently
    assert written[0].read_text() == before and any(level == "error" and "not replaced" in m for level, m in notes)
    assert panel.export(base, overwrite=True) is not None


def test_a_phases_layer_in_a_zarr_store_is_read_a_slab_at_a_time(make_napari_viewer, tmp_path, monkeypatch, notes):
    """The phases layer of a stack segmented through a Zarr store: nothing loads it whole."""
    zarr = pytest.importorskip("zarr")
    import napari_paser.engine.microstructure as ms
    from napari_paser.engine.microstructure import compute_metrics

    lab = channels()
    store = zarr.open_array(str(tmp_path / "phases.zarr"), mode="w", shape=lab.shape, chunks=(1, *lab.shape[1:]), dtype="uint8")
    store[:] = lab
    viewer = make_napari_viewer()
    viewer.add_labels(store, name="phases", scale=SCALE)
    _, panel = viewer.window.add_plugin_dock_widget("napari-paser", "Microstructure metrics")
    panel.tau_check.setChecked(False)
    monkeypatch.setattr(ms, "SLAB_VOXELS", 2 * lab.shape[1] * lab.shape[2])  # 2 planes a slab
    reads = []
    real = type(store).__getitem__
    monkeypatch.setattr(type(store), "__getitem__", lambda self, key: reads.append(key) or real(self, key))
    outcome = panel.compute(blocking=True)
    assert outcome is not None, notes
    assert reads and all(isinstance(k, slice) and k.stop - k.start <= 3 for k in reads)  # slabs (meshing shares a plane)
    expected = compute_metrics(lab, 0, voxel_size=SCALE, tortuosity=False)  # the same slabs, in memory
    monkeypatch.undo()
    assert outcome.metrics.values == expected.values


def test_a_stack_too_big_for_one_solve_is_solved_in_columns_read_from_the_store(make_napari_viewer, tmp_path, monkeypatch, notes):
    """τ of a Zarr-backed phases layer whose solve would not fit: columns, read in slabs."""
    zarr = pytest.importorskip("zarr")
    import napari_paser.engine.microstructure as ms
    import napari_paser.engine.tortuosity_columns as columns
    from napari_paser.engine.tortuosity_columns import solve_bytes

    lab = channels(shape=(12, 70, 72))
    store = zarr.open_array(str(tmp_path / "phases.zarr"), mode="w", shape=lab.shape, chunks=(1, *lab.shape[1:]), dtype="uint8")
    store[:] = lab
    viewer = make_napari_viewer()
    viewer.add_labels(store, name="phases", scale=SCALE)
    _, panel = viewer.window.add_plugin_dock_widget("napari-paser", "Microstructure metrics")
    monkeypatch.setattr(ms, "memory_budget", lambda device=None: solve_bytes(12 * 40 * 40))
    monkeypatch.setattr(ms, "SLAB_VOXELS", 2 * 70 * 72)  # 2 planes a slab
    monkeypatch.setattr(columns, "_READ_VOXELS", 2 * 70 * 72)
    reads = []
    real = type(store).__getitem__
    monkeypatch.setattr(type(store), "__getitem__", lambda self, key: reads.append(key) or real(self, key))
    outcome = panel.compute(blocking=True)
    assert outcome is not None, notes
    res = outcome.metrics.tortuosity["pore"]
    assert res.column_width == 40 and len(res.column_taus) == 4
    assert reads and all(isinstance(k, slice) and k.stop - k.start <= 3 for k in reads)  # slabs, never the whole store
    assert "τ (pore) solved in 4 columns up to 40 voxels across" in panel.status.text()


def test_the_column_width_is_the_users_choice(make_napari_viewer, notes):
    from napari_paser.engine.microstructure import compute_metrics

    lab = channels(shape=(12, 70, 72))
    viewer = make_napari_viewer()
    viewer.add_labels(lab, name="phases", scale=SCALE)
    _, panel = viewer.window.add_plugin_dock_widget("napari-paser", "Microstructure metrics")
    assert panel.tau_width_spin.text() == "auto" and panel.request().tortuosity_width is None
    panel.tau_width_spin.setValue(16)
    assert panel.compute(blocking=True) is None
    assert notes[-1][0] == "error" and "at least 32 voxels" in notes[-1][1]
    panel.tau_width_spin.setValue(36)
    outcome = panel.compute(blocking=True)
    assert outcome is not None, notes
    res = outcome.metrics.tortuosity["pore"]
    assert res.column_width == 36 and len(res.column_taus) == 4
    expected = compute_metrics(lab, 0, voxel_size=SCALE, tortuosity_width=36)
    assert outcome.metrics.values == expected.values
    assert "4 columns up to 36 voxels across" in panel.status.text()
    panel.tau_check.setChecked(False)
    assert not panel.tau_width_spin.isEnabled()


BAD = [
    (np.where(channels() == 1, 5, channels()).astype(np.uint8), 0, "outside {0, 1, 2}"),
    (np.where(channels() == 0, 2, channels()).astype(np.uint8), 0, "pore absent"),
    (np.where(channels() == 1, 255, channels()).astype(np.uint8), 0, "not segmented yet"),
    (channels()[0], 2, "axis 2 is out of range"),
]


def test_bad_input_is_one_notification(make_napari_viewer, notes):
    from napari_paser.napari_ui._metrics_panel import MetricsPanel

    viewer = make_napari_viewer()  # one viewer for every case: a viewer costs about a second
    panel = MetricsPanel(viewer)
    for data, axis, message in BAD:
        viewer.layers.clear()
        viewer.add_labels(data, name="phases")
        panel.labels_combo.setCurrentText("phases")
        panel.axis_spin.setValue(axis)
        notes.clear()
        assert panel.compute(blocking=True) is None
        assert [level for level, _ in notes] == ["error"] and message in notes[0][1], (message, notes)
        assert not panel.busy and panel.run_button.isEnabled() and panel.outcome is None


def test_cancel_stops_a_long_tortuosity_solve(make_napari_viewer, qtbot, notes):
    from scipy import ndimage as ndi

    from napari_paser.napari_ui._metrics_panel import MetricsPanel

    field = ndi.gaussian_filter(np.random.default_rng(1).standard_normal((160, 32, 32)), 2.0)
    lo, hi = np.quantile(field, [0.45, 0.6])
    viewer = make_napari_viewer()
    viewer.add_labels(np.where(field < lo, 0, np.where(field < hi, 1, 2)).astype(np.uint8), name="phases")
    panel = MetricsPanel(viewer)
    panel.compute()
    assert panel.busy and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: "tortuosity" in panel.status.text(), timeout=30_000)
    panel.cancel()
    qtbot.waitUntil(lambda: not panel.busy, timeout=30_000)
    assert panel.outcome is None and panel.status.text() == "Cancelled."
    assert ("info", "Metrics cancelled") in notes and panel.run_button.isEnabled()


def test_band_from_the_image_layer(make_napari_viewer, tiny_bundle_dir, notes):
    from napari_paser.napari_ui._metrics_panel import MetricsPanel

    rng = np.random.default_rng(0)
    viewer = make_napari_viewer()
    viewer_scan, viewer_labels = rng.integers(0, 4000, (2, 56, 64)).astype(np.uint16), rng.integers(0, 3, (2, 56, 64)).astype(np.uint8)
    viewer.add_image(viewer_scan, name="scan")
    layer = viewer.add_labels(viewer_labels, name="phases")
    layer.metadata["napari_paser"] = {"bundle": {"name": "tiny-test", "path": str(tiny_bundle_dir)}}
    panel = MetricsPanel(viewer)
    panel.image_combo.setCurrentText("scan")
    panel.lams_edit.setText("0, 1")
    panel.mc_spin.setValue(0)  # MC samples: see test_cli_metrics
    panel.tau_check.setChecked(False)
    panel.axis_spin.setValue(2)
    outcome = panel.compute(blocking=True)
    assert outcome is not None, notes
    assert [b.name for b in outcome.band] == ["paser λ=0", "paser λ=1", "f2 everywhere"]
    lo, hi = outcome.ranges["volume_fraction.pore"]
    assert lo <= outcome.metrics.values["volume_fraction.pore"] <= hi and lo < hi
    ranges = [panel.table.item(i, 2).text() for i in range(panel.table.rowCount())]
    assert all(r.startswith("[") for r in ranges)
    assert len(panel.figure.axes[0].collections) == 1  # the band around the profile
    assert panel.figure.axes[0].get_xlabel() == "position along the column axis (voxels)"
    # The phases of a run over a region of a bigger scan: the band segments that region of it.
    viewer.layers["scan"].data = np.pad(viewer.layers["scan"].data, ((1, 0), (3, 5), (0, 7)))
    layer.metadata["napari_paser"]["roi"] = [[1, 3], [3, 59], [0, 64]]
    again = panel.compute(blocking=True)
    assert again is not None, notes
    assert again.ranges == outcome.ranges

    # Pyramids (an OME-Zarr opened with napari-ome-zarr, say): their full-resolution levels.
    viewer.layers.clear()
    scan, labels = viewer_scan, viewer_labels
    viewer.add_image([scan, scan[:, ::2, ::2]], multiscale=True, name="scan")
    pyramid = viewer.add_labels([labels, labels[:, ::2, ::2]], multiscale=True, name="phases")
    pyramid.metadata["napari_paser"] = {"bundle": {"name": "tiny-test", "path": str(tiny_bundle_dir)}}
    panel.labels_combo.setCurrentText("phases")
    panel.image_combo.setCurrentText("scan")
    from_pyramids = panel.compute(blocking=True)
    assert from_pyramids is not None, notes
    assert from_pyramids.metrics.values == outcome.metrics.values and from_pyramids.ranges == outcome.ranges


def test_the_band_of_phases_made_with_blended_borders_is_blended_too(make_napari_viewer, shipped, notes):
    """The panel segments the band as the layer was made: its member at the layer's λ is
    the layer itself, blended or not."""
    from napari_paser.engine.pipeline import segment
    from napari_paser.napari_ui._metrics_panel import MetricsPanel

    bundle, path, stack = shipped
    scan = stack[:2]
    viewer = make_napari_viewer()
    viewer.add_image(scan, name="scan")
    panel = MetricsPanel(viewer)
    fractions = {}
    for blend in (True, False):
        made = segment(scan, bundle, blend_borders=blend)
        layer = viewer.add_labels(np.asarray(made.labels), name=f"phases {blend}")
        layer.metadata["napari_paser"] = {"bundle": {"name": bundle.name, "path": str(path)}, "report": made.report()}
        panel.labels_combo.setCurrentText(layer.name)
        panel.image_combo.setCurrentText("scan")
        panel.lams_edit.setText("default")
        panel.mc_spin.setValue(0)
        panel.tau_check.setChecked(False)
        assert panel.request().band_blend_borders == blend
        outcome = panel.compute(blocking=True)
        assert outcome is not None, notes
        assert outcome.band[0].name.endswith("(default)")
        fractions[blend] = outcome.metrics.values["volume_fraction.pore"]
        assert outcome.band[0].metrics.values["volume_fraction.pore"] == fractions[blend]
    assert fractions[True] != fractions[False]


def test_default_export_is_beside_the_phase_volume():
    from pathlib import Path

    from napari_paser.napari_ui._metrics_jobs import default_export_base, export_targets

    assert default_export_base("/data/scan_phases.tif", "phases") == Path("/data/scan_phases_metrics")
    assert default_export_base(None, "phases", "/data/scan.tif") == Path("/data/scan_phases_metrics")
    assert default_export_base(None, "phases") == Path("phases_metrics")
    assert export_targets("/data/x.json") == {"json": Path("/data/x.json"), "csv": Path("/data/x.csv")}


def test_the_band_in_bf16_where_it_is_native_and_one_notification_elsewhere(make_napari_viewer, tiny_bundle_dir, notes, monkeypatch):
    from napari_paser.engine import pipeline, precision
    from napari_paser.napari_ui._metrics_panel import MetricsPanel

    rng = np.random.default_rng(0)
    viewer = make_napari_viewer()
    viewer.add_image(rng.integers(0, 4000, (2, 56, 64)).astype(np.uint16), name="scan")
    layer = viewer.add_labels(rng.integers(0, 3, (2, 56, 64)).astype(np.uint8), name="phases")
    layer.metadata["napari_paser"] = {"bundle": {"name": "tiny-test", "path": str(tiny_bundle_dir)}}
    panel = MetricsPanel(viewer)
    panel.image_combo.setCurrentText("scan")
    panel.lams_edit.setText("0")
    panel.mc_spin.setValue(0)
    panel.tau_check.setChecked(False)
    panel.bf16_check.setChecked(True)
    if precision.bf16_is_fast("cpu"):
        made, real = [], pipeline.PaserSegmenter
        with monkeypatch.context() as m:
            m.setattr(pipeline, "PaserSegmenter", lambda *a, **kw: made.append((kw["precision"], kw["device"])) or real(*a, **kw))
            assert panel.compute(blocking=True) is not None, notes
        assert made == [("bf16", "cpu")]  # the device the PaSeR widget would use: no GPU here
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device_type="cpu": device_type != "cpu")
    notes.clear()
    assert panel.compute(blocking=True) is None
    assert [level for level, _ in notes] == ["error"] and "native bf16" in notes[0][1], notes


def test_the_axis_box_names_the_axis_as_the_chosen_layer_does(viewer_panel):
    viewer, panel = viewer_panel
    assert panel.axis_spin.text() == "0 plane"
    panel.axis_spin.setValue(2)
    assert panel.axis_spin.text() == "2 column" and panel.axis_spin.value() == 2
    viewer.add_labels(channels(), name="from another reader", axis_labels=("z", "y", "x"))
    panel.labels_combo.setCurrentText("from another reader")
    assert panel.axis_spin.text() == "2 x" and panel.axis_spin.value() == 2  # renamed, not moved
    panel.axis_spin.lineEdit().selectAll()
    panel.axis_spin.lineEdit().insert("1")  # typed as in any spin box
    panel.axis_spin.interpretText()
    assert panel.axis_spin.value() == 1 and panel.axis_spin.text() == "1 y"
