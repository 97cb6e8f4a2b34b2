"""napari: a stack opened lazily from a folder is segmented through a Zarr store on disk,
plane by plane, and the λ slider still re-routes the visible slice."""

from __future__ import annotations

import numpy as np
import pytest

from napari_paser import io

pytestmark = pytest.mark.gui

SHAPE = (6, 120, 150)
VOXEL = (2.0, 0.5, 0.5)


def _volume(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(30000, 4000, shape)
    img[..., 30:70, 40:100] -= 15000
    return np.clip(img, 0, 65535).astype(np.uint16)


@pytest.fixture
def routing_bundle_dir(tiny_bundle, tmp_path):
    """The tiny bundle with a policy biased so that routing changes with λ (as in test_napari_widget)."""
    import torch

    from napari_paser.engine.bundle import save_bundle

    with torch.no_grad():
        last = tiny_bundle.policy.head[-1]
        last.weight.mul_(3.0)
        last.bias.copy_(torch.tensor([0.05, 0.1]))
    return save_bundle(tiny_bundle, tmp_path / "routing-bundle")


def test_folder_stack_streams_through_zarr_and_reroutes(make_napari_viewer, routing_bundle_dir, tmp_path, qtbot, monkeypatch):
    import zarr

    from napari_paser.engine.windowed import WindowedSegmenter
    from napari_paser.io_sources import TiffFolderVolume
    from napari_paser.napari_ui import _jobs
    from napari_paser.napari_ui._widget import PaserWidget

    data = _volume()
    (tmp_path / "slices").mkdir()
    for z, plane in enumerate(data):
        io.write_tiff(tmp_path / "slices" / f"ct_{z}.tif", plane, voxel_size=VOXEL)
    reads: list[int] = []
    real_read = TiffFolderVolume._read
    monkeypatch.setattr(TiffFolderVolume, "_read", lambda self, z0, z1: reads.append(z1 - z0) or real_read(self, z0, z1))
    monkeypatch.setattr(_jobs, "STREAM_BYTES", 1)  # treat this small stack as one too big for memory

    viewer = make_napari_viewer()
    [image] = viewer.open(str(tmp_path / "slices"), plugin="napari-paser")
    assert not isinstance(image.data, np.ndarray) and image.data.shape == SHAPE  # lazy (dask)
    np.testing.assert_allclose(image.scale, VOXEL)
    widget = PaserWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.add_bundle_folder(routing_bundle_dir)
    widget.mc_spin.setValue(2)
    widget.set_store_folder(tmp_path / "stores")
    assert widget.store_button.text().endswith("stores/")
    widget.image_layer = image
    widget.lam = 0.9
    reads.clear()
    outcome = widget.run(blocking=True)
    assert outcome is not None and outcome.stats["slices_done"] == SHAPE[0]

    seg = widget._active.segmenter
    assert isinstance(seg, WindowedSegmenter) and len(seg._states) <= seg.window
    assert max(reads) == 1  # every plane is read on its own: the stack is never loaded whole
    phases, entropy, routing = (viewer.layers[n] for n in ("phases", "entropy", "routing"))
    for layer in (phases, entropy, routing):
        assert isinstance(layer.data, zarr.Array) and str(tmp_path / "stores") in str(layer.data.store)
    # The labels on disk are the in-memory engine's labels for the same stack.
    from napari_paser.engine import load_bundle
    from napari_paser.engine.pipeline import segment

    expected = segment(data, load_bundle(routing_bundle_dir), lam=0.9, mc_passes=2)
    np.testing.assert_array_equal(phases.data[:], expected.labels)
    assert widget.stats.stats["gflops_total"] == pytest.approx(expected.gflops_total)

    viewer.dims.set_point(0, 3 * VOXEL[0])  # look at slice 3, then drag λ
    routing_before = routing.data[3, ::4, ::4].copy()
    widget.lam = 0.0
    qtbot.waitUntil(lambda: widget.stats.stats.get("lam") == pytest.approx(0.0), timeout=60_000)
    qtbot.waitUntil(lambda: not widget.busy and not widget._debounce.isActive(), timeout=60_000)
    np.testing.assert_array_equal(phases.data[3], segment(data, load_bundle(routing_bundle_dir), lam=0.0, mc_passes=2).labels[3])
    np.testing.assert_array_equal(routing.data[3, :: routing.data.shape[1] // seg.grid[0], :: routing.data.shape[2] // seg.grid[1]],
                                  seg.routing(0.0, 3))
    assert not np.array_equal(routing.data[3, ::4, ::4], routing_before)
    # Export reads the store a slab at a time (never the whole volume) into a TIFF that reopens.
    from napari_paser.napari_ui import _export

    monkeypatch.setattr(_export, "SLAB_BYTES", phases.data.shape[1] * phases.data.shape[2])  # one plane a step
    slabs = []
    real_getitem = type(phases.data).__getitem__
    monkeypatch.setattr(type(phases.data), "__getitem__", lambda self, key: slabs.append(key) or real_getitem(self, key))
    written = widget.export(tmp_path / "big_phases.tif", blocking=True)
    monkeypatch.undo()
    assert [p.name for p in written] == ["big_phases.tif", "big_phases_report.json"]
    assert all(isinstance(k, slice) and k.stop - k.start == 1 for k in slabs) and len(slabs) == SHAPE[0]
    out, voxel = io.read_stack(written[0])
    np.testing.assert_array_equal(out, phases.data[:])
    np.testing.assert_allclose(voxel, VOXEL)


def test_painting_a_phase_store_keeps_the_edit_and_results_go_to_a_new_array(make_napari_viewer, routing_bundle_dir, tmp_path, qtbot, monkeypatch):
    import zarr

    from napari_paser.engine import load_bundle
    from napari_paser.engine.pipeline import segment
    from napari_paser.napari_ui import _jobs
    from napari_paser.napari_ui._widget import PaserWidget

    monkeypatch.setattr(_jobs, "STREAM_BYTES", 1)  # segmented through a Zarr store, as a big stack
    data = _volume()
    viewer = make_napari_viewer()
    viewer.add_image(data, name="ct", scale=VOXEL)
    widget = PaserWidget(viewer)
    assert widget.add_bundle_folder(routing_bundle_dir)
    widget.mc_spin.setValue(2)
    widget.set_store_folder(tmp_path / "stores")
    widget.lam = 0.9
    widget.run(blocking=True)
    phases = viewer.layers["phases"]
    assert isinstance(phases.data, zarr.Array)
    value = int((phases.data[2, 50, 50] + 1) % 3)
    rerouted = []
    real_reroute = widget.reroute
    widget.reroute = lambda *a, **k: rerouted.append(k.get("slices")) or real_reroute(*a, **k)
    phases.paint((2, 50, 50), value)
    assert rerouted == [[2]]  # only the painted plane is segmented again, not the whole stack
    qtbot.waitUntil(lambda: not widget.busy and not widget._debounce.isActive(), timeout=60_000)
    edited, results = viewer.layers["phases (edited)"], viewer.layers["phases"]
    assert edited is phases and edited.data[2, 50, 50] == value
    assert isinstance(results.data, zarr.Array) and results.data.path == "phases-1" and edited.data.path == "phases"
    np.testing.assert_array_equal(results.data[:], segment(data, load_bundle(routing_bundle_dir), lam=0.9, mc_passes=2).labels)


def test_an_ome_zarr_pyramid_opens_multiscale_and_is_segmented_at_full_resolution(make_napari_viewer, routing_bundle_dir, tmp_path, monkeypatch):
    """napari's 3-D view of a pyramid reads its coarsest level only; PaSeR segments level 0."""
    from conftest import write_ome_zarr
    from napari_paser.engine import load_bundle
    from napari_paser.engine.pipeline import segment
    from napari_paser.io_sources import ZarrVolume
    from napari_paser.napari_ui import _jobs
    from napari_paser.napari_ui._widget import PaserWidget

    data = _volume()
    write_ome_zarr(tmp_path / "scan.zarr", data, scale=VOXEL, levels=3)
    reads: list[str] = []
    real_read = ZarrVolume._read
    monkeypatch.setattr(ZarrVolume, "_read", lambda self, z0, z1: reads.append(self.component) or real_read(self, z0, z1))
    viewer = make_napari_viewer()
    [image] = viewer.open(str(tmp_path / "scan.zarr"), plugin="napari-paser")
    assert image.multiscale and [tuple(s) for s in image.level_shapes] == [SHAPE, (6, 60, 75), (6, 30, 38)]
    np.testing.assert_allclose(image.scale, VOXEL)
    reads.clear()
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    assert reads and set(reads) == {"2"}  # the 3-D view: the coarsest level, not the full volume

    monkeypatch.setattr(_jobs, "STREAM_BYTES", 1)  # as a stack too big for memory: through a Zarr store
    widget = PaserWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.add_bundle_folder(routing_bundle_dir)
    widget.mc_spin.setValue(2)
    widget.set_store_folder(tmp_path / "stores")
    widget.image_layer = image
    widget.lam = 0.9
    assert widget.run(blocking=True) is not None
    expected = segment(data, load_bundle(routing_bundle_dir), lam=0.9, mc_passes=2)
    np.testing.assert_array_equal(viewer.layers["phases"].data[:], expected.labels)
    np.testing.assert_allclose(viewer.layers["phases"].scale, VOXEL)
    # A slice of a stack streamed through a Zarr store checks against f2 as one in memory.
    viewer.dims.set_point(0, 2 * VOXEL[0])
    check = widget.check_against_f2(blocking=True)
    from napari_paser.engine.pipeline import PaserSegmenter

    seg = PaserSegmenter(load_bundle(routing_bundle_dir), mc_passes=2)
    seg.set_volume(data)
    alike = seg.compose(2, lam=0.9) == seg.compose(2, routing=np.full(seg.grid, 2, np.uint8))
    assert check is not None and check.z == 2 and check.agreement == pytest.approx(alike.mean())
