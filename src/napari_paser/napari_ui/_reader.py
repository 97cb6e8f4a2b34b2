"""npe2 reader: TIFF / OME-TIFF stacks and 2-D images, folders of TIFF slices, HDF5
datasets and Zarr / OME-Zarr stores, voxel size into the layer scale.

Small TIFF files are read into memory; files larger than :data:`LAZY_BYTES` (or a quarter
of the machine's memory, whichever is smaller) are opened lazily (memory-mapped), so a
stack bigger than RAM can be browsed. Folders, HDF5 and Zarr always open lazily as dask
arrays reading one plane per chunk (see :mod:`napari_paser.io_sources`). Files written by
this plugin (TIFF or the ``segment`` command's OME-Zarr) open again as Labels with the
phase colours, and the entropy and routing maps of ``segment --entropy --routing`` (TIFF
files beside the labels, or arrays in the store) as the panel draws a run's, over the scan.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .. import AXIS_NAMES, io
from ..errors import PaserInputError

if TYPE_CHECKING:
    from ..io_sources import Volume

__all__ = ["napari_get_reader", "read_tiff", "read_volume", "LAZY_BYTES", "layer_data_from_file", "layer_data_from_volume"]

LAZY_BYTES = 1 << 30
"""Files above 1 GiB (or a quarter of RAM, if that is less) open lazily."""

SUFFIXES = (".tif", ".tiff")
LayerData = tuple[Any, dict, str]


def _lazy_threshold() -> int:
    from ..engine.memory import physical_memory

    ram = physical_memory()
    if ram is None:  # not POSIX: keep the fixed limit
        return LAZY_BYTES
    return int(min(LAZY_BYTES, ram // 4))


def _is_volume_container(p: Path) -> bool:
    """A folder of TIFF slices, a Zarr store or an HDF5 file (not opened here)."""
    from ..io_sources import HDF5_SUFFIXES

    if p.suffix.lower() in HDF5_SUFFIXES or str(p).rstrip("/").lower().endswith(".zarr"):
        return True
    if p.is_dir():
        if any((p / name).exists() for name in ("zarr.json", ".zgroup", ".zarray")):
            return True
        return any(c.suffix.lower() in SUFFIXES for c in p.iterdir())
    return False


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """:func:`read_tiff` if every path is a TIFF file; :func:`read_volume` for one folder of
    TIFF slices, HDF5 file or Zarr store; else ``None``."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if paths and all(str(p).lower().endswith(SUFFIXES) for p in paths):
        return read_tiff
    if len(paths) == 1 and _is_volume_container(Path(paths[0])):
        return read_volume
    return None


def read_volume(path: str | list[str]) -> list[LayerData]:
    """A folder of TIFF slices, an HDF5 dataset or a Zarr store as one lazy layer.

    Raises
    ------
    PaserInputError
        If it cannot be opened as a grayscale stack (also shown as a notification).
    """
    from ..io_sources import open_volume

    p = Path(path[0] if isinstance(path, list) else path)
    try:
        volume = open_volume(p)
        layer = layer_data_from_volume(volume, p)
        return [layer, *_store_maps(p, layer)] if layer[2] == "labels" else [layer]
    except PaserInputError as err:
        from napari.utils.notifications import show_error

        show_error(f"napari-paser could not open {p.name}: {err}")
        raise


def _lazy(volume: Volume, path: Path) -> Any:
    """A volume as a dask array reading one plane per chunk (a 2-D image as 2-D)."""
    import dask.array as da

    _, h, w = volume.shape
    # lock: TIFF and HDF5 handles are not safe for concurrent reads from dask's threads.
    data = da.from_array(volume, chunks=(1, h, w), lock=True, meta=np.empty((0, 0, 0), volume.dtype), name=f"paser-{path.name}-{id(volume)}")
    return data[0] if volume.input_ndim == 2 else data


def layer_data_from_volume(volume: Volume, path: Path) -> LayerData:
    """``(data, kwargs, layer_type)`` of a lazily read volume (dask arrays, one plane per
    chunk). An OME-Zarr pyramid opens as one multiscale layer of all its levels, so that
    napari's 3-D view and zoomed-out 2-D view read a coarse level, not the full volume."""
    levels = [_lazy(v, path) for v in (volume, *volume.coarser_levels())]
    data = levels if len(levels) > 1 else levels[0]
    ndim = volume.input_ndim
    kwargs: dict[str, Any] = {"name": path.stem if path.suffix else path.name, "metadata": {"source_path": str(path)},
                              "axis_labels": AXIS_NAMES[-ndim:]}
    if len(levels) > 1:
        kwargs["multiscale"] = True
    voxel_size = volume.voxel_size
    scale = _voxel_scale(voxel_size, ndim)
    if scale is not None and voxel_size is not None:
        kwargs["scale"] = scale
        kwargs["metadata"]["voxel_size_um"] = list(voxel_size)
    from ..io_sources import zarr_provenance

    meta = zarr_provenance(path)
    if meta.get("kind") == "phases":
        from ._layers import phase_colormap

        kwargs["metadata"]["napari_paser"] = meta
        kwargs["colormap"] = phase_colormap()
        _over_region(kwargs, meta, ndim)
        return data, kwargs, "labels"
    return data, kwargs, "image"


def _placed_map(kind: str, data: Any, kwargs: dict, patch_size: Any) -> LayerData | None:
    """A ``segment`` entropy or routing map drawn as the panel draws a run's, over the
    scan (``kwargs``: the scan's scale and translation); None for a routing map that
    does not say where its patches lie (written before it did)."""
    from ._layers import ENTROPY, ROUTING, lazy_routing_outline, map_style, ring_cells, routing_geometry

    if kind == ENTROPY:
        kwargs.update(map_style(ENTROPY))
        return data, kwargs, "image"
    if not patch_size or kind != ROUTING or not np.issubdtype(data.dtype, np.integer):
        return None
    patch = (int(patch_size[0]), int(patch_size[1]))
    scale = np.asarray(kwargs.get("scale", [1.0] * data.ndim), float)
    translate = np.asarray(kwargs.get("translate", [0.0] * data.ndim), float)
    cells = ring_cells(patch)
    r_scale, r_translate = routing_geometry(scale, translate, patch, cells)
    kwargs.update(map_style(ROUTING), scale=list(r_scale), translate=list(r_translate))
    return lazy_routing_outline(data, cells), kwargs, "labels"


def _store_maps(path: Path, phases: LayerData) -> list[LayerData]:
    """The entropy and routing maps that ``segment --entropy --routing`` kept in its Zarr
    store, as layers over the phases (entropy hidden at first, as in a run)."""
    import dask.array as da
    import zarr

    data, phases_kwargs, _ = phases
    level0 = data[0] if isinstance(data, list) else data
    record = phases_kwargs["metadata"].get("napari_paser", {})
    group = zarr.open_group(str(path), mode="r")
    layers = []
    for kind in ("entropy", "routing"):
        arr = group.get(kind)
        if not isinstance(arr, zarr.Array):
            continue
        lazy = da.from_array(arr, chunks=arr.chunks)
        lazy = lazy[0] if level0.ndim == 2 else lazy
        kwargs = {"name": f"{phases_kwargs['name']}_{kind}", "metadata": {"source_path": str(path)},
                  **{k: phases_kwargs[k] for k in ("scale", "translate", "axis_labels") if k in phases_kwargs}}
        placed = _placed_map(kind, lazy, kwargs, record.get("patch_size"))
        if placed is not None:
            layers.append(placed)
    return layers


def _over_region(kwargs: dict, meta: dict, ndim: int) -> None:
    """Place labels that PaSeR made over a region of their scan (``segment --roi``, the
    panel's *Region*) over that region of the scan opened beside them."""
    from ..io_sources import recorded_roi

    roi = recorded_roi(meta)
    if roi is not None and len(roi) == ndim:
        scale = np.asarray(kwargs.get("scale", [1.0] * ndim), float)
        kwargs["translate"] = [float(start * size) for (start, _), size in zip(roi, scale)]


def read_tiff(path: str | list[str]) -> list[LayerData]:
    """Read one or more TIFF files as napari layer data.

    Raises
    ------
    PaserInputError
        If a file is missing or not a readable TIFF (also shown as a notification).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers = []
    for p in map(Path, paths):
        try:
            layers.append(layer_data_from_file(p))
        except (PaserInputError, *io.TIFF_READ_ERRORS) as err:  # a damaged file may fail deep inside tifffile
            from napari.utils.notifications import show_error

            reason = str(err) if isinstance(err, PaserInputError) else f"{p.name} is not a readable TIFF ({type(err).__name__}: {err})"
            show_error(f"napari-paser could not open the file: {reason}")
            if isinstance(err, PaserInputError):
                raise
            raise PaserInputError(reason) from err
    return layers


def _voxel_scale(voxel_size, ndim: int) -> list[float] | None:
    if voxel_size is None:
        return None
    vs = [float(v) for v in voxel_size]
    if not all(np.isfinite(v) and v > 0 for v in vs):
        return None
    vs = vs[-ndim:] if ndim <= len(vs) else [1.0] * (ndim - len(vs)) + vs
    return vs


def _is_labels(meta: dict) -> bool:
    """Label files of napari-paser: this writer's phase volumes and masks, the
    ``segment`` command's output, and the synthetic ground truth (classes, no image encoding)."""
    if meta.get("layer_type") == "labels" or meta.get("kind") in ("phases", "mask", "labels"):
        return True
    if isinstance(meta.get("napari_paser"), dict) and "route_fraction" in meta["napari_paser"]:
        return True
    return "classes" in meta and "fractions" in meta and "image_encoding" not in meta


def layer_data_from_file(path: Path) -> LayerData:
    """One ``(data, kwargs, layer_type)`` tuple for a TIFF file."""
    if not path.is_file():
        raise PaserInputError(f"{path} does not exist or is not a file")
    if path.stat().st_size > _lazy_threshold():
        data, voxel_size = io.open_stack_lazy(path), io.read_voxel_size(path)
    else:
        data, voxel_size = io.read_stack(path)
    try:
        meta = io.read_metadata(path)
    except PaserInputError:
        meta = {}
    if getattr(data, "ndim", 0) not in (2, 3):
        raise PaserInputError(
            f"{path.name} has shape {tuple(getattr(data, 'shape', ()))}; napari-paser reads 2-D images "
            "and (plane, row, column) stacks"
        )
    kwargs: dict[str, Any] = {"name": path.stem, "metadata": {"source_path": str(path)}, "axis_labels": AXIS_NAMES[-data.ndim:]}
    scale = _voxel_scale(voxel_size, data.ndim)
    if scale is not None and voxel_size is not None:  # a scale comes only from a voxel size
        kwargs["scale"] = scale
        kwargs["metadata"]["voxel_size_um"] = list(voxel_size)
    if meta:
        kwargs["metadata"]["napari_paser"] = meta
    if meta.get("kind") in ("entropy", "routing"):  # beside the labels of a segment run
        if meta["kind"] == "routing" and meta.get("voxel_size_um"):  # the map has no voxel size of its own
            kwargs["scale"] = _voxel_scale(meta["voxel_size_um"], data.ndim)
        _over_region(kwargs, meta, data.ndim)
        placed = _placed_map(meta["kind"], data, kwargs, meta.get("patch_size"))
        if placed is not None:
            placed[1]["visible"] = True  # opened on purpose
            return placed
    if _is_labels(meta) and np.issubdtype(data.dtype, np.integer):
        if meta.get("kind", "phases") == "phases":
            from ._layers import phase_colormap

            kwargs["colormap"] = phase_colormap()
        _over_region(kwargs, meta, data.ndim)
        return data, kwargs, "labels"
    return data, kwargs, "image"

