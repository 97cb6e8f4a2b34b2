"""Lazy (Z,Y,X) inputs: TIFF stacks, folders of TIFF slices, HDF5 datasets, Zarr / OME-Zarr.

Every source is a :class:`Volume`: an array-like with ``shape`` (always (Z,Y,X); a 2-D
image is one plane), ``dtype``, ``voxel_size`` and :meth:`Volume.read` for a range of
planes. Nothing is read until planes are asked for, so a stack larger than memory can be
segmented slab by slab. Volumes pickle as their path (open file handles are dropped and
reopened), so dask workers can read their own slabs. ``dask.array.from_array(volume)``
gives napari a lazy layer.

Voxel sizes are ``(plane, row, column)`` in micrometres, from the source's metadata:
TIFF tags (see :mod:`napari_paser.io`), the first file of a folder, HDF5 attributes
(``element_size_um``, ``voxel_size_um``, ``voxel_size``/``pixel_size`` with ``unit``), or
OME-Zarr ``multiscales`` coordinate transformations with the axes' units.
"""

from __future__ import annotations

import abc
import glob
import os
import re
import struct
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import tifffile

from . import io as _tiffio
from .errors import PaserInputError

__all__ = [
    "Volume",
    "ArrayVolume",
    "TiffVolume",
    "TiffFolderVolume",
    "HDF5Volume",
    "ZarrVolume",
    "CroppedVolume",
    "parse_roi",
    "box_ranges",
    "roi_text",
    "recorded_roi",
    "labels_file_roi",
    "recorded_blend",
    "labels_file_blend",
    "scan_under_labels",
    "zarr_provenance",
    "open_volume",
    "as_volume",
    "input_path",
    "is_volume_path",
    "HDF5_SUFFIXES",
]

VoxelSize = tuple[float, float, float]

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nxs", ".nx5")
TIFF_SUFFIXES = (".tif", ".tiff")
_DEFAULT_HDF5_DATASETS = ("/exchange/data", "/data", "/volume", "/image")
_SPEC = re.compile(r"^(?P<file>.+?(?:" + "|".join(re.escape(s) for s in HDF5_SUFFIXES) + r"))(?::(?P<key>.*))?$", re.IGNORECASE)
# Errors that h5py / zarr / tifffile raise for a damaged or foreign file. Memory errors
# and programming errors are deliberately not among them.
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, struct.error, tifffile.TiffFileError)


class Volume(abc.ABC):
    """A lazily read grayscale (Z,Y,X) stack.

    Attributes
    ----------
    shape : tuple of int
        (Z, Y, X); a 2-D image is a stack of one plane (``input_ndim`` is then 2).
    dtype : numpy.dtype
    voxel_size : tuple of float or None
        (plane, row, column) in micrometres.
    input_ndim : int
        2 for a single image, else 3.
    source : str
        Where the pixels come from (for reports).
    """

    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size: VoxelSize | None = None
    input_ndim: int = 3
    source: str = ""
    _handle: Any  # the open file of subclasses that read through one (see close)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape the input had: (Z, Y, X), or (Y, X) for a 2-D image."""
        return tuple(self.shape) if self.input_ndim == 3 else tuple(self.shape[1:])

    def slab_planes(self, voxels: int) -> int:
        """Planes of about ``voxels`` voxels (at least one): the slab size for a budget."""
        return max(1, int(voxels) // (int(self.shape[1]) * int(self.shape[2])))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Planes ``z0 .. z1-1`` as an (z1-z0, Y, X) array of :attr:`dtype`."""
        z0, z1 = max(0, int(z0)), min(self.shape[0], int(z1))
        if z1 <= z0:
            return np.zeros((0,) + tuple(self.shape[1:]), self.dtype)
        try:
            out = np.asarray(self._read(z0, z1))
        except PaserInputError:
            raise
        except _READ_ERRORS as err:
            raise PaserInputError(f"cannot read planes {z0}..{z1 - 1} of {self.source}: {err}") from None
        expected = (z1 - z0,) + tuple(self.shape[1:])
        if out.shape != expected:
            raise PaserInputError(f"{self.source}: planes {z0}..{z1 - 1} have shape {out.shape}, expected {expected}")
        return out

    def slabs(self, planes: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(z0, block)`` for consecutive slabs of ``planes`` planes, the last one shorter:
        the whole stack read once, a slab in memory at a time."""
        step = max(1, int(planes))
        for z0 in range(0, self.shape[0], step):
            yield z0, self.read(z0, z0 + step)

    @abc.abstractmethod
    def _read(self, z0: int, z1: int) -> np.ndarray:
        """Planes ``z0 .. z1 - 1`` as an array; each source reads its own format."""

    def __getitem__(self, key: Any) -> np.ndarray:
        """NumPy indexing; only the planes the first index selects are read."""
        key = key if isinstance(key, tuple) else (key,)
        if key and key[0] is Ellipsis and len(key) == 1:
            key = (slice(None),)
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(first, (int, np.integer)):
            z = int(first) + (self.shape[0] if first < 0 else 0)
            if not 0 <= z < self.shape[0]:
                raise IndexError(f"plane {first} out of range for {self.shape[0]} planes")
            return self.read(z, z + 1)[0][rest] if rest else self.read(z, z + 1)[0]
        if isinstance(first, slice):
            start, stop, step = first.indices(self.shape[0])
            if step == 1:
                block = self.read(start, stop)
                return block[(slice(None),) + rest]
            zs = list(range(start, stop, step))
        else:
            zs = [int(z) for z in np.arange(self.shape[0])[first].reshape(-1)]
        planes = [self.read(z, z + 1)[0] for z in zs]
        block = np.stack(planes) if planes else np.zeros((0,) + tuple(self.shape[1:]), self.dtype)
        return block[(slice(None),) + rest]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        # Reads the whole stack: only for callers that explicitly want it in memory.
        out = self.read(0, self.shape[0])
        out = out if self.input_ndim == 3 else out[0]
        return out.astype(dtype, copy=False) if dtype is not None else out

    def coarser_levels(self) -> list[Volume]:
        """Coarser versions of the stack stored with it, finest first (an OME-Zarr
        pyramid's levels: :meth:`ZarrVolume.coarser_levels`); none for other inputs."""
        return []

    def close(self) -> None:
        """Release open file handles (they are reopened on the next read)."""
        # Subclasses that read through one open file keep it in ``_handle``.
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()
            self._handle = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_handle", None)
        return state

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, shape={self.shape}, dtype={np.dtype(self.dtype).name})"


def _squeeze_shape(shape: Sequence[int], source: str) -> tuple[tuple[int, int, int], int, tuple[int, ...]]:
    """(Z,Y,X) shape, input ndim, and the indices of the kept leading axes."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise PaserInputError(f"expected a grayscale (Z,Y,X) stack or (Y,X) image in {source}, got shape {shape}")
    lead = [i for i, n in enumerate(shape[:-2]) if n != 1]
    if len(lead) > 1:
        raise PaserInputError(f"expected a grayscale (Z,Y,X) stack or (Y,X) image in {source}, got shape {shape}")
    if lead:
        return (shape[lead[0]], shape[-2], shape[-1]), 3, tuple(lead)
    return (1, shape[-2], shape[-1]), 2, ()


class ArrayVolume(Volume):
    """An array already in memory (or any array-like: memmap, dask, zarr) as a Volume."""

    def __init__(self, data: Any, voxel_size: VoxelSize | None = None, source: str = "array"):
        if getattr(data, "ndim", np.ndim(data)) not in (2, 3):
            raise PaserInputError(f"expected a (Z,Y,X) stack or a (Y,X) slice, got shape {tuple(np.shape(data))}")
        self.input_ndim = int(data.ndim)
        self._data = data if data.ndim == 3 else data[None]
        self.shape = tuple(int(s) for s in self._data.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(data.dtype)
        self.voxel_size = voxel_size
        self.source = source

    def _read(self, z0: int, z1: int) -> np.ndarray:
        return np.asarray(self._data[z0:z1])


# --------------------------------------------------------------------------- region of interest

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def parse_roi(text: str, shape: Sequence[int], input_ndim: int = 3) -> Box:
    """The box ``"Z0:Z1,Y0:Y1,X0:X1"`` names in a (Z, Y, X) stack of ``shape``.

    Parameters
    ----------
    text : str
        One ``start:stop`` range per axis of the input, plane, row and column (row and
        column for a 2-D image); a missing bound is the axis' start or end, a negative
        one counts from the end, as in Python (``":,100:-100,100:-100"``).
    shape : sequence of int
        The (Z, Y, X) shape of the stack.
    input_ndim : int
        2 for a single image (the text then names rows and columns only), else 3.

    Returns
    -------
    ((z0, z1), (y0, y1), (x0, x1))

    Raises
    ------
    PaserInputError
        A range that is not ``start:stop``, lies outside the stack or is empty.
    """
    names = ("planes", "rows", "columns")[3 - input_ndim:]
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != input_ndim:
        raise PaserInputError(f"--roi {text!r}: give {input_ndim} ranges start:stop, one per axis ({', '.join(names)})")
    box = [] if input_ndim == 3 else [(0, 1)]
    for part, name, n in zip(parts, names, tuple(shape)[3 - input_ndim:]):
        bounds = part.split(":")
        try:
            if len(bounds) != 2:
                raise ValueError
            start, stop = (int(b) if b.strip() else None for b in bounds)
        except ValueError:
            raise PaserInputError(f"--roi {text!r}: {part!r} is not a range start:stop of {name}") from None
        if any(b is not None and not -n <= b <= n for b in (start, stop)):
            raise PaserInputError(f"--roi {text!r}: {part!r} lies outside the {n} {name} of the stack")
        lo, hi, _ = slice(start, stop).indices(n)
        if hi <= lo:
            raise PaserInputError(f"--roi {text!r}: {part!r} holds no {name}")
        box.append((lo, hi))
    return (box[0], box[1], box[2])


def recorded_roi(record: Any) -> list[list[int]] | None:
    """The box a PaSeR record says its labels cover (``segment --roi``, the napari panel's
    region), one ``[start, stop]`` per axis of the scan; None for the whole scan.

    ``record`` is a run's provenance (the ``roi`` at its top) or what a file keeps of it:
    the metadata of a ``segment`` TIFF (under ``napari_paser``), of an exported one (under
    ``provenance``), or a ``segment`` Zarr store's attributes (under ``report``).
    """
    if not isinstance(record, dict):
        return None
    for where in (record, record.get("napari_paser"), record.get("provenance"), record.get("report")):
        if isinstance(where, dict) and where.get("roi"):
            return [[int(a), int(b)] for a, b in where["roi"]]
    return None


def box_ranges(box: Box, input_ndim: int) -> list[list[int]]:
    """``box`` over the input's axes: ``[start, stop]`` of planes, rows and columns (rows
    and columns for a 2-D image), as outputs record it."""
    return [list(r) for r in (box if input_ndim == 3 else box[1:])]


def roi_text(ranges: Sequence[Sequence[int]]) -> str:
    """Ranges as ``--roi`` text (``"1:3,0:64,2:60"``)."""
    return ",".join(f"{a}:{b}" for a, b in ranges)


def _labels_file_record(path: str | os.PathLike) -> dict:
    """What a labels file keeps of the run that made it: a Zarr store's attributes or a
    TIFF's metadata ({} for anything else)."""
    try:
        return zarr_provenance(path) or _tiffio.read_metadata(path)
    except (PaserInputError, OSError):
        return {}


def labels_file_roi(path: str | os.PathLike) -> str | None:
    """The box of its scan that a labels file (a TIFF or Zarr store PaSeR wrote over a
    region) covers, as ``--roi`` text; None if it records none."""
    roi = recorded_roi(_labels_file_record(path))
    return roi_text(roi) if roi else None


def recorded_blend(record: Any) -> int | None:
    """Pixels on each side of a border between patches that a PaSeR record says its
    labels were blended over (what ``segment`` and the napari panel do by default with a
    bundle that reads a halo); None if they were not.

    ``record`` is what :func:`recorded_roi` reads. The setting lies in a bundle record
    (:func:`~napari_paser.engine.bundle.bundle_record`) at the record's top or in its run
    report, which a file or an exported layer may keep one or two levels down.
    """
    todo = [record]
    while todo:
        where = todo.pop(0)
        if not isinstance(where, dict):
            continue
        bundle = where.get("bundle")
        if isinstance(bundle, dict) and bundle.get("blended_borders_px"):
            return int(bundle["blended_borders_px"])
        todo.extend(where.get(key) for key in ("napari_paser", "provenance", "report"))
    return None


def labels_file_blend(path: str | os.PathLike) -> int | None:
    """:func:`recorded_blend` of a labels file (a TIFF or Zarr store PaSeR wrote)."""
    return recorded_blend(_labels_file_record(path))


def scan_under_labels(scan: Volume, labels: Volume, labels_path: str | os.PathLike,
                      roi: str | None = None) -> tuple[Volume, str | None]:
    """The part of ``scan`` that ``labels`` cover: the box ``roi`` names; without one, the
    box the labels file records (``segment --roi``) when the shapes differ; else all of it.

    Returns the scan, cut to the box, and the box read from the file (None if none was).
    """
    recorded = None
    if not roi and scan.input_shape != labels.input_shape:
        roi = recorded = labels_file_roi(labels_path)
    if roi:
        scan = CroppedVolume(scan, parse_roi(roi, scan.shape, scan.input_ndim))
    return scan, recorded


def zarr_provenance(path: str | os.PathLike) -> dict:
    """The ``napari_paser`` attributes of a Zarr store that ``segment`` wrote ({} otherwise)."""
    if not str(path).rstrip("/").lower().endswith(".zarr"):
        return {}
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs).get("napari_paser")
    except (OSError, ValueError, KeyError, TypeError, zarr.errors.GroupNotFoundError):
        return {}
    return attrs if isinstance(attrs, dict) else {}


class CroppedVolume(Volume):
    """A box of another :class:`Volume`, read lazily (planes of the box only).

    Parameters
    ----------
    base : Volume
    box : ((z0, z1), (y0, y1), (x0, x1))
        As :func:`parse_roi` returns it.
    """

    def __init__(self, base: Volume, box: Box):
        (z0, z1), (y0, y1), (x0, x1) = box
        self._base, self.box = base, box
        self.shape = (z1 - z0, y1 - y0, x1 - x0)
        self.dtype = base.dtype
        self.voxel_size = base.voxel_size
        self.input_ndim = base.input_ndim
        self.source = f"{base.source}[{roi_text(self.ranges)}]"

    @property
    def ranges(self) -> list[list[int]]:
        """The box over the input's axes (:func:`box_ranges`), as outputs record it."""
        return box_ranges(self.box, self.input_ndim)

    def _read(self, z0: int, z1: int) -> np.ndarray:
        (bz, _), (y0, y1), (x0, x1) = self.box
        return self._base.read(bz + z0, bz + z1)[:, y0:y1, x0:x1]

    def close(self) -> None:
        self._base.close()


# --------------------------------------------------------------------------- TIFF


class TiffVolume(Volume):
    """A multi-page TIFF (ImageJ, OME, BigTIFF or plain) read a range of pages at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(_tiffio._check_path(path))  # absolute: workers may run elsewhere
        self.source = self.path
        with _tiffio._open_tiff(Path(self.path)) as tif:
            series = tif.series[0]
            self.shape, self.input_ndim, _ = _squeeze_shape(series.shape, self.path)
            self.dtype = np.dtype(series.dtype)
            self.voxel_size = _tiffio._voxel_size(tif)
            n_pages = len(series.pages)
            page_shape = tuple(int(s) for s in _tiffio._series_page(series, 0, Path(self.path)).shape) if n_pages else ()
        # One page per plane is what reading a range of planes needs; other layouts
        # (samples per pixel, tiles of a pyramid) are read whole by open_volume.
        if n_pages != self.shape[0] or tuple(s for s in page_shape if s != 1) != self.shape[1:]:
            raise _NotPlanar(self.path)
        self._handle: tifffile.TiffFile | None = None

    def _tif(self) -> tifffile.TiffFile:
        handle = getattr(self, "_handle", None)
        if handle is None:
            handle = self._handle = _tiffio._open_tiff(Path(self.path))
        return handle

    def _read(self, z0: int, z1: int) -> np.ndarray:
        data = self._tif().asarray(key=range(z0, z1), series=0)
        return np.asarray(data).reshape((z1 - z0,) + tuple(self.shape[1:]))


class _NotPlanar(Exception):
    """A TIFF whose pages are not the planes of one stack."""


_DIGITS = re.compile(r"(\d+)")


def _natural_key(path: str) -> list:
    name = os.path.basename(path)
    return [int(t) if t.isdigit() else t.lower() for t in _DIGITS.split(name)]


class TiffFolderVolume(Volume):
    """2-D TIFF slices, one file per plane, sorted by name (numbers by value: 2 before 10).

    Parameters
    ----------
    files : str or sequence of str
        A folder (its ``*.tif`` / ``*.tiff`` files), a glob pattern, or the files.
    """

    def __init__(self, files: str | os.PathLike | Sequence[str]):
        if isinstance(files, (str, os.PathLike)):
            spec = str(files)
            if os.path.isdir(spec):
                paths = [str(p) for p in Path(spec).iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()]
                where = f"folder {spec}"
            else:
                paths = [p for p in glob.glob(spec) if os.path.isfile(p)]
                where = f"pattern {spec}"
            self.source = os.path.abspath(spec)
        else:
            paths = [str(p) for p in files]
            where = "the file list"
            self.source = paths[0] if paths else ""
        if not paths:
            raise PaserInputError(f"no TIFF slices found in {where}")
        self.files = [os.path.abspath(f) for f in sorted(paths, key=_natural_key)]
        first = self.files[0]
        with _tiffio._open_tiff(_tiffio._check_path(first)) as tif:
            page_shape = tuple(int(s) for s in tif.series[0].shape if s != 1)
            self.dtype = np.dtype(tif.series[0].dtype)
            self.voxel_size = _tiffio._voxel_size(tif)
        if len(page_shape) != 2:
            raise PaserInputError(f"slices of a folder must be 2-D grayscale images; {first} has shape {page_shape}")
        self.shape = (len(self.files),) + page_shape
        self.input_ndim = 3

    def _read(self, z0: int, z1: int) -> np.ndarray:
        out = np.empty((z1 - z0,) + tuple(self.shape[1:]), self.dtype)
        for i, f in enumerate(self.files[z0:z1]):
            with _tiffio._open_tiff(_tiffio._check_path(f)) as tif:
                plane = np.asarray(tif.asarray())
            plane = plane.reshape(tuple(s for s in plane.shape if s != 1)) if plane.ndim > 2 else plane
            if plane.shape != out.shape[1:] or plane.dtype != self.dtype:
                raise PaserInputError(
                    f"slice {f} is {plane.shape} {plane.dtype}, but the first slice is {out.shape[1:]} {self.dtype}"
                )
            out[i] = plane
        return out


# --------------------------------------------------------------------------- HDF5


def _attr_voxel_size(attrs: Any) -> VoxelSize | None:
    """Voxel size from HDF5 / Zarr attributes, in micrometres (None if absent or odd)."""
    unit = attrs.get("unit", attrs.get("units", "um"))
    for key, default_unit in (("element_size_um", "um"), ("voxel_size_um", "um"), ("voxel_size", None), ("pixel_size", None)):
        if key not in attrs:
            continue
        scale = _tiffio._unit_scale(default_unit or unit)
        try:
            vals = np.asarray(attrs[key], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return None
        if scale is None or vals.size not in (1, 3) or not (np.isfinite(vals).all() and (vals > 0).all()):
            return None
        vals = np.repeat(vals, 3) if vals.size == 1 else vals
        return tuple(float(v) * scale for v in vals)  # type: ignore[return-value]
    return None


def _h5py():
    try:
        import h5py
    except ImportError:  # a dependency, but keep the message clear if it is missing
        raise PaserInputError("reading HDF5 needs h5py: pip install h5py") from None
    return h5py


class HDF5Volume(Volume):
    """A dataset of an HDF5 file (e.g. ``/exchange/data`` of a synchrotron reconstruction)."""

    def __init__(self, path: str | os.PathLike, dataset: str | None = None):
        h5py = _h5py()
        p = Path(path)
        if not p.is_file():
            raise PaserInputError(f"file not found: {p}")
        self.path = os.path.abspath(p)
        try:
            with h5py.File(self.path, "r") as f:
                self.dataset = _pick_hdf5_dataset(f, dataset, self.path)
                ds = f[self.dataset]
                self.shape, self.input_ndim, self._lead = _squeeze_shape(ds.shape, self.source_of(self.dataset))
                self.dtype = np.dtype(ds.dtype)
                self.voxel_size = _attr_voxel_size(ds.attrs) or _attr_voxel_size(ds.parent.attrs)
                self._raw_ndim = ds.ndim
        except OSError as err:
            raise PaserInputError(f"not a readable HDF5 file: {self.path} ({err})") from None
        self.source = self.source_of(self.dataset)
        self._handle = None

    def source_of(self, dataset: str) -> str:
        return f"{self.path}:{dataset}"

    def _ds(self):
        if getattr(self, "_handle", None) is None:
            self._handle = _h5py().File(self.path, "r")
        return self._handle[self.dataset]

    def _read(self, z0: int, z1: int) -> np.ndarray:
        index: list[int | slice] = [0] * (self._raw_ndim - 2)
        if self._lead:
            index[self._lead[0]] = slice(z0, z1)
        data = self._ds()[tuple(index) + (slice(None), slice(None))]
        return np.asarray(data).reshape((z1 - z0,) + tuple(self.shape[1:]))


def _pick_hdf5_dataset(f: Any, dataset: str | None, path: str) -> str:
    h5py = _h5py()
    if dataset:
        name = "/" + dataset.lstrip("/")
        obj = f.get(name)
        if not isinstance(obj, h5py.Dataset):
            raise PaserInputError(f"{path} has no dataset {name}")
        return name
    found: list[str] = []
    f.visititems(lambda name, obj: found.append("/" + name) if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None)
    for name in _DEFAULT_HDF5_DATASETS:
        if name in found:
            return name
    if len(found) == 1:
        return found[0]
    listed = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "") if found else "none"
    raise PaserInputError(f"choose the dataset of {path} with FILE.h5:/path or --dataset (image datasets: {listed})")


# --------------------------------------------------------------------------- Zarr


def _zarr():
    try:
        import zarr
    except ImportError:
        raise PaserInputError("reading Zarr needs zarr: pip install zarr") from None
    return zarr


def _ome_attrs(attrs: Any) -> dict:
    """OME-NGFF metadata of a group: 0.5 keeps it under ``ome``, 0.4 at the top."""
    a = dict(attrs)
    return dict(a["ome"]) if isinstance(a.get("ome"), dict) else a


_SPATIAL = ("z", "y", "x")


def _ome_scale(ms: dict, level: dict, ndim: int) -> list[float] | None:
    scale = np.ones(ndim)
    for transforms in (level.get("coordinateTransformations", []), ms.get("coordinateTransformations", [])):
        for t in transforms or []:
            if t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
                scale *= np.asarray(t["scale"], dtype=np.float64)
    return [float(s) for s in scale]


class ZarrVolume(Volume):
    """A Zarr array, or level 0 of an OME-Zarr image (``multiscales``), read plane ranges at a time.

    Parameters
    ----------
    path : str
        The store (a folder ``*.zarr``).
    component : str, optional
        Path of the array inside the store (default: the OME-Zarr image's level 0, or the
        store itself if it is an array).
    """

    def __init__(self, path: str | os.PathLike, component: str | None = None):
        zarr = _zarr()
        p = Path(path)
        if not p.exists():
            raise PaserInputError(f"not found: {p}")
        self.path = os.path.abspath(p)
        try:
            node = zarr.open(self.path, mode="r")
        except _READ_ERRORS as err:
            raise PaserInputError(f"not a readable Zarr store: {p} ({err})") from None
        units: list[str | None] = []
        scale: list[float] | None = None
        axes: list[str] | None = None
        self._coarser: list[str] = []  # components of an OME-Zarr pyramid's coarser levels
        if component:
            try:
                node = node[component.strip("/")]
            except KeyError:
                raise PaserInputError(f"{p} has no array {component}") from None
        if isinstance(node, zarr.Group):
            ome = _ome_attrs(node.attrs)
            ms = (ome.get("multiscales") or [None])[0]
            if ms is None:
                arrays = sorted(name for name, _ in node.arrays())
                raise PaserInputError(f"{p} is a Zarr group without OME multiscales; choose an array with --dataset ({', '.join(arrays) or 'none'})")
            level = ms["datasets"][0]
            arr = node[level["path"]]
            group = component.strip("/") if component else ""
            self._coarser = [f"{group}/{d['path']}" if group else str(d["path"]) for d in ms["datasets"][1:]]
            axes_meta = ms.get("axes") or []
            axes = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta] or None
            units = [a.get("unit") if isinstance(a, dict) else None for a in axes_meta]
            scale = _ome_scale(ms, level, arr.ndim)
            component = f"{component.strip('/')}/{level['path']}" if component else str(level["path"])
        else:
            arr = node
        self.component = component
        self.source = f"{self.path}" + (f":{component}" if component else "")
        self._raw_ndim = arr.ndim
        self.dtype = np.dtype(arr.dtype)
        if axes and len(axes) == arr.ndim:
            # Non-spatial axes (t, c) must be singletons: one grayscale volume is segmented.
            extra = [i for i, a in enumerate(axes) if a.lower() not in _SPATIAL and arr.shape[i] != 1]
            if extra:
                raise PaserInputError(f"{self.source} has axes {axes} of shape {arr.shape}: expected one grayscale volume")
        self.shape, self.input_ndim, self._lead = _squeeze_shape(arr.shape, self.source)
        self.voxel_size = self._voxel(axes, units, scale, arr)
        self._handle = None

    def coarser_levels(self) -> list[Volume]:
        """The coarser levels of an OME-Zarr pyramid, finest first, each a volume of its
        own (napari shows them as one multiscale layer); empty for a plain array. A level
        that does not shrink the one before, or reads as another number of axes, ends the
        list."""
        levels: list[Volume] = []
        last: Volume = self
        for component in self._coarser:
            try:
                level = ZarrVolume(self.path, component)
            except PaserInputError:
                break
            if level.input_ndim == 2 and self.input_ndim == 3:
                level.input_ndim = 3  # a stack's coarse level of one plane: still a stack
            shrinks = all(a <= b for a, b in zip(level.shape, last.shape)) and level.shape != last.shape
            if level.input_ndim != self.input_ndim or not shrinks:
                break
            levels.append(level)
            last = level
        return levels

    def _voxel(self, axes, units, scale, arr) -> VoxelSize | None:
        if scale is None:
            return _attr_voxel_size(dict(arr.attrs))
        n = arr.ndim
        names = axes if axes and len(axes) == n else [None] * (n - 3) + list(_SPATIAL)[-min(3, n):]
        out = {}
        for i, name in enumerate(names):
            if name is None or name.lower() not in _SPATIAL:
                continue
            unit = units[i] if i < len(units) else None
            factor = _tiffio._unit_scale(unit) if unit else None
            if factor is None:
                return None  # no physical unit: pixel coordinates, not a voxel size
            out[name.lower()] = scale[i] * factor
        if "x" not in out:
            return None
        y = out.get("y", out["x"])
        return (float(out.get("z", y)), float(y), float(out["x"]))

    def _array(self):
        if getattr(self, "_handle", None) is None:
            node = _zarr().open(self.path, mode="r")
            self._handle = node[self.component] if self.component else node
        return self._handle

    def _read(self, z0: int, z1: int) -> np.ndarray:
        index: list[Any] = [0] * (self._raw_ndim - 2)
        if self._lead:
            index[self._lead[0]] = slice(z0, z1)
        data = self._array()[tuple(index) + (slice(None), slice(None))]
        return np.asarray(data).reshape((z1 - z0,) + tuple(self.shape[1:]))

    def close(self) -> None:
        self._handle = None


# --------------------------------------------------------------------------- dispatch


def _is_zarr_dir(p: Path) -> bool:
    return p.is_dir() and any((p / name).exists() for name in ("zarr.json", ".zgroup", ".zarray"))


def is_volume_path(path: str | os.PathLike) -> bool:
    """True if :func:`open_volume` knows this kind of path (without opening it)."""
    s = str(path)
    p = Path(s)
    if any(c in s for c in "*?[") or _SPEC.match(s):
        return True
    if p.suffix.lower() in TIFF_SUFFIXES + (".zarr",):
        return True
    return p.is_dir()


def as_volume(data: Any) -> Volume:
    """``data`` as a :class:`Volume`: a Volume as it is; an array-like with a shape and a
    dtype (numpy, memmap, dask, Zarr) wrapped without being read; anything else through
    ``np.asarray``. Raises PaserInputError unless it is 2-D or 3-D."""
    if isinstance(data, Volume):
        return data
    if not (hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "ndim")):
        data = np.asarray(data)
    return ArrayVolume(data)


def input_path(path: str | os.PathLike) -> Path:
    """The file or folder behind an input of :func:`open_volume`: an HDF5 file without its
    ``:/dataset``, the folder of a glob of slices, else the path itself."""
    s = str(path)
    m = _SPEC.match(s)
    if m and not os.path.isdir(s):
        return Path(m.group("file"))
    if not os.path.exists(s) and any(c in s for c in "*?["):
        return Path(s).parent
    return Path(s)


def open_volume(path: str | os.PathLike, dataset: str | None = None) -> Volume:
    """Open a stack lazily, whatever its container.

    Parameters
    ----------
    path : str
        A TIFF file; a folder of 2-D TIFF slices or a glob pattern (``"scan/*.tif"``);
        an HDF5 file, optionally with its dataset (``"scan.h5:/exchange/data"``); a Zarr
        array or OME-Zarr image (folder ``*.zarr``).
    dataset : str, optional
        The dataset of an HDF5 file or the array inside a Zarr store (default: the
        HDF5 file's ``/exchange/data``, ``/data``, or its only image dataset; the
        OME-Zarr image's full resolution level).

    Returns
    -------
    Volume
        Reads nothing but metadata until planes are requested.

    Raises
    ------
    PaserInputError
        For a missing, unreadable or non-grayscale input, with a one-line reason.
    """
    s = str(path)
    m = _SPEC.match(s)
    if m and not os.path.isdir(s):
        return HDF5Volume(m.group("file"), dataset or m.group("key"))
    p = Path(s)
    if _is_zarr_dir(p) or (p.suffix.lower() == ".zarr" and p.exists()):
        return ZarrVolume(p, dataset)
    if p.is_dir() or any(c in s for c in "*?["):
        return TiffFolderVolume(s)
    if not p.exists():
        raise PaserInputError(f"file not found: {p}")
    try:
        return TiffVolume(p)
    except _NotPlanar:
        pass
    # Pages are not the planes (an ImageJ stack over 4 GiB with one IFD, samples per
    # pixel, tiles): memory-map it when the pixels are contiguous, else read it whole;
    # the engine validates the shape.
    voxel = _tiffio.read_voxel_size(p)
    try:
        data = _tiffio._squeeze_to_stack(tifffile.memmap(p, mode="r"), p)
    except (ValueError, tifffile.TiffFileError):  # compressed or not contiguous
        data, voxel = _tiffio.read_stack(p)
    return ArrayVolume(data, voxel, source=os.path.abspath(p))
