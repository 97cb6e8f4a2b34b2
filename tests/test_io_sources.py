"""Lazy inputs (TIFF, folders, globs, HDF5, Zarr / OME-Zarr) and the slab writers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from conftest import write_ome_zarr
from napari_paser import io
from napari_paser.errors import PaserInputError
from napari_paser.io_sources import (
    ArrayVolume,
    CroppedVolume,
    HDF5Volume,
    TiffFolderVolume,
    TiffVolume,
    ZarrVolume,
    open_volume,
    parse_roi,
)
from napari_paser.io_writers import OmeZarrOutput, TiffSliceWriter, ZarrLabelWriter

VOXEL = (2.0, 0.5, 0.25)


def stack(shape=(5, 12, 14), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


def write_folder(folder, data, names=None):
    folder.mkdir()
    names = names or [f"slice_{z}.tif" for z in range(len(data))]  # unpadded: 10 sorts after 9
    for name, plane in zip(names, data):
        io.write_tiff(folder / name, plane, voxel_size=VOXEL)
    return folder


def test_every_container_reads_the_same_planes(tmp_path):
    import h5py
    import zarr

    data = stack((11, 12, 14))
    tif = TiffVolume(io.write_tiff(tmp_path / "a.tif", data, voxel_size=VOXEL))
    folder = TiffFolderVolume(write_folder(tmp_path / "slices", data))
    globbed = open_volume(str(tmp_path / "slices" / "slice_*.tif"))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        ds = f.create_dataset("exchange/data", data=data, chunks=(1, 12, 14))
        ds.attrs["element_size_um"] = VOXEL
    h5 = open_volume(f"{tmp_path / 'a.h5'}:/exchange/data")
    h5_default = open_volume(tmp_path / "a.h5")  # /exchange/data is found
    ome = open_volume(write_ome_zarr(tmp_path / "a.zarr", data))
    zarr.save_array(str(tmp_path / "plain.zarr"), data)
    plain = open_volume(tmp_path / "plain.zarr")
    assert isinstance(h5, HDF5Volume) and isinstance(ome, ZarrVolume) and isinstance(globbed, TiffFolderVolume)
    for vol in (tif, folder, globbed, h5, h5_default, ome, plain):
        with vol:
            assert vol.shape == data.shape and vol.dtype == np.uint16, vol
            np.testing.assert_array_equal(vol.read(3, 11), data[3:11])
            np.testing.assert_array_equal(vol[10], data[10])
            np.testing.assert_array_equal(vol[::4, 2:5], data[::4, 2:5])
            with pickle.loads(pickle.dumps(vol)) as copy:  # what dask workers get
                np.testing.assert_array_equal(copy.read(9, 11), data[9:11])
            if vol is not plain:
                assert vol.voxel_size == pytest.approx(VOXEL), vol
    assert plain.voxel_size is None


def test_folder_sorts_numbers_by_value_and_checks_slices(tmp_path):
    data = stack((3, 12, 14))
    vol = open_volume(write_folder(tmp_path / "s", data, names=["im10.tif", "im9.tif", "im100.tif"]))
    np.testing.assert_array_equal(vol.read(0, 3), data[[1, 0, 2]])
    io.write_tiff(tmp_path / "s" / "im200.tif", np.zeros((5, 5), np.uint16))
    with pytest.raises(PaserInputError, match="first slice"):
        open_volume(tmp_path / "s").read(0, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PaserInputError, match="no TIFF slices"):
        open_volume(tmp_path / "empty")


def test_input_errors_are_one_line(tmp_path):
    import h5py

    with pytest.raises(PaserInputError, match="not found"):
        open_volume(tmp_path / "missing.tif")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 4, 4))
        f["b"] = np.zeros((2, 4, 4))
    with pytest.raises(PaserInputError, match="choose the dataset"):
        open_volume(tmp_path / "two.h5")
    with pytest.raises(PaserInputError, match="no dataset /c"):
        open_volume(f"{tmp_path / 'two.h5'}:/c")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(PaserInputError, match="HDF5"):
        open_volume(tmp_path / "bad.h5")
    import zarr

    g = zarr.open_group(str(tmp_path / "rgb.zarr"), mode="w", zarr_format=2)
    g.create_array("0", data=np.zeros((3, 2, 8, 8), np.uint8))
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space"} for n in "zyx"]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    with pytest.raises(PaserInputError, match="one grayscale volume"):
        open_volume(tmp_path / "rgb.zarr")


def test_volume_indexing_returns_what_numpy_would(tmp_path):
    data = stack((6, 12, 14))
    vol = TiffVolume(io.write_tiff(tmp_path / "i.tif", data))
    np.testing.assert_array_equal(vol[-1], data[-1])
    np.testing.assert_array_equal(vol[-6, 3], data[-6, 3])
    np.testing.assert_array_equal(vol[[4, 1, 4]], data[[4, 1, 4]])  # any order, repeats kept
    np.testing.assert_array_equal(vol[np.array([False, True] * 3)], data[1::2])
    np.testing.assert_array_equal(vol[...], data)
    np.testing.assert_array_equal(vol[5:2:-1, :, 7], data[5:2:-1, :, 7])
    assert vol[4:2].shape == (0, 12, 14) and vol.read(7, 9).shape == (0, 12, 14)  # past the end: empty, as numpy
    for plane in (6, -7):
        with pytest.raises(IndexError, match="out of range"):
            vol[plane]


def test_zarr_stores_that_hold_no_volume_say_what_they_hold(tmp_path):
    import zarr

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("scan", data=stack((2, 12, 14)))
    group.create_array("mask", data=np.zeros((2, 12, 14), np.uint8))
    with pytest.raises(PaserInputError, match=r"without OME multiscales.*--dataset \(mask, scan\)"):
        open_volume(tmp_path / "g.zarr")
    with pytest.raises(PaserInputError, match="has no array labels"):
        open_volume(tmp_path / "g.zarr", dataset="labels")
    np.testing.assert_array_equal(open_volume(tmp_path / "g.zarr", dataset="scan").read(0, 2), stack((2, 12, 14)))


def test_ome_zarr_singleton_channel_and_units(tmp_path):
    data = stack((3, 12, 14))
    vol = open_volume(write_ome_zarr(tmp_path / "a.zarr", data, scale=(2e-3, 5e-4, 5e-4), unit="millimeter", extra_axes=("c",)))
    assert vol.shape == data.shape and vol.voxel_size == pytest.approx((2.0, 0.5, 0.5))
    np.testing.assert_array_equal(vol.read(1, 3), data[1:3])


def test_an_ome_zarr_pyramid_reads_its_full_resolution_and_lists_its_coarser_levels(tmp_path):
    import zarr

    data = stack((3, 40, 48))
    vol = open_volume(write_ome_zarr(tmp_path / "p.zarr", data, extra_axes=("c",), levels=3))
    assert vol.shape == data.shape and vol.voxel_size == pytest.approx(VOXEL)
    np.testing.assert_array_equal(vol.read(0, 3), data)  # segmented at full resolution
    coarser = vol.coarser_levels()
    assert [v.shape for v in coarser] == [(3, 20, 24), (3, 10, 12)]
    np.testing.assert_array_equal(coarser[1].read(0, 3), data[:, ::4, ::4])
    assert open_volume(write_ome_zarr(tmp_path / "one.zarr", data)).coarser_levels() == []
    # A level that does not shrink the one before ends the pyramid.
    g = zarr.open_group(str(tmp_path / "p.zarr"), mode="r+")
    attrs = dict(g.attrs)
    attrs["multiscales"][0]["datasets"][2]["path"] = "0"
    g.attrs.update(attrs)
    assert [v.shape for v in open_volume(tmp_path / "p.zarr").coarser_levels()] == [(3, 20, 24)]


def test_array_volume_and_2d_tiff(tmp_path):
    img = stack((12, 14))
    with open_volume(io.write_tiff(tmp_path / "one.tif", img)) as vol:
        assert vol.shape == (1, 12, 14) and vol.input_ndim == 2
        np.testing.assert_array_equal(np.asarray(vol), img)
    mem = ArrayVolume(img)
    assert mem.shape == (1, 12, 14) and mem.input_ndim == 2


@pytest.mark.parametrize("bigtiff", [False, True])
def test_tiff_slice_writer_round_trip(tmp_path, bigtiff):
    data = stack((5, 12, 14)).astype(np.uint8)
    path = tmp_path / "out.tif"
    w = TiffSliceWriter(path, data.shape, np.uint8, voxel_size=VOXEL, metadata={"a": 1}, bigtiff=bigtiff)
    w.write(data[:2])
    w.write(data[2])
    w.write(data[3:])
    assert not path.exists()  # written under a temporary name until complete
    w.close({"a": 2, "long": "x" * 300})  # final metadata may be longer than the first
    back, vs = io.read_stack(path)
    np.testing.assert_array_equal(back, data)
    assert vs == pytest.approx(VOXEL) and io.read_metadata(path) == {"a": 2, "long": "x" * 300}
    with pytest.raises(FileExistsError):
        TiffSliceWriter(path, data.shape)


def test_tiff_slice_writer_abort_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="1 of 3 planes"):
        with TiffSliceWriter(tmp_path / "x.tif", (3, 4, 5)) as w:
            w.write(np.zeros((4, 5), np.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("writer", "name"), [(TiffSliceWriter, "out.tif"), (ZarrLabelWriter, "out.zarr")])
def test_slab_writers_never_replace_what_appeared_meanwhile_and_refuse_bad_slabs(tmp_path, writer, name):
    path = tmp_path / name
    w = writer(path, (3, 4, 5), np.uint8)
    with pytest.raises(ValueError, match="do not fit"):
        w.write(np.zeros((1, 4, 6), np.uint8))
    w.write(np.ones((3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="more than 3 planes"):
        w.write(np.ones((4, 5), np.uint8))
    zarr_out = name.endswith(".zarr")
    if zarr_out:  # made by the user while the run wrote
        path.mkdir()
    else:
        path.write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match="use --overwrite"):
        w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # the temporary output is gone
    assert (path.is_dir() and not any(path.iterdir())) if zarr_out else path.read_bytes() == b"the user's own file"
    w = writer(path, (3, 4, 5), np.uint8, overwrite=True)
    w.write(np.full((3, 4, 5), 2, np.uint8))
    w.close()
    np.testing.assert_array_equal(open_volume(path).read(0, 3), np.full((3, 4, 5), 2))
    with pytest.raises(PaserInputError, match=r"\(Z,Y,X\) or \(Y,X\)"):
        writer(tmp_path / f"flat{path.suffix}", (5,), np.uint8)


def test_zarr_output_refuses_foreign_finished_and_other_runs(tmp_path):
    out = OmeZarrOutput(tmp_path / "o.zarr")
    kw = dict(shape=(5, 8, 8), grid=(1, 1), slab=2, voxel_size=VOXEL)
    assert out.prepare(run_key={"a": 1}, **kw) == [0, 1, 2]
    out.write_slab(1, 2, np.ones((2, 8, 8), np.uint8), None, None, np.ones(2), np.ones((2, 3), np.int64), 0.5)
    assert OmeZarrOutput(tmp_path / "o.zarr").prepare(run_key={"a": 1}, **kw) == [0, 2]  # resumed
    with pytest.raises(FileExistsError, match="other input or settings"):
        OmeZarrOutput(tmp_path / "o.zarr").prepare(run_key={"a": 2}, **kw)
    with pytest.raises(FileExistsError, match=r"\(a: 1 when it began, 2 now; b.c: unset when it began, true now;"):
        OmeZarrOutput(tmp_path / "o.zarr").prepare(run_key={"a": 2, "b": {"c": True}}, **kw)  # what differs, setting by setting
    out.finish({"done": True})
    with pytest.raises(FileExistsError, match="finished"):
        OmeZarrOutput(tmp_path / "o.zarr").prepare(run_key={"a": 1}, **kw)
    assert OmeZarrOutput(tmp_path / "o.zarr").prepare(run_key={"a": 1}, overwrite=True, **kw) == [0, 1, 2]
    (tmp_path / "user.zarr").mkdir()
    with pytest.raises(FileExistsError, match="not a napari-paser output"):
        OmeZarrOutput(tmp_path / "user.zarr").prepare(run_key={"a": 1}, **kw)
    ome = open_volume(tmp_path / "o.zarr")
    assert ome.voxel_size == pytest.approx(VOXEL) and ome.shape == (5, 8, 8)


def test_a_roi_reads_its_box_of_any_container_lazily(tmp_path):
    data = np.arange(5 * 20 * 30, dtype=np.uint16).reshape(5, 20, 30)
    path = io.write_tiff(tmp_path / "s.tif", data, voxel_size=(2.0, 0.5, 0.5))
    base = open_volume(path)
    box = parse_roi("1:-1, 2:18, :-5", base.shape)
    assert box == ((1, 4), (2, 18), (0, 25))
    crop = CroppedVolume(base, box)
    assert crop.shape == (3, 16, 25) and crop.voxel_size == base.voxel_size and crop.source.endswith("[1:4,2:18,0:25]")
    np.testing.assert_array_equal(crop[1], data[2, 2:18, :25])
    np.testing.assert_array_equal(np.asarray(crop), data[1:4, 2:18, :25])
    image = ArrayVolume(data[0])  # a 2-D image: rows and columns only
    crop2d = CroppedVolume(image, parse_roi("5:,:10", image.shape, image.input_ndim))
    assert crop2d.input_shape == (15, 10)
    np.testing.assert_array_equal(np.asarray(crop2d), data[0, 5:, :10])


@pytest.mark.parametrize("text, words", [
    ("1:3,2:5", "give 3 ranges"),
    ("0:9,:,:", "outside the 5 planes"),
    (":,-25:,:", "outside the 20 rows"),
    ("2:2,:,:", "holds no planes"),
    ("a:b,:,:", "not a range"),
    ("1,:,:", "not a range"),
])
def test_bad_roi_is_one_line(text, words):
    with pytest.raises(PaserInputError, match=words):
        parse_roi(text, (5, 20, 30))


def test_the_box_a_record_holds_wherever_a_file_kept_it(tmp_path):
    from napari_paser.io_sources import recorded_roi

    roi = [[1, 3], [0, 64], [2, 60]]
    for record in ({"roi": roi}, {"napari_paser": {"roi": roi}}, {"provenance": {"roi": roi}}, {"report": {"roi": roi}}):
        assert recorded_roi(record) == roi
    assert recorded_roi({"napari_paser": {"lam": 0.1}}) is None and recorded_roi(None) is None
    # A TIFF that segment --roi wrote, read back as a file's metadata.
    path = io.write_tiff(tmp_path / "box.tif", np.zeros((2, 64, 58), np.uint8), metadata={"napari_paser": {"roi": roi}})
    assert recorded_roi(io.read_metadata(path)) == roi


def test_blended_borders_a_record_holds_wherever_a_file_kept_it(tmp_path):
    from napari_paser.io_sources import labels_file_blend, recorded_blend

    bundle = {"name": "b", "blended_borders_px": 8}
    kept = ({"bundle": bundle}, {"napari_paser": {"bundle": bundle}}, {"report": {"bundle": bundle}},  # segment, a Zarr store, a layer
            {"provenance": {"bundle": {"name": "b"}, "report": {"bundle": bundle}}})  # exported from napari
    assert [recorded_blend(record) for record in kept] == [8, 8, 8, 8]
    assert recorded_blend({"napari_paser": {"bundle": {"name": "b"}}}) is None and recorded_blend(None) is None
    path = io.write_tiff(tmp_path / "blended.tif", np.zeros((2, 64, 58), np.uint8), metadata={"napari_paser": {"bundle": bundle}})
    assert labels_file_blend(path) == 8 and labels_file_blend(tmp_path / "missing.tif") is None
