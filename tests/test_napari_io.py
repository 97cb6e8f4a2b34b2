"""napari reader, writer and sample data of the plugin (npe2 contributions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_paser import io
from napari_paser.errors import PaserInputError
from napari_paser.napari_ui import _export, _reader, _writer
from napari_paser.napari_ui._export import export_phases, export_steps
from napari_paser.napari_ui._layers import PENDING


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(5, 40, 50), (40, 50)])
def test_reader_reads_stacks_and_slices_with_voxel_size(tmp_path, dtype, shape):
    data = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
    path = io.write_tiff(tmp_path / "img.tif", data, voxel_size=(2.0, 0.5, 0.25))
    reader = _reader.napari_get_reader(str(path))
    assert reader is not None
    ((out, kwargs, kind),) = reader(str(path))
    assert kind == "image"
    np.testing.assert_array_equal(np.asarray(out), data)
    assert out.dtype == dtype
    assert kwargs["scale"] == ([2.0, 0.5, 0.25] if len(shape) == 3 else [0.5, 0.25])
    assert kwargs["axis_labels"] == (("plane", "row", "column") if len(shape) == 3 else ("row", "column"))


def test_reader_reads_ome_tiff_physical_size(tmp_path):
    data = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(
        path, data, ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.7, "PhysicalSizeY": 0.7, "PhysicalSizeZ": 1.5},
    )
    ((out, kwargs, kind),) = _reader.napari_get_reader(str(path))(str(path))
    np.testing.assert_array_equal(out, data)
    assert kwargs["scale"] == pytest.approx([1.5, 0.7, 0.7])


def test_reader_ignores_other_files_and_reports_unreadable_ones(tmp_path, monkeypatch):
    assert _reader.napari_get_reader(str(tmp_path / "x.png")) is None
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a TIFF")
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    with pytest.raises(PaserInputError, match="not a readable TIFF"):
        _reader.read_tiff(str(bad))
    assert errors and "broken.tif" in errors[0]


def test_big_files_open_lazily(tmp_path, monkeypatch):
    data = np.random.default_rng(1).integers(0, 60000, (6, 32, 32)).astype(np.uint16)
    path = io.write_tiff(tmp_path / "big.tif", data, voxel_size=(1.0, 0.5, 0.5))
    monkeypatch.setattr(_reader, "_lazy_threshold", lambda: 1)  # every file counts as big
    ((out, kwargs, _),) = _reader.read_tiff(str(path))
    assert not isinstance(out, np.ndarray) or isinstance(out, np.memmap)
    np.testing.assert_array_equal(np.asarray(out[3]), data[3])
    assert kwargs["scale"] == [1.0, 0.5, 0.5]


def _phases(shape=(4, 30, 40)):
    return np.random.default_rng(2).integers(0, 3, shape).astype(np.uint8)


def _run_steps(steps):
    """Every step an export yields, and what it returns at the end."""
    progress = []
    with pytest.raises(StopIteration) as end:
        while True:
            progress.append(next(steps))
    return progress, end.value.value


def test_writer_round_trips_labels_scale_and_provenance(tmp_path):
    labels = _phases()
    provenance = {"bundle": {"name": "tiny", "version": "0"}, "lam": 0.4, "route_fraction": {"f0": 1.0}, "gflops_total": 1.5}
    meta = {"scale": [2.0, 0.5, 0.5], "metadata": {"napari_paser": provenance}}
    written = _writer.write_labels(str(tmp_path / "phases.tif"), labels, meta)
    assert [p.split("/")[-1] for p in written] == ["phases.tif", "phases_report.json"]
    ((out, kwargs, kind),) = _reader.read_tiff(written[0])
    assert kind == "labels" and out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)
    assert kwargs["scale"] == [2.0, 0.5, 0.5]
    stored = io.read_metadata(written[0])
    assert stored["provenance"]["lam"] == 0.4 and stored["kind"] == "phases"
    report = json.loads((tmp_path / "phases_report.json").read_text())
    assert report["run"]["gflops_total"] == 1.5 and report["voxel_size_um"] == [2.0, 0.5, 0.5]

    # A pyramid (napari passes every level): its full-resolution level is the volume.
    pyramid = [labels, labels[:, ::2, ::2]]
    written = _writer.write_labels(str(tmp_path / "pyramid.tif"), pyramid, {**meta, "multiscale": True})
    np.testing.assert_array_equal(_reader.read_tiff(written[0])[0][0], labels)
    # File > Save Layers to a name ending in .zarr: an OME-Zarr label image.
    written = _writer.write_labels(str(tmp_path / "saved.zarr"), labels, meta)
    assert [p.split("/")[-1] for p in written] == ["saved.zarr", "saved_report.json"]
    ((out, kwargs, kind),) = _reader.read_volume(written[0])
    assert kind == "labels" and kwargs["scale"] == [2.0, 0.5, 0.5]
    np.testing.assert_array_equal(np.asarray(out), labels)


def test_writer_adds_masks_when_asked_and_never_replaces_sidecars_alone(tmp_path):
    labels = _phases()
    meta = {"scale": [1.0, 1.0, 1.0], "metadata": {"napari_paser": {"export_masks": True}}}
    (tmp_path / "p_pore.tif").write_bytes(b"keep me")
    assert _writer.write_labels(str(tmp_path / "p.tif"), labels, meta) == []
    assert (tmp_path / "p_pore.tif").read_bytes() == b"keep me"
    assert not (tmp_path / "p.tif").exists()
    (tmp_path / "p_pore.tif").unlink()
    written = _writer.write_labels(str(tmp_path / "p.tif"), labels, meta)
    assert len(written) == 5
    mask, _ = io.read_stack(tmp_path / "p_nickel.tif")
    np.testing.assert_array_equal(mask, np.where(labels == 2, 255, 0))


def test_export_refuses_existing_files_and_bad_labels(tmp_path):
    labels = _phases((20, 30))
    export_phases(tmp_path / "a.tif", labels)
    with pytest.raises(FileExistsError, match="a.tif"):
        export_phases(tmp_path / "a.tif", labels)
    with pytest.raises(PaserInputError, match="uint8"):
        export_phases(tmp_path / "b.tif", np.full((4, 4), 300, np.int32))
    pending = labels.copy()
    pending[:5] = PENDING
    export_phases(tmp_path / "c.tif", pending)
    assert json.loads((tmp_path / "c_report.json").read_text())["unsegmented_voxels"] == 5 * 30


def test_export_reads_and_writes_a_slab_at_a_time(tmp_path, monkeypatch):
    zarr = pytest.importorskip("zarr")
    labels = _phases((7, 30, 40))
    labels[5:] = PENDING
    store = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=labels.shape, chunks=(1, 30, 40), dtype="uint8")
    store[:] = labels
    monkeypatch.setattr(_export, "SLAB_BYTES", 3 * 30 * 40)  # 3 planes a step: 3 + 3 + 1
    progress, written = _run_steps(export_steps(tmp_path / "z.tif", store, scale=(2.0, 0.5, 0.5), masks=True))
    assert progress == [(3, 7), (6, 7), (7, 7)]
    assert [p.name for p in written] == ["z.tif", "z_pore.tif", "z_carbon-binder.tif", "z_nickel.tif", "z_report.json"]
    out, voxel = io.read_stack(tmp_path / "z.tif")
    np.testing.assert_array_equal(out, labels)
    assert voxel == (2.0, 0.5, 0.5) and io.read_metadata(tmp_path / "z.tif")["kind"] == "phases"
    mask, _ = io.read_stack(tmp_path / "z_carbon-binder.tif")
    np.testing.assert_array_equal(mask, np.where(labels == 1, 255, 0))
    assert json.loads((tmp_path / "z_report.json").read_text())["unsegmented_voxels"] == 2 * 30 * 40


def test_an_export_stopped_half_way_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(_export, "SLAB_BYTES", 1)  # one plane a step
    out = tmp_path / "out"
    out.mkdir()
    steps = export_steps(out / "p.tif", _phases(), masks=True)
    assert next(steps) == (1, 4)
    assert len(list(out.iterdir())) == 4  # the temporary files of the volume and its masks
    steps.close()  # what the widget does when the user cancels
    assert list(out.iterdir()) == []



def test_an_export_to_zarr_is_an_ome_zarr_pyramid_that_opens_again(tmp_path, monkeypatch):
    """For big stacks: the phases (and masks) as OME-Zarr label images, with coarser levels,
    written a slab at a time, atomically, and read back by the plugin's reader."""
    zarr = pytest.importorskip("zarr")
    from napari_paser import io_writers

    monkeypatch.setattr(io_writers, "PYRAMID_TOP", 16)
    monkeypatch.setattr(_export, "SLAB_BYTES", 3 * 30 * 40)
    labels = _phases((7, 30, 40))
    provenance = {"lam": 0.4, "roi": [[1, 8], [2, 32], [0, 40]]}
    progress, written = _run_steps(export_steps(tmp_path / "p.zarr", labels, scale=(2.0, 0.5, 0.5), provenance=provenance, masks=True))
    assert progress == [(3, 7), (6, 7), (7, 7)]
    assert [p.name for p in written] == ["p.zarr", "p_pore.zarr", "p_carbon-binder.zarr", "p_nickel.zarr", "p_report.json"]
    store = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    np.testing.assert_array_equal(store["0"][:], labels)
    assert store["1"].shape == (4, 15, 20) and "image-label" in store.attrs
    ((data, kwargs, kind), *maps) = _reader.napari_get_reader(str(tmp_path / "p.zarr"))(str(tmp_path / "p.zarr"))
    assert kind == "labels" and kwargs["multiscale"] and not maps
    np.testing.assert_array_equal(np.asarray(data[0]), labels)
    assert kwargs["scale"] == [2.0, 0.5, 0.5] and kwargs["translate"] == [2.0, 1.0, 0.0]  # over its region
    mask = zarr.open_group(str(tmp_path / "p_nickel.zarr"), mode="r")
    np.testing.assert_array_equal(mask["0"][:], np.where(labels == 2, 255, 0))
    assert "image-label" not in mask.attrs
    assert json.loads((tmp_path / "p_report.json").read_text())["files"][0] == "p.zarr"
    with pytest.raises(FileExistsError):  # never replaced without asking
        export_phases(tmp_path / "p.zarr", labels)
    export_phases(tmp_path / "p.zarr", labels[:2], overwrite=True)
    assert zarr.open_group(str(tmp_path / "p.zarr"), mode="r")["0"].shape == (2, 30, 40)
    # A cancelled export leaves nothing behind.
    out = tmp_path / "cancelled"
    out.mkdir()
    steps = export_steps(out / "c.zarr", labels)
    next(steps)
    steps.close()
    assert list(out.iterdir()) == []


def test_sample_data_gives_image_and_ground_truth():
    from napari_paser.napari_ui._sample_data import electrode_sample

    (image, ikw, ikind), (truth, tkw, tkind) = electrode_sample()
    assert ikind == "image" and tkind == "labels"
    assert image.shape == truth.shape and image.ndim == 3
    assert set(np.unique(truth)) <= {0, 1, 2}
    assert ikw.get("scale") == tkw.get("scale")
    assert ikw["axis_labels"] == tkw["axis_labels"] == ("plane", "row", "column")  # the slider says "plane", not "-3"


def test_sample_files_open_as_image_and_labels_through_the_reader():
    from napari_paser.napari_ui._sample_data import sample_dir

    folder = sample_dir()
    ((_, ikw, ikind),) = _reader.read_tiff(str(folder / "electrode_image.tif"))
    ((labels, lkw, lkind),) = _reader.read_tiff(str(folder / "electrode_labels.tif"))
    assert (ikind, lkind) == ("image", "labels")
    assert labels.dtype == np.uint8 and ikw["scale"] == lkw["scale"]


def test_labels_of_a_region_open_over_that_region_of_their_scan(tmp_path, tiny_bundle_dir):
    from napari_paser.cli.main import main

    scan = io.write_tiff(tmp_path / "scan.tif", np.random.default_rng(0).integers(0, 4000, (4, 130, 150)).astype(np.uint16),
                         voxel_size=(2.0, 0.5, 0.25))
    for out in ("box.tif", "box.zarr"):  # what segment --roi writes
        argv = ["segment", str(scan), "--roi", "1:3,6:124,10:-12", "-o", str(tmp_path / out), "--bundle", str(tiny_bundle_dir), "--quiet"]
        assert main(argv) == 0
        ((data, kwargs, kind),) = _reader.napari_get_reader(str(tmp_path / out))(str(tmp_path / out))
        assert kind == "labels" and tuple(data.shape) == (2, 118, 128)
        assert kwargs["translate"] == [2.0, 3.0, 2.5]  # the box's first voxel, in µm
    # An exported phase volume of a region run (the napari panel's Region) too.
    export_phases(tmp_path / "exported.tif", np.zeros((2, 64, 64), np.uint8), scale=(2.0, 0.5, 0.25),
                  provenance={"roi": [[1, 3], [4, 68], [8, 72]]})
    ((_, kwargs, kind),) = _reader.napari_get_reader(str(tmp_path / "exported.tif"))(str(tmp_path / "exported.tif"))
    assert kind == "labels" and kwargs["translate"] == [2.0, 2.0, 2.0]


def test_a_segment_zarr_output_opens_as_multiscale_phases(tmp_path, tiny_bundle_dir, monkeypatch):
    from napari_paser import io_writers
    from napari_paser.cli.main import main

    monkeypatch.setattr(io_writers, "PYRAMID_TOP", 64)
    scan = io.write_tiff(tmp_path / "scan.tif", np.random.default_rng(0).integers(0, 4000, (4, 130, 150)).astype(np.uint16),
                         voxel_size=(2.0, 0.5, 0.25))
    argv = ["segment", str(scan), "-o", str(tmp_path / "out.zarr"), "--bundle", str(tiny_bundle_dir), "--quiet"]
    assert main(argv) == 0
    ((data, kwargs, kind),) = _reader.napari_get_reader(str(tmp_path / "out.zarr"))(str(tmp_path / "out.zarr"))
    assert kind == "labels" and kwargs["multiscale"] and kwargs["scale"] == [2.0, 0.5, 0.25]
    assert [tuple(level.shape) for level in data] == [(4, 130, 150), (2, 65, 75), (1, 33, 38)]
    assert kwargs["colormap"].color_dict[0] is not None and kwargs["metadata"]["napari_paser"]["kind"] == "phases"
    np.testing.assert_array_equal(np.asarray(data[2]), np.asarray(data[0])[::4, ::4, ::4])


@pytest.mark.parametrize("out", ["run.tif", "run.zarr"])
def test_segments_entropy_and_routing_maps_open_over_the_scan_as_in_a_run(tmp_path, tiny_bundle_dir, out):
    """`segment --entropy --routing` maps open styled and placed as the panel's layers:
    each routing ring frames its patch of the scan, also for a run over a region."""
    from napari.layers import Image, Labels

    from napari_paser.cli.main import main
    from napari_paser.napari_ui._layers import ring_cells

    voxel, roi = (2.0, 0.5, 0.25), [[1, 3], [6, 124], [10, 138]]
    scan_data = np.random.default_rng(0).integers(0, 4000, (4, 130, 150)).astype(np.uint16)
    scan = io.write_tiff(tmp_path / "scan.tif", scan_data, voxel_size=voxel)
    argv = ["segment", str(scan), "-o", str(tmp_path / out), "--roi", "1:3,6:124,10:138", "--entropy", "--routing",
            "--bundle", str(tiny_bundle_dir), "--quiet", "--report", str(tmp_path / "r.json"), "--lam", "0.0"]
    assert main(argv) == 0
    if out.endswith(".zarr"):
        layers = _reader.napari_get_reader(str(tmp_path / out))(str(tmp_path / out))
    else:
        layers = [_reader.read_tiff(str(tmp_path / name))[0] for name in ("run.tif", "run_entropy.tif", "run_routing.tif")]
    assert [(kw["name"], kind) for _, kw, kind in layers] == [("run", "labels"), ("run_entropy", "image"), ("run_routing", "labels")]
    (phases_data, phases_kw, _), (ent_data, ent_kw, _), (ring_data, ring_kw, _) = layers
    phases, entropy, rings = Labels(phases_data, **phases_kw), Image(ent_data, **ent_kw), Labels(ring_data, **ring_kw)
    np.testing.assert_allclose(entropy.scale, voxel)
    np.testing.assert_allclose(entropy.translate, phases.translate)
    assert phases.axis_labels == entropy.axis_labels == rings.axis_labels == ("plane", "row", "column")
    np.testing.assert_allclose(phases.translate, [a * v for (a, _), v in zip(roi, voxel)])  # over the region
    assert entropy.colormap.name == "magma" and entropy.visible == out.endswith(".tif")  # hidden in a store, as in a run
    cy, cx = ring_cells((56, 64))
    routing = np.asarray(ring_data)[:, ::cy, ::cx]
    assert routing.shape == (2, 3, 2) and set(np.unique(routing)) <= {0, 1, 2}
    assert rings.colormap.map(np.array([2]))[0][:3].tolist() == pytest.approx([1.0, 0.0, 1.0])  # f2 magenta
    for gy, gx in [(0, 0), (2, 1)]:  # the ring of a patch frames exactly that patch
        cell_lo = rings.data_to_world((1, gy * cy - 0.5, gx * cx - 0.5))
        cell_hi = rings.data_to_world((1, (gy + 1) * cy - 0.5, (gx + 1) * cx - 0.5))
        np.testing.assert_allclose(cell_lo, phases.data_to_world((1, gy * 56 - 0.5, gx * 64 - 0.5)))
        np.testing.assert_allclose(cell_hi, phases.data_to_world((1, (gy + 1) * 56 - 0.5, (gx + 1) * 64 - 0.5)))
