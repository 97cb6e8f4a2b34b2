"""npe2 reader: TIFF / OME-TIFF stacks and 2-D images, voxel size into the layer scale.

Small files are read into memory; files larger than :data:`LAZY_BYTES` (or a quarter of
the machine's memory, whichever is smaller) are opened lazily (memory-mapped), so a
stack bigger than RAM can be browsed. Files written by this plugin's writer carry their
provenance in the TIFF metadata and open again as Labels with the phase colours.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import PaserInputError

__all__ = ["napari_get_reader", "read_tiff", "LAZY_BYTES", "layer_data_from_file"]

LAZY_BYTES = 1 << 30
"""Files above 1 GiB (or a quarter of RAM, if that is less) open lazily."""

SUFFIXES = (".tif", ".tiff")
LayerData = tuple[Any, dict, str]


def _lazy_threshold() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: keep the fixed limit
        return LAZY_BYTES
    return int(min(LAZY_BYTES, ram // 4))


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_tiff` if every path is a TIFF file, else ``None``."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(str(p).lower().endswith(SUFFIXES) for p in paths):
        return None
    return read_tiff


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
        except Exception as err:  # a damaged file may fail deep inside tifffile
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
    from .. import io

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
    kwargs: dict[str, Any] = {"name": path.stem, "metadata": {"source_path": str(path)}}
    scale = _voxel_scale(voxel_size, data.ndim)
    if scale is not None:
        kwargs["scale"] = scale
        kwargs["metadata"]["voxel_size_um"] = list(voxel_size)
    if meta:
        kwargs["metadata"]["napari_paser"] = meta
    if _is_labels(meta) and np.issubdtype(data.dtype, np.integer):
        if meta.get("kind", "phases") == "phases":
            from ._layers import phase_colormap

            kwargs["colormap"] = phase_colormap()
        return data, kwargs, "labels"
    return data, kwargs, "image"

