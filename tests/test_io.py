"""TIFF stacks: round trips of pixels, voxel size and metadata; clear input errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_paser.errors import PaserInputError
from napari_paser.io import open_stack_lazy, read_metadata, read_stack, read_voxel_size, write_tiff


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int16])
def test_round_trip_dtypes(tmp_path, dtype):
    rng = np.random.default_rng(0)
    data = (rng.random((3, 8, 10)) * 200).astype(dtype)
    path = write_tiff(tmp_path / "a.tif", data, voxel_size=(2.0, 0.5, 0.25))
    back, vs = read_stack(path)
    assert back.dtype == data.dtype and back.shape == data.shape
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(vs, (2.0, 0.5, 0.25), rtol=1e-5)
    np.testing.assert_allclose(read_voxel_size(path), vs)


@pytest.mark.parametrize(
    "data, expected",
    [
        (np.ones((2, 4, 4), bool), np.uint8),
        (np.full((4, 4), 3.5, np.float64), np.float32),
        (np.arange(16, dtype=np.int64).reshape(4, 4), np.uint16),
        (np.full((4, 4), -5, np.int8), np.int16),
    ],
)
def test_any_dtype_is_stored(tmp_path, data, expected):
    back, vs = read_stack(write_tiff(tmp_path / "b.tif", data))
    assert back.dtype == expected and vs is None
    np.testing.assert_array_equal(back, data.astype(expected))


@pytest.mark.parametrize(
    "data, expected",
    [
        (np.array([[-40000, 0], [5, 70000]], np.int32), np.float32),  # beyond int16 and uint16: exact in float32
        (np.array([[-300, 0], [5, 300]], np.int64), np.int16),
        (np.array([[0, 1], [2, 3]], np.uint32), np.uint16),
    ],
)
def test_integers_get_the_smallest_imagej_type_that_holds_their_range(tmp_path, data, expected):
    back, _ = read_stack(write_tiff(tmp_path / "w.tif", data))
    assert back.dtype == expected
    np.testing.assert_array_equal(back.astype(np.int64), data.astype(np.int64))


def test_complex_images_are_refused_and_leave_no_file(tmp_path):
    with pytest.raises(PaserInputError, match="complex"):
        write_tiff(tmp_path / "c.tif", np.ones((4, 4), np.complex64))
    assert list(tmp_path.iterdir()) == []


def test_2d_and_metadata(tmp_path):
    meta = {"seed": 3, "fractions": {"pore": 0.3, "nickel": 0.55}, "name": "µ-CT"}
    path = write_tiff(tmp_path / "img.tif", np.zeros((5, 6), np.uint16), metadata=meta)
    back, _ = read_stack(path)
    assert back.shape == (5, 6)
    assert read_metadata(path) == meta


def test_imagej_calibration_visible_to_tifffile(tmp_path):
    path = write_tiff(tmp_path / "c.tif", np.zeros((4, 5, 6), np.uint8), voxel_size=(1.5, 0.7, 0.7))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        ij = tif.imagej_metadata
        assert ij["unit"] == "um" and ij["spacing"] == pytest.approx(1.5)
        assert ij["images"] == 4
    assert read_metadata(path) == {}


def test_overwrite_and_atomic(tmp_path):
    path = write_tiff(tmp_path / "sub" / "d.tif", np.zeros((2, 3), np.uint8))
    with pytest.raises(FileExistsError):
        write_tiff(path, np.ones((2, 3), np.uint8))
    write_tiff(path, np.ones((2, 3), np.uint8), overwrite=True)
    assert read_stack(path)[0].max() == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["d.tif"]  # no temp files left


def test_bad_metadata_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_tiff(tmp_path / "e.tif", np.zeros((2, 3), np.uint8), metadata={"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_input_errors(tmp_path):
    with pytest.raises(PaserInputError, match="not found"):
        read_stack(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_text("this is not a tiff")
    with pytest.raises(PaserInputError, match="TIFF"):
        read_stack(bad)
    with pytest.raises(PaserInputError, match="folder"):
        read_stack(tmp_path)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((2, 8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(PaserInputError, match="grayscale"):
        read_stack(rgb)
    with pytest.raises(PaserInputError):
        write_tiff(tmp_path / "f.tif", np.zeros((2, 2), np.uint8), voxel_size=(1.0, 0.0, 1.0))


def test_ome_and_plain_voxel_size(tmp_path):
    ome = tmp_path / "x.ome.tif"
    tifffile.imwrite(
        ome,
        np.zeros((3, 4, 5), np.uint16),
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1000.0,
                  "PhysicalSizeZUnit": "nm"},
    )
    np.testing.assert_allclose(read_stack(ome)[1], (1.0, 0.3, 0.2), rtol=1e-6)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 5), np.uint8), resolution=(1e4 / 2.0, 1e4 / 2.0), resolutionunit="CENTIMETER")
    np.testing.assert_allclose(read_stack(plain)[1], (2.0, 2.0, 2.0), rtol=1e-6)
    tifffile.imwrite(tmp_path / "none.tif", np.zeros((4, 5), np.uint8))
    assert read_stack(tmp_path / "none.tif")[1] is None


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ({"PhysicalSizeX": 0.4}, (0.4, 0.4, 0.4)),  # rows and planes as columns when the file names one size
        ({"PhysicalSizeX": 0.4, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "mm"}, (0.5, 0.5, 400.0)),
        ({"PhysicalSizeX": 0.4, "PhysicalSizeXUnit": "furlong"}, None),  # a unit we cannot convert: no size, not a wrong one
    ],
)
def test_ome_voxel_size_units_and_missing_axes(tmp_path, metadata, expected):
    path = tmp_path / "v.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 5), np.uint16), ome=True, metadata={"axes": "ZYX", **metadata})
    size = read_stack(path)[1]
    if expected is None:
        assert size is None
    else:
        np.testing.assert_allclose(size, expected, rtol=1e-6)


def test_imagej_and_resolution_tags_that_say_no_size(tmp_path):
    zero = tmp_path / "zero.tif"
    tifffile.imwrite(zero, np.zeros((4, 5), np.uint8), resolution=((0, 1), (0, 1)))
    assert read_stack(zero)[1] is None  # zero pixels per unit
    pixel = tmp_path / "pixel.tif"
    tifffile.imwrite(pixel, np.zeros((2, 4, 5), np.uint8), imagej=True, resolution=(2.0, 2.0), metadata={"unit": "pixel"})
    assert read_stack(pixel)[1] is None  # an uncalibrated ImageJ stack
    nm = tmp_path / "nm.tif"
    tifffile.imwrite(nm, np.zeros((2, 4, 5), np.uint8), imagej=True, resolution=(2.0, 4.0), metadata={"unit": "nm", "spacing": 3.0})
    np.testing.assert_allclose(read_stack(nm)[1], (0.003, 0.00025, 0.0005), rtol=1e-6)


def test_open_stack_lazy(tmp_path):
    data = np.arange(3 * 8 * 10, dtype=np.uint16).reshape(3, 8, 10)
    mapped = open_stack_lazy(write_tiff(tmp_path / "m.tif", data))
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(np.asarray(mapped), data)
    lazy = open_stack_lazy(write_tiff(tmp_path / "z.tif", data, compress=True))
    assert lazy.shape == data.shape
    np.testing.assert_array_equal(np.asarray(lazy), data)
    with pytest.raises(PaserInputError):
        open_stack_lazy(tmp_path / "missing.tif")


@pytest.mark.parametrize("keep_bytes", [8, 16, 200, 1000])
def test_truncated_tiff_is_a_clear_input_error(tmp_path, keep_bytes):
    import tifffile

    from napari_paser.errors import PaserInputError
    from napari_paser.io import read_stack

    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.zeros((4, 64, 64), np.uint16), photometric="minisblack")
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(good.read_bytes()[:keep_bytes])
    with pytest.raises(PaserInputError, match="truncated.tif"):
        read_stack(bad)


def test_a_page_that_tifffile_lists_as_missing_is_a_clear_input_error(tmp_path):
    """tifffile lists a page that a series names but the file lacks as None."""
    from types import SimpleNamespace

    from napari_paser.io import _series_page

    series = SimpleNamespace(pages=[SimpleNamespace(shape=(4, 4)), None])
    assert _series_page(series, 0, tmp_path / "scan.ome.tif") is series.pages[0]
    with pytest.raises(PaserInputError, match=r"scan.ome.tif \(page 1 of its image is missing\)"):
        _series_page(series, 1, tmp_path / "scan.ome.tif")
