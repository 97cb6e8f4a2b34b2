"""Outputs written slab by slab: TIFF (BigTIFF when needed) and OME-Zarr (no torch here).

:class:`TiffSliceWriter` appends planes in order to a temporary file next to the
destination and renames it when complete, so a failed run leaves no half-written stack.
Stacks under 4 GiB are ImageJ hyperstacks (voxel size and the JSON metadata readable
by :func:`napari_paser.io.read_metadata`), larger ones BigTIFF with OME voxel sizes and
the JSON in a private tag.

:class:`OmeZarrOutput` is a resumable OME-Zarr (NGFF 0.4, Zarr format 2) store: the
labels as an image with ``image-label`` colours (coarser levels added once the run is
done, so that a viewer's 3-D view reads a small level), optionally the entropy and
routing maps beside them, and per-slab records (done flag, GFLOPs, routing counts) that
each writer task fills in its own chunk, so any number of processes may write
different slabs at once and a restarted run skips what is done.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from . import CLASS_COLORS, CLASS_NAMES
from . import io as _tiffio
from .errors import PaserInputError

__all__ = ["TiffSliceWriter", "ZarrLabelWriter", "OmeZarrOutput", "label_image_attrs", "write_label_pyramid", "JSON_TAG", "BIGTIFF_BYTES", "is_zarr_path", "new_zarr_group", "create_zarr_array"]

JSON_TAG = _tiffio._JSON_TAG
"""Private TIFF tag holding the JSON metadata of a BigTIFF (ImageJ's Info needs ImageJ format)."""

PYRAMID_TOP = 512
"""Coarser levels of an OME-Zarr output are added until no axis of the coarsest is longer."""

BIGTIFF_BYTES = 2**32 - 2**25
"""Stacks with more pixel bytes than this (4 GiB less room for tags) are written as BigTIFF."""

VoxelSize = tuple[float, float, float]


def is_zarr_path(path: str | os.PathLike) -> bool:
    """Outputs ending in ``.zarr`` are OME-Zarr stores; everything else is TIFF."""
    return str(path).rstrip("/\\").lower().endswith(".zarr")


def _rgba(hex_colour: str) -> list[int]:
    h = hex_colour.lstrip("#")
    return [int(h[i : i + 2], 16) for i in (0, 2, 4)] + [255]


def _check_voxel(voxel_size: VoxelSize | None) -> VoxelSize | None:
    if voxel_size is None:
        return None
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise PaserInputError(f"voxel size must be three positive numbers, got {voxel_size}")
    return vs


class _StackWriter:
    """What the TIFF and OME-Zarr writers share: the destination, which is never replaced
    without ``overwrite``, the stack's shape, and the check of each slab appended."""

    path: Path
    shape: tuple[int, ...]
    planes: int
    _written: int
    _overwrite: bool

    def _start(self, path: Path, shape: tuple[int, ...], overwrite: bool) -> None:
        self.path = path
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists (use --overwrite)")
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (2, 3):
            raise PaserInputError(f"expected a (Z,Y,X) or (Y,X) shape, got {self.shape}")
        self.planes = self.shape[0] if len(self.shape) == 3 else 1
        self._written = 0
        self._overwrite = overwrite

    def _next_planes(self, planes: np.ndarray) -> np.ndarray:
        """``planes`` as a (k, Y, X) slab, checked to fit after what is written."""
        arr = np.asarray(planes)
        arr = arr[None] if arr.ndim == 2 else arr
        if arr.shape[1:] != self.shape[-2:]:
            raise ValueError(f"planes of shape {arr.shape[1:]} do not fit a stack of {self.shape}")
        if self._written + len(arr) > self.planes:
            raise ValueError(f"more than {self.planes} planes written to {self.path}")
        return arr


class TiffSliceWriter(_StackWriter):
    """Write a (Z,Y,X) stack to a TIFF file plane by plane, atomically.

    Parameters
    ----------
    path
        Destination; written under a temporary name in the same folder, renamed by
        :meth:`close`.
    shape : tuple of int
        (Z, Y, X) of the whole stack (or (Y, X) for one image).
    dtype
        uint8, uint16, int16 or float32.
    voxel_size
        (plane, row, column) in micrometres.
    metadata
        JSON-serialisable dict for :func:`napari_paser.io.read_metadata`.
    overwrite
        Replace an existing file on :meth:`close`.
    bigtiff
        Force (True) or forbid (False) BigTIFF; None: BigTIFF only when the stack needs it.

    Notes
    -----
    tifffile writes an ImageJ hyperstack from an iterator of planes; a thread runs that
    write, fed through a short queue, so :meth:`write` can push slabs as they finish
    without holding more than a couple of planes.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: tuple[int, ...],
        dtype: Any = np.uint8,
        *,
        voxel_size: VoxelSize | None = None,
        metadata: dict | None = None,
        overwrite: bool = False,
        bigtiff: bool | None = None,
    ):
        self._start(Path(path), shape, overwrite)
        self.dtype = np.dtype(dtype)
        if self.dtype.char not in "BHhf":
            raise ValueError(f"TIFF stacks are uint8, uint16, int16 or float32, not {self.dtype}")
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        big = nbytes > BIGTIFF_BYTES if bigtiff is None else bool(bigtiff)
        vs = _check_voxel(voxel_size)
        text = None if metadata is None else _tiffio._INFO_PREFIX + json.dumps(metadata, sort_keys=True)
        kwargs: dict[str, Any] = {"shape": self.shape, "dtype": self.dtype}
        if big:
            meta: dict[str, Any] = {"axes": "ZYX" if len(self.shape) == 3 else "YX"}
            if vs is not None:
                meta.update(PhysicalSizeZ=vs[0], PhysicalSizeY=vs[1], PhysicalSizeX=vs[2])
                meta.update(PhysicalSizeZUnit="µm", PhysicalSizeYUnit="µm", PhysicalSizeXUnit="µm")
                kwargs["resolution"] = (1.0 / vs[2], 1.0 / vs[1])
            kwargs["metadata"] = meta
            if text is not None:
                kwargs["extratags"] = [(JSON_TAG, "s", 0, text, True)]
            writer_kwargs = {"bigtiff": True, "ome": True}
        else:
            meta = {"axes": "ZYX" if len(self.shape) == 3 else "YX"}
            if vs is not None:
                meta.update(spacing=vs[0], unit="um")
                kwargs["resolution"] = (1.0 / vs[2], 1.0 / vs[1])
            if text is not None:
                meta["Info"] = text
            kwargs["metadata"] = meta
            writer_kwargs = {"imagej": True}
        self.bigtiff = big
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(writer_kwargs, kwargs), daemon=True, name="paser-tiff-writer")
        self._thread.start()

    def _planes(self):
        while True:
            plane = self._queue.get()
            if plane is None:
                return
            yield plane

    def _run(self, writer_kwargs: dict, kwargs: dict) -> None:
        try:
            with tifffile.TiffWriter(self._tmp, **writer_kwargs) as tif:
                tif.write(self._planes(), **kwargs)
        except BaseException as err:  # handed to the caller's thread by write/close
            self._error = err
            # Unblock a producer waiting on a full queue.
            while not self._queue.empty():
                self._queue.get_nowait()

    def _put(self, item) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise RuntimeError(f"the writer of {self.path} stopped") from self._error

    def write(self, planes: np.ndarray) -> None:
        """Append the next planes: a (k, Y, X) slab, or one (Y, X) plane."""
        for plane in self._next_planes(planes):
            self._put(np.ascontiguousarray(plane, dtype=self.dtype))
            self._written += 1

    def close(self, metadata: dict | None = None) -> Path:
        """Finish the file and move it into place; returns the destination.

        ``metadata`` replaces the JSON metadata given at the start (totals known only
        at the end of a run).
        """
        if self._written != self.planes:
            self.abort()
            raise RuntimeError(f"{self.path}: {self._written} of {self.planes} planes written")
        self._put(None)
        self._thread.join()
        if self._error is not None:
            self.abort()
            raise self._error
        if metadata is not None:
            try:
                self._rewrite_metadata(_tiffio._INFO_PREFIX + json.dumps(metadata, sort_keys=True))
            except BaseException:
                self.abort()
                raise
        if self.path.exists() and not self._overwrite:
            self.abort()
            raise FileExistsError(f"{self.path} exists (use --overwrite)")
        os.chmod(self._tmp, _tiffio._FILE_MODE)
        os.replace(self._tmp, self.path)
        return self.path

    def _rewrite_metadata(self, text: str) -> None:
        with tifffile.TiffFile(self._tmp, mode="r+") as tif:
            tags = tif.pages.first.tags
            if self.bigtiff:
                tags[JSON_TAG].overwrite(text)
                return
            # ImageJ keeps Info in the IJMetadata tag pair; tifffile moves a longer
            # value to the end of the file.
            for code, dtype, _count, value, _ in tifffile.imagej_metadata_tag({"Info": text}, tif.byteorder):
                tags[code].overwrite(value, dtype=dtype)

    def abort(self) -> None:
        """Stop writing and delete the temporary file."""
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            with _suppress_full():
                self._queue.put_nowait(None)
            self._thread.join(timeout=5)
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "TiffSliceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _suppress_full:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is queue.Full


# --------------------------------------------------------------------------- OME-Zarr


def _zarr():
    try:
        import zarr
    except ImportError:
        raise PaserInputError("writing Zarr needs zarr: pip install zarr") from None
    return zarr


_RECORDS = "paser"  # group of per-slab records inside the store


def new_zarr_group(path: str | os.PathLike) -> Any:
    """A new, empty Zarr group in format 2 (OME-NGFF 0.4), with zarr 2 or zarr 3."""
    zarr = _zarr()
    try:
        return zarr.open_group(str(path), mode="w", zarr_format=2)
    except TypeError:  # zarr 2: format 2 is the only one
        return zarr.open_group(str(path), mode="w")


def create_zarr_array(group: Any, name: str, **kwargs: Any) -> Any:
    """``group.create_array`` (zarr 3) or ``group.create_dataset`` (zarr 2)."""
    create = getattr(group, "create_array", None) or group.create_dataset
    return create(name, **kwargs)


def label_image_attrs(voxel_size: VoxelSize | None, name: str = "phases", phases: bool = True) -> dict:
    """OME-Zarr (NGFF 0.4) attributes of a (Z, Y, X) image in level "0": its
    ``multiscales`` with the voxel size (µm; unit scale without one) and, for a phase
    volume (``phases``), the phase colours and names (``image-label``)."""
    vs = _check_voxel(voxel_size)
    scale = list(vs) if vs is not None else [1.0, 1.0, 1.0]
    unit = {"unit": "micrometer"} if vs is not None else {}
    attrs: dict[str, Any] = {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": [{"name": n, "type": "space", **unit} for n in "zyx"],
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            }
        ],
    }
    if phases:
        attrs["image-label"] = {
            "version": "0.4",
            "colors": [{"label-value": i, "rgba": _rgba(CLASS_COLORS[i])} for i in range(len(CLASS_NAMES))],
            "properties": [{"label-value": i, "class": phase} for i, phase in enumerate(CLASS_NAMES)],
        }
    return attrs


def write_label_pyramid(group: Any, top: int | None = None) -> list[tuple[int, ...]]:
    """Add coarser levels "1", "2", … to the label image in ``group``'s level "0", each
    the one before at every second plane, row and column (nearest, so labels stay
    labels; one plane stays one plane), until no axis is longer than ``top`` (default
    :data:`PYRAMID_TOP`); return their shapes.

    Viewers (napari through this plugin's reader or napari-ome-zarr) then show the labels
    as one multiscale layer whose 3-D view reads the coarsest level, not the whole
    volume. Each level is written a plane at a time, reading every second plane of the
    one before, so memory stays that of a plane. Levels written before are replaced."""
    top = PYRAMID_TOP if top is None else int(top)
    multiscales = dict(group.attrs)["multiscales"]
    finest = multiscales[0]["datasets"][0]
    scale = [float(v) for v in finest["coordinateTransformations"][0]["scale"]]
    datasets, shapes = [finest], []
    previous = group["0"]
    while max(previous.shape) > top:
        shape = tuple(-(-n // 2) if n > 1 else 1 for n in previous.shape)
        if shape == tuple(previous.shape):  # one voxel, and a top below it
            break
        steps = [2 if n > 1 else 1 for n in previous.shape]
        scale = [v * k for v, k in zip(scale, steps)]
        name = str(len(datasets))
        level = create_zarr_array(group, name, shape=shape, chunks=(1, min(shape[1], 1024), min(shape[2], 1024)),
                                  dtype=previous.dtype, fill_value=0, overwrite=True)
        for z in range(shape[0]):
            level[z] = np.asarray(previous[z * steps[0]])[:: steps[1], :: steps[2]]
        datasets.append({"path": name, "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        shapes.append(shape)
        previous = level
    multiscales[0]["datasets"] = datasets
    group.attrs["multiscales"] = multiscales
    return shapes


class ZarrLabelWriter(_StackWriter):
    """Write a (Z,Y,X) label stack to an OME-Zarr label image plane by plane, atomically:
    the same interface as :class:`TiffSliceWriter` (``write``, ``close``, ``abort``).

    The store is built in a temporary folder beside the destination (chunks of one plane,
    at most 1024² pixels), gets its coarser levels (:func:`write_label_pyramid`) when every
    plane is written, and is renamed into place by :meth:`close`; ``metadata`` goes into
    its ``napari_paser`` attributes.

    Parameters
    ----------
    path
        Destination folder (``*.zarr``).
    shape : tuple of int
        (Z, Y, X), or (Y, X) for one image (stored as one plane).
    dtype
        An integer dtype.
    voxel_size, metadata, overwrite
        As :class:`TiffSliceWriter`.
    phases : bool
        A phase volume (0 pore, 1 carbon-binder, 2 nickel): the phase colours go into its
        ``image-label`` attributes. False for other labels (e.g. a 0/255 mask).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: tuple[int, ...],
        dtype: Any = np.uint8,
        *,
        voxel_size: VoxelSize | None = None,
        metadata: dict | None = None,
        overwrite: bool = False,
        phases: bool = True,
    ):
        self._start(Path(path).absolute(), shape, overwrite)
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.integer):
            raise ValueError(f"label images are integers, not {self.dtype}")
        z, h, w = self.shape if len(self.shape) == 3 else (1, *self.shape)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        try:
            self._group = new_zarr_group(self._tmp)
            self._array = create_zarr_array(self._group, "0", shape=(z, h, w), chunks=(1, min(h, 1024), min(w, 1024)),
                                            dtype=self.dtype, fill_value=0)
            self._group.attrs.update({**label_image_attrs(voxel_size, phases=phases), "napari_paser": metadata or {}})
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def write(self, planes: np.ndarray) -> None:
        """Append the next planes: a (k, Y, X) slab, or one (Y, X) plane."""
        arr = self._next_planes(planes)
        self._array[self._written : self._written + len(arr)] = arr.astype(self.dtype, copy=False)
        self._written += len(arr)

    def close(self, metadata: dict | None = None) -> Path:
        """Add the coarser levels and move the store into place; returns the destination.
        ``metadata`` replaces the ``napari_paser`` attributes given at the start."""
        try:
            if self._written != self.planes:
                raise RuntimeError(f"{self.path}: {self._written} of {self.planes} planes written")
            write_label_pyramid(self._group)
            if metadata is not None:
                self._group.attrs["napari_paser"] = metadata
            if self.path.exists():
                if not self._overwrite:
                    raise FileExistsError(f"{self.path} exists (use --overwrite)")
                if self.path.is_dir():
                    shutil.rmtree(self.path)
                else:
                    self.path.unlink()
        except BaseException:
            self.abort()
            raise
        os.chmod(self._tmp, 0o777 & ~_tiffio._current_umask())  # mkdtemp makes 0700
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Delete the temporary store."""
        shutil.rmtree(self._tmp, ignore_errors=True)


def _differing(began: Any, asked: dict) -> str:
    """What differs between the run a store began and the one asked for, setting by
    setting, e.g. ``"blend_borders: unset when it began, true now"``."""
    if not isinstance(began, dict):
        return "it records no run"

    def flat(d: dict, prefix: str = "") -> dict:
        out: dict = {}
        for key, value in d.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    def shown(settings: dict, key: str) -> str:
        return json.dumps(settings[key]) if key in settings else "unset"

    then, now = flat(began), flat(asked)
    keys = [k for k in dict.fromkeys([*then, *now]) if (k in then, then.get(k)) != (k in now, now.get(k))]
    return "; ".join(f"{k}: {shown(then, k)} when it began, {shown(now, k)} now" for k in keys)


class OmeZarrOutput:
    """A resumable OME-Zarr label store that slab tasks fill in parallel.

    Layout (NGFF 0.4 on Zarr format 2)::

        OUT.zarr/            multiscales, image-label colours, napari_paser attrs
          0                  labels (Z, Y, X) uint8, chunks of one plane
          1, 2, …            coarser levels of the labels (:meth:`write_pyramid`)
          entropy            f0's MC-dropout entropy (Z, Y, X) float32, if asked for
          routing            model per patch (Z, GY, GX) uint8 (0 f0, 1 f1, 2 f2), if asked for
          paser/done         one flag per slab, written last by its task
          paser/gflops       GFLOPs per plane
          paser/counts       per slab: patches per model at λ and at λ = 0
          paser/seconds      per slab: measured compute seconds

    The object pickles as its path, so dask workers write their own regions.

    Parameters
    ----------
    path : str
        The store folder.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()  # dask workers may not share the working directory
        self._group = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_group": None}

    @property
    def group(self):
        if self._group is None:
            self._group = _zarr().open_group(str(self.path), mode="r+")
        return self._group

    # ------------------------------------------------------------------ lifecycle
    def prepare(
        self,
        *,
        shape: tuple[int, int, int],
        grid: tuple[int, int],
        slab: int,
        run_key: dict,
        patch_size: tuple[int, int] | None = None,
        voxel_size: VoxelSize | None = None,
        entropy: bool = False,
        routing: bool = False,
        overwrite: bool = False,
    ) -> list[int]:
        """Create the store, or reopen an unfinished one of the same run; return the slabs to do.

        Raises
        ------
        FileExistsError
            The store is complete, belongs to another run (other input or settings),
            or is not a napari-paser store, and ``overwrite`` is false.
        """
        n_slabs = -(-shape[0] // slab)
        if self.path.exists():
            if overwrite:
                self._remove()
            else:
                attrs = self._existing_attrs()
                if attrs is None:
                    raise FileExistsError(f"{self.path} exists and is not a napari-paser output (use --overwrite)")
                if attrs.get("complete"):
                    raise FileExistsError(f"{self.path} is a finished output (use --overwrite to replace it)")
                began, asked = attrs.get("run"), json.loads(json.dumps(run_key))
                if began != asked:
                    raise FileExistsError(
                        f"{self.path} is an unfinished run with other input or settings ({_differing(began, asked)}; "
                        "resume it with the settings it began with, or use --overwrite to start again)"
                    )
                done = np.asarray(self.group[f"{_RECORDS}/done"][:])
                return [k for k in range(n_slabs) if not done[k]]
        self._create(shape, grid, slab, run_key, voxel_size, entropy, routing, patch_size)
        return list(range(n_slabs))

    def _existing_attrs(self) -> dict | None:
        zarr = _zarr()
        try:
            g = zarr.open_group(str(self.path), mode="r")
        except (OSError, ValueError, KeyError, TypeError, zarr.errors.GroupNotFoundError):
            return None
        attrs = dict(g.attrs).get("napari_paser")
        return attrs if isinstance(attrs, dict) and "run" in attrs else None

    def _remove(self) -> None:
        if self.path.is_dir():
            shutil.rmtree(self.path)
        else:
            self.path.unlink()

    def _create(self, shape, grid, slab, run_key, voxel_size, entropy, routing, patch_size=None) -> None:
        vs = _check_voxel(voxel_size)
        z, h, w = (int(v) for v in shape)
        plane_chunks = (1, min(h, 1024), min(w, 1024))
        n_slabs = -(-z // slab)
        # Created under a temporary name and renamed: a store either has all its arrays
        # and attributes or does not exist.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        try:
            g = new_zarr_group(tmp)
            create_zarr_array(g, "0", shape=(z, h, w), chunks=plane_chunks, dtype="uint8", fill_value=0)
            if entropy:
                create_zarr_array(g, "entropy", shape=(z, h, w), chunks=plane_chunks, dtype="float32", fill_value=0.0)
            if routing:
                create_zarr_array(g, "routing", shape=(z, *grid), chunks=(1, *grid), dtype="uint8", fill_value=0)
            rec = g.create_group(_RECORDS)
            create_zarr_array(rec, "done", shape=(n_slabs,), chunks=(1,), dtype="uint8", fill_value=0)
            create_zarr_array(rec, "gflops", shape=(z,), chunks=(slab,), dtype="float64", fill_value=0.0)
            create_zarr_array(rec, "counts", shape=(n_slabs, 2, 3), chunks=(1, 2, 3), dtype="int64", fill_value=0)
            create_zarr_array(rec, "seconds", shape=(n_slabs,), chunks=(1,), dtype="float64", fill_value=0.0)
            g.attrs.update(
                {
                    **label_image_attrs(vs),
                    "napari_paser": {"run": run_key, "slab": int(slab), "complete": False, "kind": "phases",
                                     # where the routing map's patches lie (napari places it over the labels)
                                     **({"patch_size": [int(v) for v in patch_size]} if patch_size else {})},
                }
            )
            os.chmod(tmp, 0o777 & ~_tiffio._current_umask())  # mkdtemp makes 0700
            os.replace(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._group = None

    # ------------------------------------------------------------------ slab tasks
    def write_slab(self, k: int, z0: int, labels: np.ndarray, entropy: np.ndarray | None, routing: np.ndarray | None,
                   gflops: np.ndarray, counts: np.ndarray, seconds: float) -> None:
        """Write slab ``k`` (planes ``z0 ..``) and its records; the done flag goes last."""
        g = self.group
        z1 = z0 + len(labels)
        g["0"][z0:z1] = labels
        if entropy is not None and "entropy" in g:
            g["entropy"][z0:z1] = entropy
        if routing is not None and "routing" in g:
            g["routing"][z0:z1] = routing
        g[f"{_RECORDS}/gflops"][z0:z1] = gflops
        g[f"{_RECORDS}/counts"][k] = counts
        g[f"{_RECORDS}/seconds"][k] = seconds
        g[f"{_RECORDS}/done"][k] = 1

    def records(self) -> dict[str, np.ndarray]:
        """Per-plane GFLOPs, per-slab counts and seconds, and done flags of all slabs."""
        rec = self.group[_RECORDS]
        return {name: np.asarray(rec[name][:]) for name in ("done", "gflops", "counts", "seconds")}

    def write_pyramid(self, top: int | None = None) -> list[tuple[int, ...]]:
        """Add the labels' coarser levels (:func:`write_label_pyramid`), once every slab is
        written; a resumed run writes them again."""
        return write_label_pyramid(self.group, top)

    def finish(self, report: dict) -> None:
        """Mark the store complete and keep the run's report in its attributes."""
        g = self.group
        attrs = dict(g.attrs["napari_paser"])
        attrs.update(complete=True, report=report)
        g.attrs["napari_paser"] = attrs
