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
    try:
        return [layer_data_from_file(Path(p)) for p in paths]
    except PaserInputError as err:
        from napari.utils.notifications import show_error

        show_error(f"napari-paser could not open the file: {err}")
        raise


def _voxel_scale(voxel_size, ndim: int) -> list[float] | None:
    if voxel_size is None:
        return None
    vs = [float(v) for v in voxel_size]
    if not all(np.isfinite(v) and v > 0 for v in vs):
        return None
    vs = vs[-ndim:] if ndim <= len(vs) else [1.0] * (ndim - len(vs)) + vs
    return vs


def _is_labels(meta: dict) -> bool:
    """Files written as labels by napari-paser (phase volumes and masks)."""
    return meta.get("layer_type") == "labels" or meta.get("kind") in ("phases", "mask", "labels")


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

